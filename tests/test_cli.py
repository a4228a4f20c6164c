import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _cli import TINY
from _cli import run_main as _main
from PIL import Image

from undiffuse.cli import main


def _run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "undiffuse", *args], capture_output=True, text=True, timeout=600,
                          env=env)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", "digits", "--max-steps", "4", "--out", str(out), *TINY]) == 0
    return out


@pytest.mark.parametrize("args, message", [
    (["train", "--time-budget", "abc"], "--time-budget: duration 'abc' is not understood"),
    (["train", "--max-steps", "0"], "--max-steps: expected a positive integer"),
    (["train", "--data", "/no/such/place"], "--data: "),
    (["train", "--resume", "/no/such/run"], "--resume '/no/such/run' does not exist"),
    (["train", "--set", "optim.lr"], "expected SECTION.KEY=VALUE"),
    (["train", "--set", "optimiser.lr=1"], "SECTION.KEY with SECTION one of"),
    (["train", "--set", "optim.lrr=1"], "no key(s) ['lrr']"),
    (["train", "--parameterization", "score"], "diffusion.parameterization 'score' is not allowed; allowed: eps"),
    (["train", "--preset", "huge"], "unknown preset 'huge'; allowed: digits, toy"),
    (["train", "--data", "moons", "--preset", "digits"], "needs image data"),
    (["sample", "--checkpoint", "/no/such/run"], "--checkpoint: checkpoint '/no/such/run' does not exist"),
    (["sample", "--checkpoint", "x", "--sampler", "fast"], "--sampler 'fast' is unknown; allowed: "),
    (["sample", "--checkpoint", "x", "--format", "mp4"], "invalid choice: 'mp4'"),
    (["sample", "--checkpoint", "x", "--num", "-3"], "--num: expected a positive integer"),
    (["fly"], "invalid choice"),
])
def test_usage_errors_exit_2_and_name_the_option(args, message, capsys):
    code, _, err = _main(args, capsys)
    assert code == 2, err
    assert message in err


@pytest.mark.parametrize("command", ["train", "sample", "demo"])
def test_help_everywhere(command, capsys):
    code, out, _ = _main([command, "--help"], capsys)
    assert code == 0 and "usage: undiffuse " + command in out


def test_dry_run_prints_resolved_config_and_writes_nothing(tmp_path, capsys):
    code, out, _ = _main(["train", "--out", str(tmp_path / "r"), "--dry-run", "--lr", "3e-4", "--max-steps", "7",
                          "--set", "ema.halflife_samples=1234"], capsys)
    assert code == 0
    cfg = json.loads(out)
    assert cfg["optim"]["lr"] == 3e-4 and cfg["train"]["max_steps"] == 7 and cfg["train"]["time_budget"] is None
    assert cfg["ema"]["halflife_samples"] == 1234 and cfg["model"]["in_channels"] == 1
    assert not (tmp_path / "r").exists()


def test_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for cmd in (["demo", "--out", str(target)], ["train", "--out", str(target), "--max-steps", "1"]):
        code, _, err = _main(cmd, capsys)
        assert code == 2 and "--out" in err and "not a folder" in err
    assert target.read_text() == "keep me"


