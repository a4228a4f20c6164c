import json
import subprocess
import sys

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "undiffuse", *args], capture_output=True, text=True, timeout=600)


def test_out_that_is_a_file_is_refused_and_kept(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    res = _run("demo", "--out", str(target))
    assert res.returncode == 2 and "--out" in res.stderr and "not a folder" in res.stderr
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("args, message", [
    (["demo", "--steps", "0"], "--steps must be >= 1"),
    (["demo", "--sampler", "fast"], "--sampler 'fast' is unknown; allowed: "),
    (["demo", "--count", "x"], "invalid int value"),
    (["fly"], "invalid choice"),
])
def test_usage_errors_exit_2_and_name_the_option(args, message, tmp_path):
    res = _run(*args, "--out", str(tmp_path)) if args[0] == "demo" else _run(*args)
    assert res.returncode == 2
    assert message in res.stderr


@pytest.mark.slow
def test_demo_writes_grid_and_scores(tmp_path):
    res = _run("demo", "--out", str(tmp_path), "--steps", "4", "--count", "16")
    assert res.returncode == 0, res.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert (tmp_path / "samples.png").stat().st_size > 0
    rm = scores["rmse_vs_exact_ode"]
    assert rm["calibrated"] < rm["dpmpp_2m+karras"]
    from PIL import Image

    assert Image.open(tmp_path / "samples.png").size[0] > 8
