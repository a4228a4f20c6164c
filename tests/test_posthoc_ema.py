"""Post-hoc EMA: the profiles against the recursion they describe, reconstruction against an
average tracked directly, exactness for a tracked length, refusals, resume, CLI."""
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from undiffuse import data
from undiffuse.config import resolve
from undiffuse.inference import generate as gen
from undiffuse.inference import posthoc_ema as ph
from undiffuse.training.trainer import Trainer

from _cli import run_main

TOY = {"train.log_every": 10, "train.tensorboard": False, "optim.batch_size": 64, "model.width": 32,
       "train.sample_count": 4, "train.time_budget": None, "ema.posthoc_every": 10}


def _train(run, steps, sigma_rels, resume=None, record=None, **over):
    ds = data.load("moons", num_points=1000)
    cfg = resolve("toy", ds, {**TOY, "train.max_steps": steps, "ema.posthoc": sigma_rels, **over})
    t = Trainer(cfg, ds, str(run), progress=False, log=lambda m: None, resume=resume)
    if record is not None and t.posthoc is not None:  # the raw weights after every update
        update = t.posthoc.update

        def recording(net):
            update(net)
            record.append(torch.cat([p.detach().double().flatten() for p in net.parameters()]))
        t.posthoc.update = recording
    t.fit()
    return t


def _flat(state, net_names):
    return torch.cat([state[k].double().flatten() for k in net_names])


def test_sigma_rel_and_gamma():
    assert ph.gamma_of(0.05) == pytest.approx(16.97, abs=0.01)
    assert ph.gamma_of(0.10) == pytest.approx(6.94, abs=0.01)
    for s in (0.01, 0.05, 0.2, ph.SIGMA_REL_MAX):
        assert ph.sigma_rel_of(ph.gamma_of(s)) == pytest.approx(s, rel=1e-10)
    for bad in (0.0, -0.1, 0.3):
        with pytest.raises(ph.PosthocError, match="outside"):
            ph.gamma_of(bad)


@pytest.mark.parametrize("gamma", [0.0, 6.94, 16.97])
def test_profile_is_the_recursion(gamma):
    """The closed-form weights equal those the update rule puts on each raw weight (the
    average of one-hot weight vectors), and sum to one."""
    T = 300
    avg = np.zeros(T)
    for t in range(1, T + 1):
        beta = (1 - 1 / t) ** (gamma + 1)
        avg = beta * avg + (1 - beta) * np.eye(T)[t - 1]
    w = ph.profile(gamma, T)
    assert np.abs(w - avg).max() < 1e-13
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.abs(ph.profile(gamma, T, 1, 2 * T)[:T] - w).max() == 0 and not ph.profile(gamma, T, 1, 2 * T)[T:].any()


def test_solve_finds_a_stored_profile_and_refuses_what_it_cannot_express():
    stored = [(ph.gamma_of(s), t) for t in range(100, 1001, 100) for s in (0.05, 0.10)]
    coef, res = ph.solve(stored, (ph.gamma_of(0.10), 700))
    assert res < 1e-6 and coef[13] == pytest.approx(1, abs=1e-5)
    assert ph.solve(stored, (ph.gamma_of(0.07), 1000))[1] < 0.02
    assert ph.solve(stored, (ph.gamma_of(0.005), 1000))[1] > 0.5