def test_bad_image_files_are_named(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(folder / f"ok{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning) as rec:
        code, out, _ = _main(["train", "--data", str(folder), "--dry-run"], capsys)
    assert code == 0 and json.loads(out)["preset"] == "small"
    named = " ".join(str(w.message) for w in rec)
    assert "broken.png" in named and "empty.jpg" in named
    code, _, err = _main(["train", "--data", str(folder), "--strict", "--dry-run"], capsys)
    assert code == 2 and ("broken.png" in err or "empty.jpg" in err)


def test_same_seed_gives_byte_identical_pngs_with_metadata(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the provenance record's time
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert _main(["sample", "--checkpoint", str(tiny_run), "--num", "5", "--seed", "7", "--out", str(out),
                      "--no-progress"], capsys)[0] == 0
    names = sorted(os.listdir(a))
    assert names == ["000000.png", "000001.png", "000002.png", "000003.png", "000004.png", "grid.png"]
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()
    img = Image.open(a / "000002.png")
    assert img.size == (8, 8)
    meta = json.loads(img.text["undiffuse"])
    assert meta["seed"] == 9 and meta["sampler"] == "heun" and meta["steps"] == 3 and meta["step"] == 4
    assert "seed: 9" in img.text["parameters"]


def test_npz_format_and_image_i_equals_its_seed_alone(tiny_run, tmp_path, capsys):
    batch, single = tmp_path / "batch.npz", tmp_path / "one.npz"
    assert _main(["sample", "--checkpoint", str(tiny_run), "--num", "8", "--seed", "0", "--format", "npz",
                  "--out", str(batch), "--no-progress"], capsys)[0] == 0
    assert _main(["sample", "--checkpoint", str(tiny_run), "--num", "1", "--seed", "5", "--format", "npz",
                  "--out", str(single), "--batch-size", "1", "--no-progress"], capsys)[0] == 0
    with np.load(batch, allow_pickle=False) as f:
        x = f["samples"]
        params = json.loads(str(f["parameters"]))
    assert x.shape == (8, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert params["count"] == 8 and params["seed"] == 0
    with np.load(single, allow_pickle=False) as f:
        one = f["samples"]
    np.testing.assert_allclose(one[0], x[5], atol=1e-5)
    assert np.array_equal((one[0] * 255).round(), (x[5] * 255).round())


def test_sample_refuses_pickled_weights(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    latest = (run / "latest").read_text().strip()
    with open(run / "checkpoints" / latest / "ema.safetensors", "wb") as f:
        pickle.dump(Payload(), f)
    code, _, err = _main(["sample", "--checkpoint", str(run), "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "ema.safetensors is not a safetensors file" in err and "pickle" in err
    assert not marker.exists()


def test_resume_requires_existing_or_refuses_overwrite(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    code, _, err = _main(["train", "--out", str(run), "--max-steps", "5", *TINY], capsys)
    assert code == 2 and "--resume auto" in err
    code, out, err = _main(["train", "--out", str(run), "--max-steps", "6", "--resume", "auto", *TINY], capsys)
    assert code == 0 and "resumed from" in err and json.loads(out)["step"] == 6


def test_console_script_and_module_entry():
    res = _run("--help")
    assert res.returncode == 0 and "train" in res.stdout
    exe = shutil.which("undiffuse", path=os.path.dirname(sys.executable))
    assert exe is not None
    assert subprocess.run([exe, "sample", "--help"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_demo_trains_samples_and_scores(tmp_path):
    res = _run("demo", "--out", str(tmp_path), "--max-steps", "40", "--num", "200", "--no-progress", *TINY[:-1])
    assert res.returncode == 0, res.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["steps_trained"] == 40 and scores["protocol"]["samples"] == 200
    assert 0 < scores["fd"] < 200 and 0 <= scores["copy_rate"] <= 1
    assert scores["protocol"]["feature_space"] == "digits" and "kid" in scores and "recall" in scores
    assert Image.open(tmp_path / "samples" / "grid.png").size[0] > 8
    assert (tmp_path / "closest_pairs.png").exists()


@pytest.mark.slow
def test_analytic_demo(tmp_path):
    res = _run("demo", "--analytic", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    rm = scores["rmse_vs_exact_ode"]
    assert rm["calibrated"] < rm["dpmpp_2m+karras"]


def test_resume_reuses_the_runs_own_data(tmp_path, capsys):
    arr = np.random.default_rng(0).random((40, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    run = tmp_path / "run"
    assert _main(["train", "--data", str(tmp_path / "x.npy"), "--max-steps", "2", "--out", str(run),
                  "--preset", "small", *TINY], capsys)[0] == 0
    code, out, err = _main(["train", "--out", str(run), "--resume", "auto", "--max-steps", "3", *TINY], capsys)
    assert code == 0, err
    assert json.loads(out)["step"] == 3
    assert json.loads((run / "config.json").read_text())["data"]["name"] == str(tmp_path / "x.npy")


def test_calibrate_then_sample_with_it(tiny_run, tmp_path, capsys):
    cal = tmp_path / "cal3.json"
    code, out, err = _main(["calibrate", "--checkpoint", str(tiny_run), "--steps", "3", "--iters", "5",
                            "--train-size", "8", "--val-size", "8", "--out", str(cal)], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["steps"] == 3 and np.isfinite(res["val_rmse"])
    saved = json.loads(cal.read_text())
    assert saved["sampler"] == "calibrated" and len(saved["sigmas"]) == 4 and saved["meta"]["step"] == 4
    npz = tmp_path / "s.npz"
    assert _main(["sample", "--checkpoint", str(tiny_run), "--calibration", str(cal), "--num", "3", "--format",
                  "npz", "--out", str(npz), "--no-progress"], capsys)[0] == 0
    with np.load(npz, allow_pickle=False) as f:
        assert f["samples"].shape == (3, 1, 8, 8)
        assert json.loads(str(f["parameters"]))["sampler"] == "calibrated"
    code, _, err = _main(["sample", "--checkpoint", str(tiny_run), "--calibration", str(cal), "--steps", "4"], capsys)
    assert code == 2 and "--calibration replaces" in err
    (tmp_path / "bad.json").write_text('{"hello": 1}')
    code, _, err = _main(["sample", "--checkpoint", str(tiny_run), "--calibration", str(tmp_path / "bad.json")],
                         capsys)
    assert code == 2 and "not a calibration file" in err


def test_calibrate_the_learned_ipndm_solver_from_the_command_line(tiny_run, tmp_path, capsys):
    cal = tmp_path / "ip.json"
    code, out, err = _main(["calibrate", "--checkpoint", str(tiny_run), "--steps", "3", "--iters", "4",
                            "--train-size", "8", "--val-size", "8", "--sampler", "ipndm", "--history", "all",
                            "--screen", "2", "--out", str(cal)], capsys)
    assert code == 0, err
    saved = json.loads(cal.read_text())
    assert saved["sampler"] == "ipndm" and len(saved["sigmas"]) == 4
    npz = tmp_path / "s.npz"
    assert _main(["sample", "--checkpoint", str(tiny_run), "--calibration", str(cal), "--num", "2", "--format",
                  "npz", "--out", str(npz), "--no-progress"], capsys)[0] == 0
    code, _, err = _main(["calibrate", "--checkpoint", str(tiny_run), "--steps", "3", "--history", "all"], capsys)
    assert code == 2 and "--history is for --sampler ipndm" in err
    code, _, err = _main(["calibrate", "--checkpoint", str(tiny_run), "--steps", "3", "--screen", "1"], capsys)
    assert code == 2 and "screen must be 0 (off) or an integer >= 2" in err


def test_sweep_writes_table_plots_and_report(tiny_run, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = _main(["sweep", "--checkpoint", str(tiny_run), "--samplers", "heun", "euler", "--nfe", "2", "3",
                               "--num", "24", "--out", str(out)], capsys)
    assert code == 0, err
    rows = json.loads((out / "sweep.json").read_text())
    assert [(r["sampler"], r["nfe_budget"]) for r in rows] == [("heun", 2), ("heun", 3), ("euler", 2), ("euler", 3)]
    assert all(r["nfe"] <= r["nfe_budget"] for r in rows)
    assert [r["nfe"] for r in rows] == [1, 3, 2, 3]  # counted: Heun 1 step = 1 evaluation, 2 steps = 3
    for name in ("fd_vs_nfe.png", "fd_vs_seconds.png", "grid_heun_3.png"):
        assert Image.open(out / name).size[0] > 10
    md = (out / "report.md").read_text()
    assert "| euler | 3 | 3 | 3 |" in md and "fd_vs_nfe.png" in md
    code, _, err = _main(["sweep", "--checkpoint", str(tiny_run), "--samplers", "fast"], capsys)
    assert code == 2 and "--samplers: unknown fast" in err


def test_sample_with_an_explicit_list_of_sigmas(tiny_run, tmp_path, capsys):
    """--sigmas S0,...,0 steps through exactly those levels (the 1-step-from-a-lower-level
    sampling of consistency students); it equals the Python call with the same list."""
    from undiffuse.inference import generate as gen

    npz = tmp_path / "s.npz"
    code, _, err = _main(["sample", "--checkpoint", str(tiny_run), "--sigmas", "8,2.5,0", "--sampler", "euler",
                          "--num", "3", "--format", "npz", "--out", str(npz), "--no-progress"], capsys)
    assert code == 0, err
    with np.load(npz, allow_pickle=False) as f:
        got, params = f["samples"], json.loads(str(f["parameters"]))
    assert params["steps"] == 2 and params["schedule"] == [8.0, 2.5, 0.0]
    run = gen.load_run(str(tiny_run))
    want = gen.to_unit(gen.generate(run, 3, seed=0, sampler="euler", schedule=[8.0, 2.5, 0.0])).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    for bad, message in ((["--sigmas", "8,2"], "must end in 0"), (["--sigmas", "2,8,0"], "strictly decreasing"),
                         (["--sigmas", "8,x"], "comma-separated numbers"),
                         (["--sigmas", "8,0", "--steps", "3"], "--sigmas replaces")):
        code, _, err = _main(["sample", "--checkpoint", str(tiny_run), *bad], capsys)
        assert code == 2 and message in err, (bad, err)
