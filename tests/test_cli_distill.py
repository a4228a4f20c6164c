"""`undiffuse distill --method consistency|progressive` end to end on a tiny digits teacher:
students that sample as any run, exact resume, and clear errors for bad input."""
import json
import os

import pytest
import torch
from _cli import TINY, main_code, run_main
from safetensors.torch import load_file

from undiffuse.inference.generate import load_run


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("distill") / "teacher")
    code = main_code(["train", "--data", "digits", "--max-steps", "3", "--out", run, *TINY])
    assert code == 0
    return run


def _weights(run):
    path = os.path.join(run, "checkpoints")
    last = sorted(os.listdir(path))[-1]
    return load_file(os.path.join(path, last, "model.safetensors"))


def test_consistency_student_samples_in_one_and_two_steps(tmp_path, teacher, capsys):
    out = str(tmp_path / "cm")
    code, stdout, err = run_main(["distill", "--method", "consistency", "--teacher", teacher, "--out", out,
                                  "--max-steps", "2", "--steps", "6", "--set", "objective.index_sampling=uniform",
                                  "--no-progress"], capsys)
    assert code == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["method"] == "consistency" and res["step"] == 2
    run = load_run(out)
    cfg = run.config
    assert cfg.objective.kind == "consistency" and cfg.objective.teacher.endswith("step_00000003")
    assert (cfg.objective.steps_start, cfg.objective.steps_end, cfg.objective.solver) == (6, 6, "heun")
    assert cfg.objective.index_sampling == "uniform" and cfg.sample.sigma_min == pytest.approx(4 * 0.75)
    assert cfg.diffusion.boundary_sigma == pytest.approx(0.002)
    assert (cfg.sample.sampler, cfg.sample.steps) == ("consistency", 1)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(run.denoiser(x, torch.full((3,), 0.002)), x)  # the boundary condition of the saved run
    for steps in ("1", "2"):
        npz = str(tmp_path / f"s{steps}.npz")
        code, _, err = run_main(["sample", "--checkpoint", out, "--num", "5", "--steps", steps, "--format", "npz",
                                 "--out", npz, "--no-progress"], capsys)
        assert code == 0, err
        import numpy as np

        arr = np.load(npz)["samples"]
        assert arr.shape == (5, 1, 8, 8) and np.isfinite(arr).all()


def test_consistency_distillation_resumes_exactly(tmp_path, teacher, capsys):
    straight, split = str(tmp_path / "a"), str(tmp_path / "b")
    base = ["distill", "--method", "consistency", "--teacher", teacher, "--steps", "6", "--no-levels",
            "--no-progress"]
    assert run_main([*base, "--out", straight, "--max-steps", "4"], capsys)[0] == 0
    assert run_main([*base, "--out", split, "--max-steps", "2"], capsys)[0] == 0
    assert run_main([*base, "--out", split, "--max-steps", "4"], capsys)[0] == 0
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    teacher_w = _weights(teacher)
    assert any(not torch.equal(a[k], teacher_w[k]) for k in a)  # it trained


