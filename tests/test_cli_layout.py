"""The command line's shape (ARCHITECTURE.md, "cli/: one module per subcommand"; written on a
parallel branch of the same split and kept as the check of this one): every
subcommand module defines ``add_parser`` and ``run`` and nothing else public, every command is
dispatched to the module that added it, and no function in ``cli/`` is longer than a screen."""
import ast
import pathlib
import subprocess
import sys

import pytest

from undiffuse import cli

CLI = pathlib.Path(cli.__file__).parent
MAX_LINES = 80


def _defined(path: pathlib.Path) -> dict[str, ast.AST]:
    """Names a module defines at its top level (functions, classes, assignments)."""
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    out[t.id] = node
    return out


@pytest.mark.parametrize("module", cli.COMMANDS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_a_subcommand_module_defines_add_parser_and_run_only(module):
    public = {n for n in _defined(pathlib.Path(module.__file__)) if not n.startswith("_")}
    assert public == {"add_parser", "run"}, f"{module.__name__}: public names {sorted(public)}"


def test_no_function_in_cli_is_longer_than_a_screen():
    long = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} has {n} lines")
    assert not long, "\n".join(long)


def test_every_command_is_listed_once_in_help_order(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    listed = top[top.index("{") + 1: top.index("}")].split(",")
    assert listed == ["train", "sample", "calibrate", "evaluate", "sweep", "ema", "train-classifier", "train-control", "distill", "inpaint",
                      "img2img", "upscale", "restore", "predict", "interpolate", "train-autoencoder", "serve", "verify", "export", "demo"]
    for command in listed:  # each command's own parser answers --help
        with pytest.raises(SystemExit) as e:
            cli.main([command, "--help"])
        assert e.value.code == 0 and f"usage: undiffuse {command}" in capsys.readouterr().out


def test_python_dash_m_runs_the_command_line():
    res = subprocess.run([sys.executable, "-m", "undiffuse", "verify", "/nonexistent.png"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "undiffuse verify: error: IMAGE '/nonexistent.png' does not exist or is not a file" in res.stderr