def test_reconstruction_matches_an_average_tracked_directly(tmp_path):
    """Run A tracks 0.05 and 0.10, run B (same seed: the same training) tracks 0.07 directly.
    The 0.07 rebuilt from A's snapshots equals, to float rounding, the mixture its
    coefficients put on the raw weights; it differs from B's 0.07 by at most
    sum_k |w_rebuilt,k - w_direct,k| * max_k |theta_k - theta_T| (both profiles sum to ~1),
    which the fit's small residual keeps small: it is closer to B's 0.07 than the tracked 0.05
    and 0.10 are."""
    steps, traj = 320, []
    a = _train(tmp_path / "a", steps, [0.05, 0.10], record=traj)
    _train(tmp_path / "b", steps, [0.07])
    for name in ("model", "ema"):  # tracking the averages leaves the training itself alone
        fa = load_file(tmp_path / "a" / "checkpoints" / "step_00000320" / f"{name}.safetensors")
        fb = load_file(tmp_path / "b" / "checkpoints" / "step_00000320" / f"{name}.safetensors")
        assert all(torch.equal(fa[k], fb[k]) for k in fa)
    names = [k for k, _ in a.net.named_parameters()]
    theta = torch.stack(traj)  # (T, P)
    assert len(traj) == steps
    state, rec, path = ph.reconstruct(str(tmp_path / "a"), 0.07)
    assert path.endswith(os.path.join("ema", "sigma_rel_0.070.safetensors")) and rec["residual"] < 0.02
    plan = ph.plan(str(tmp_path / "a"), 0.07)
    w_rec = sum(c * ph.profile(ph.gamma_of(s.sigma_rels[i]), s.updates, 1, steps + 1) for s, i, c in plan.parts)
    w_dir = ph.profile(ph.gamma_of(0.07), steps)
    rebuilt = _flat(state, names)
    predicted = torch.from_numpy(w_rec) @ theta
    assert (rebuilt - predicted).abs().max() < 1e-5  # float32 snapshots and averages
    direct = _flat(load_file(tmp_path / "b" / "ema" / "snapshots" / "step_00000320.safetensors"),
                   [f"0.{k}" for k in names])
    assert (direct - torch.from_numpy(w_dir) @ theta).abs().max() < 1e-5
    bound = np.abs(w_rec - w_dir).sum() * (theta - theta[-1]).abs().max(0).values + 1e-5
    assert ((rebuilt - direct).abs() <= bound).all()
    snap = load_file(tmp_path / "a" / "ema" / "snapshots" / "step_00000320.safetensors")
    for i in (0, 1):  # the tracked neighbours are further away
        assert (rebuilt - direct).norm() < 0.5 * (_flat(snap, [f"{i}.{k}" for k in names]) - direct).norm()


def test_a_tracked_length_is_returned_bit_for_bit_and_a_wrong_one_refused(tmp_path):
    _train(tmp_path / "r", 64, [0.05, 0.10])
    run = str(tmp_path / "r")
    state, rec, _ = ph.reconstruct(run, 0.10)
    snap = load_file(os.path.join(run, "ema", "snapshots", "step_00000064.safetensors"))
    assert rec["residual"] == 0 and all(torch.equal(state[k], snap[f"1.{k}"]) for k in state)
    with pytest.raises(ph.PosthocError, match=r"--sigma-rel 0.003 cannot be rebuilt.*support sigma_rel from about"):
        ph.reconstruct(run, 0.003)
    with pytest.raises(ph.PosthocError, match="no post-hoc EMA snapshot at step 13"):
        ph.reconstruct(run, 0.07, step=13)
    early, rec, path = ph.reconstruct(run, 0.07, step=30)  # every checkpoint and every 10 steps has a snapshot
    assert rec["step"] == 30 and path.endswith("sigma_rel_0.070_step_00000030.safetensors")
    assert all(p["step"] <= 30 for p in rec["parts"])


def test_resume_continues_the_averages_exactly(tmp_path):
    over = {"train.checkpoint_every": 25, "optim.schedule": "constant"}  # the same run whatever its length
    _train(tmp_path / "straight", 60, [0.05, 0.10], **over)
    _train(tmp_path / "cut", 40, [0.05, 0.10], **over)  # ends with a checkpoint at 40
    os.remove(tmp_path / "cut" / "latest")  # as if killed after step 40's snapshot: resume from step 25
    with open(tmp_path / "cut" / "latest", "w") as f:
        f.write("step_00000025")
    _train(tmp_path / "cut", 60, [0.05, 0.10], resume="auto", **over)
    one = ph.snapshots(str(tmp_path / "straight"))
    two = ph.snapshots(str(tmp_path / "cut"))
    assert [s.step for s in one] == [s.step for s in two] and [s.updates for s in one] == [s.updates for s in two]
    for x, y in zip(one, two):
        fx, fy = load_file(x.path), load_file(y.path)
        assert all(torch.equal(fx[k], fy[k]) for k in fx), x.path