def test_progressive_rounds_halve_the_steps(tmp_path, teacher, capsys):
    out = str(tmp_path / "pd")
    code, stdout, err = run_main(["distill", "--method", "progressive", "--teacher", teacher, "--out", out,
                                  "--steps", "8", "--rounds", "2", "--max-steps", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["steps"] == 2
    first = load_run(os.path.join(out, "rounds", "04_steps"))
    final = load_run(out)
    assert first.config.sample.steps == 4 and final.config.sample.steps == 2
    grid8 = first.config.objective.grid
    assert len(grid8) == 9 and first.config.sample.sigmas == grid8[::2]
    assert final.config.objective.grid == grid8[::2] and final.config.sample.sigmas == grid8[::4]
    assert final.config.objective.teacher.startswith(os.path.abspath(os.path.join(out, "rounds", "04_steps")))
    assert final.config.sample.schedule == "custom" and final.config.sample.sampler == "euler"
    code, _, err = run_main(["sample", "--checkpoint", out, "--num", "3", "--format", "npz",
                             "--out", str(tmp_path / "p.npz"), "--no-progress"], capsys)
    assert code == 0, err
    code, _, err = run_main(["sample", "--checkpoint", out, "--num", "3", "--steps", "5", "--format", "npz",
                             "--out", str(tmp_path / "q.npz"), "--no-progress"], capsys)
    assert code == 2 and "fixed list of 2 steps" in err


@pytest.mark.parametrize("args, message", [
    (["--method", "consistency", "--teacher", "{tmp}/missing"], "does not exist"),
    (["--method", "consistency", "--teacher", "{tmp}"], "--teacher"),  # a folder that is not a run
    (["--method", "consistency", "--teacher", "{teacher}", "--sampler", "ddpm"], "--sampler"),
    (["--method", "consistency", "--teacher", "{teacher}", "--rounds", "2"], "--rounds is for"),
    (["--method", "progressive", "--teacher", "{teacher}", "--steps", "6", "--rounds", "2"], "divisible"),
    (["--method", "consistency", "--teacher", "{teacher}", "--max-steps", "2", "--time-budget", "1m"], "not both"),
    (["--method", "reflow", "--teacher", "{teacher}"], "rectified-flow"),
    (["--method", "distil", "--teacher", "{teacher}"], "invalid choice"),
    (["--method", "consistency", "--teacher", "{teacher}", "--set", "objective.distance=l1"], "objective.distance"),
])
def test_distill_usage_errors_exit_2(tmp_path, teacher, capsys, args, message):
    args = [a.format(tmp=str(tmp_path), teacher=teacher) for a in args]
    code, _, err = run_main(["distill", *args, "--out", str(tmp_path / "student"), "--no-progress"], capsys)
    assert code == 2 and message in err, err
    assert not os.path.exists(tmp_path / "student" / "checkpoints")


def test_a_consistency_model_cannot_teach(tmp_path, teacher, capsys):
    cm = str(tmp_path / "cm")
    assert run_main(["distill", "--method", "consistency", "--teacher", teacher, "--out", cm, "--max-steps", "1",
                     "--steps", "4", "--no-levels", "--no-progress"], capsys)[0] == 0
    code, _, err = run_main(["distill", "--method", "progressive", "--teacher", cm, "--out", str(tmp_path / "pd"),
                             "--steps", "4", "--no-progress"], capsys)
    assert code == 2 and "is a consistency model" in err


# --------------------------------------------------------------------------- picked 1- and 2-step levels

@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    """A consistency student whose levels were picked (small search: 16 samples, grids of 2)."""
    out = str(tmp_path_factory.mktemp("levels") / "cm")
    code = main_code(["distill", "--method", "consistency", "--teacher", teacher, "--out", out, "--max-steps", "1",
                   "--steps", "4", "--levels-samples", "16", "--levels-grid", "2", "--no-progress"])
    assert code == 0
    return out


def _levels_file(run):
    path = os.path.join(run, "checkpoints")
    return os.path.join(path, max(os.listdir(path)), "levels.json")


def _sample_npz(capsys, run, path, *args):
    code, _, err = run_main(["sample", "--checkpoint", run, "--num", "4", "--format", "npz", "--out", path,
                             "--no-progress", *args], capsys)
    assert code == 0, err
    import numpy as np

    return np.load(path)["samples"], err


def test_distill_records_the_picked_levels_with_every_score(student):
    with open(_levels_file(student)) as f:
        rec = json.load(f)
    assert rec["sampler"] == "consistency" and rec["weights"] == "ema" and rec["step"] == 1
    assert rec["default"] == {"1": [80.0, 0.0], "2": [80.0, pytest.approx(3.0), 0.0]}
    for steps in ("1", "2"):
        rows = rec["candidates"][steps]
        assert rows[0]["default"] and rows[0]["sigmas"] == rec["default"][steps] and len(rows) >= 2
        assert all(len(r["sigmas"]) == int(steps) + 1 and r["sigmas"][-1] == 0 for r in rows)
        best = min((r for r in rows if r["fd"] is not None), key=lambda r: r["fd"])
        assert rec["picked"][steps] == best["sigmas"]
    assert rec["protocol"]["samples"] == 16 and "digits" in rec["protocol"]["features"]


def test_sample_uses_the_picked_levels_unless_sigmas_are_given(student, tmp_path, capsys):
    path = _levels_file(student)
    with open(path) as f:
        rec = json.load(f)
    rec["picked"] = {"1": [7.0, 0.0], "2": [20.0, 1.5, 0.0]}  # levels no default would give
    with open(path, "w") as f:
        json.dump(rec, f)
    npz = str(tmp_path / "s.npz")
    for steps, sigmas in (("1", "7.0,0"), ("2", "20,1.5,0")):
        picked, err = _sample_npz(capsys, student, npz, "--steps", steps)
        assert f"on sigmas {sigmas.replace('.0,', ',').replace(',', ', ')} (picked for this student" in err, err
        assert "levels.json" in err and "--sigmas overrides" in err
        given, err = _sample_npz(capsys, student, npz, "--sigmas", sigmas)
        assert (picked == given).all() and "given by --sigmas" in err
    default, err = _sample_npz(capsys, student, npz)  # the run's own steps (1): picked too
    assert (default == _sample_npz(capsys, student, npz, "--sigmas", "7,0")[0]).all()
    other, err = _sample_npz(capsys, student, npz, "--sigmas", "80,0")
    assert not (other == default).all()
    # another sampler than the one the levels were picked with: the run's schedule
    _, err = _sample_npz(capsys, student, npz, "--steps", "1", "--sampler", "euler")
    assert "on sigmas 80, 0 (schedule karras)" in err


def test_a_student_without_picked_levels_samples_on_its_old_defaults(student, tmp_path, capsys):
    import shutil

    old = str(tmp_path / "old")
    shutil.copytree(student, old)
    os.remove(_levels_file(old))  # as a student from before levels were picked
    assert load_run(old).levels is None
    npz = str(tmp_path / "s.npz")
    for steps, sigmas in (("1", "80,0"), ("2", "80,3,0")):
        x, err = _sample_npz(capsys, old, npz, "--steps", steps)
        assert f"on sigmas {sigmas.replace(',', ', ')} (schedule karras)" in err, err
        assert (x == _sample_npz(capsys, old, npz, "--sigmas", sigmas)[0]).all()


def test_no_levels_and_bad_levels_options(teacher, tmp_path, capsys):
    out = str(tmp_path / "plain")
    code, stdout, err = run_main(["distill", "--method", "consistency", "--teacher", teacher, "--out", out,
                                  "--max-steps", "1", "--steps", "4", "--no-levels", "--no-progress"], capsys)
    assert code == 0, err
    assert "levels" not in json.loads(stdout.strip().splitlines()[-1])
    assert not os.path.exists(_levels_file(out)) and load_run(out).levels is None
    code, _, err = run_main(["distill", "--method", "consistency", "--teacher", teacher, "--out",
                             str(tmp_path / "x"), "--levels-samples", "1", "--no-progress"], capsys)
    assert code == 2 and "--levels-samples" in err