def test_cli_ema_sample_and_sweep(tmp_path, capsys):
    def run_cli(args):
        code, out, err = run_main(args, capsys)
        return type('R', (), {'returncode': code, 'stdout': out, 'stderr': err})

    run = tmp_path / "r"
    r = run_cli(["train", "--data", "moons", "--preset", "toy", "--max-steps", "64", "--ema-posthoc",
                 "--ema-posthoc-every", "8", "--out", str(run), "--no-progress", "--set", "model.width=32",
                 "--set", "train.sample_count=4", "--set", "train.tensorboard=false"])
    assert r.returncode == 0, r.stderr
    assert json.load(open(run / "config.json"))["ema"]["posthoc"] == [0.05, 0.10]
    r = run_cli(["ema", str(run), "--sigma-rel", "0.07", "0.12"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["sigma_rel"] for o in out] == [0.07, 0.12] and all(os.path.isfile(o["path"]) for o in out)
    r = run_cli(["ema", str(run), "--sigma-rel", "0.09", "0.001"])
    assert r.returncode == 2 and "--sigma-rel 0.001 cannot be rebuilt" in r.stderr
    assert not (run / "ema" / "sigma_rel_0.090.safetensors").exists()  # checked before anything is written
    r = run_cli(["sample", "--checkpoint", str(run), "--ema", "0.07", "--num", "16", "--format", "npz",
                 "--out", str(tmp_path / "s.npz"), "--no-progress"])
    assert r.returncode == 0, r.stderr
    loaded = gen.load_run(str(run), ema_sigma_rel=0.07)
    assert loaded.weights == "ema sigma_rel 0.07"
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert np.array_equal(f["samples"], gen.generate(loaded, 16, seed=0).numpy())
    r = run_cli(["sample", "--checkpoint", str(run), "--ema", "0.07", "--weights", "model", "--num", "4"])
    assert r.returncode == 2 and "--ema" in r.stderr
    small = tmp_path / "moons500.npz"  # a small reference keeps the scoring quick
    moons = data.load("moons", num_points=500)
    np.savez(small, x=moons.get(torch.arange(500)).numpy())
    r = run_cli(["sweep", "--checkpoint", str(run), "--ema", "0.07", "0.12", "--num", "40",
                 "--reference", str(small), "--out", str(tmp_path / "sw")])
    assert r.returncode == 0, r.stderr
    rows = json.load(open(tmp_path / "sw" / "ema.json"))
    assert [row["sigma_rel"] for row in rows] == [None, 0.07, 0.12] and all(math.isfinite(x["fd"]) for x in rows)
    assert os.path.isfile(tmp_path / "sw" / "fd_vs_ema.png")
    r = run_cli(["sweep", "--checkpoint", str(run), "--ema", "0.002", "--reference", str(small),
                 "--out", str(tmp_path / "sw2")])
    assert r.returncode == 2 and "0.002" in r.stderr
    bare = tmp_path / "bare"
    assert run_cli(["train", "--data", "moons", "--preset", "toy", "--max-steps", "4", "--out", str(bare),
                    "--no-progress", "--set", "train.sample_count=4"]).returncode == 0
    r = run_cli(["ema", str(bare), "--sigma-rel", "0.05"])
    assert r.returncode == 2 and "--ema-posthoc" in r.stderr


def test_config_refuses_bad_lengths():
    ds = data.load("moons", num_points=100)
    for bad, msg in (([0.4], "relative EMA widths"), ([0.05, 0.05], "twice")):
        with pytest.raises(ValueError, match=msg):
            resolve("toy", ds, {"train.max_steps": 1, "ema.posthoc": bad})


def test_a_time_budget_spaces_snapshots_by_time(tmp_path):
    """Under a time budget alone the snapshots follow the training time (about 32, plus the
    checkpoints'), whatever the number of steps: a wrong step estimate cannot multiply them."""
    ds = data.load("moons", num_points=1000)
    cfg = resolve("toy", ds, {**TOY, "ema.posthoc_every": 0, "train.max_steps": None, "train.time_budget": 3.0,
                              "ema.posthoc": [0.05, 0.10], "train.checkpoint_every": 100_000})
    t = Trainer(cfg, ds, str(tmp_path / "r"), progress=False, log=lambda m: None)
    t.fit()
    found = ph.snapshots(str(tmp_path / "r"))
    assert t.step > 64 and 20 <= len(found) <= 34, (t.step, len(found))
    assert found[-1].step == t.step
