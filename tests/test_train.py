"""Trainer, checkpoints and exact resume (short CPU runs)."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from undiffuse import data
from undiffuse.config import resolve
from undiffuse.io import checkpoint as ckpt
from undiffuse.training.trainer import Trainer, TrainingError, lr_factor

TINY = {"model.channels": 16, "model.channel_mult": [1, 2], "model.num_res_blocks": 1,
        "model.attention_levels": [1], "model.head_channels": 16, "optim.batch_size": 32,
        "optim.warmup_steps": 5, "train.log_every": 1, "train.sample_count": 4, "sample.steps": 2,
        "train.tensorboard": False}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def _losses(run):
    with open(os.path.join(run, "log.jsonl")) as f:
        return [(e["step"], e["loss"]) for e in map(json.loads, f) if "loss" in e]


def _trainer(run, steps, **over):
    ds = data.load("digits")
    cfg = resolve("digits", ds, {**TINY, "train.max_steps": steps, "train.time_budget": None, **over})
    return Trainer(cfg, ds, str(run), progress=False, log=lambda m: None, **({}))


def test_loss_falls_digits(tmp_path):
    t = _trainer(tmp_path / "r", 120)
    t.fit()
    losses = [l for _, l in _losses(tmp_path / "r")]
    assert len(losses) == 120
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.75 * first, (first, last)
    assert os.path.exists(tmp_path / "r" / "samples" / "step_00000120.png")


def test_moons_mlp_learns_the_data(tmp_path):
    """On 2-D moons the EDM loss has a large irreducible part, so judge the samples: their
    distance to the nearest data point must shrink far below that of the untrained model."""
    from undiffuse.inference import generate as gen

    ds = data.load("moons", num_points=4000)
    cfg = resolve("toy", ds, {"train.max_steps": 400, "train.log_every": 10, "train.tensorboard": False,
                              "optim.batch_size": 256, "model.width": 64, "train.sample_count": 16,
                              "ema.halflife_samples": 10000})
    run = str(tmp_path / "m")
    Trainer(cfg, ds, run, progress=False, log=lambda m: None).fit()
    real = ds.get(torch.arange(len(ds)))

    def gap(x):
        return torch.cdist(x, real).min(1).values.median().item()

    trained = gen.generate(gen.load_run(run), 1000, seed=0)
    blob = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))  # same scale, no structure
    assert gap(trained) < 0.25 * gap(blob), (gap(trained), gap(blob))


def test_same_seed_same_run(tmp_path):
    _trainer(tmp_path / "a", 3).fit()
    torch.manual_seed(123)  # unrelated global state must not matter
    _trainer(tmp_path / "b", 3).fit()
    _assert_same_checkpoint(tmp_path / "a", tmp_path / "b", 3)


def test_lr_schedule_warmup_then_cosine():
    ds = data.load("digits")
    cfg = resolve("digits", ds, {"train.max_steps": 100, "optim.warmup_steps": 10})
    assert lr_factor(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, 0.09) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(0.09 * torch.pi)).item()))
    assert lr_factor(cfg, 50, 0.5) == pytest.approx(0.5)
    assert lr_factor(cfg, 100, 1.0) == pytest.approx(0.0)


def test_resume_in_process_is_bitwise(tmp_path):
    a = _trainer(tmp_path / "a", 12, **{"train.checkpoint_every": 6, "optim.accumulation": 2})
    a.fit()
    b = _trainer(tmp_path / "b", 12, **{"train.checkpoint_every": 6, "optim.accumulation": 2})
    real_step = b.train_step

    def dies_at_8():
        if b.step == 8:
            raise KeyboardInterrupt  # like a crash: no final checkpoint
        return real_step()

    b.train_step = dies_at_8
    with pytest.raises(KeyboardInterrupt):
        b.fit()
    assert ckpt.complete_checkpoints(str(tmp_path / "b")) == ["step_00000006"]
    ds = data.load("digits")
    cfg = resolve("digits", ds, {**TINY, "train.max_steps": 12, "train.time_budget": None,
                                 "train.checkpoint_every": 6, "optim.accumulation": 2})
    Trainer(cfg, ds, str(tmp_path / "b"), resume="auto", progress=False, log=lambda m: None).fit()
    _assert_same_checkpoint(tmp_path / "a", tmp_path / "b", 12)


def _assert_same_checkpoint(run_a, run_b, step):
    name = ckpt.checkpoint_name(step)
    for f in ("model.safetensors", "ema.safetensors", "state.safetensors"):
        ta = load_file(os.path.join(run_a, "checkpoints", name, f))
        tb = load_file(os.path.join(run_b, "checkpoints", name, f))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (f, k)
    assert _losses(run_a) == _losses(run_b)


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "undiffuse", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_kill_9_then_resume_is_bitwise_identical(tmp_path):
    common = ["train", "--data", "digits", "--max-steps", "20", "--checkpoint-every", "10", "--no-progress",
              "--sample-every", "11", "--set", "train.sample_count=512", "--set", "sample.steps=8", *TINY_ARGS]
    straight = _cli(*common, "--out", str(tmp_path / "a"))
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err

    victim = _cli(*common, "--out", str(tmp_path / "b"))
    log = tmp_path / "b" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and '"step": 11,' in log.read_text()):
        time.sleep(0.005)  # step 11 is logged, then a 512-image grid is sampled: kill during it
    victim.send_signal(signal.SIGKILL)  # a real kill -9: no handler, no final checkpoint
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert ckpt.complete_checkpoints(str(tmp_path / "b")) == ["step_00000010"]
    assert max(s for s, _ in _losses(tmp_path / "b")) == 11  # the victim went past the checkpoint

    resumed = _cli(*common, "--out", str(tmp_path / "b"), "--resume", "auto")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resumed from" in err
    _assert_same_checkpoint(tmp_path / "a", tmp_path / "b", 20)


def test_crash_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    t = _trainer(tmp_path / "r", 4, **{"train.checkpoint_every": 2})
    calls = {"n": 0}
    real = ckpt.save_file

    def dying_save(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 5:  # second checkpoint, second file: die half-way
            with open(path, "wb") as f:
                f.write(b"\x00" * 10)
            raise OSError("disk vanished")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    with pytest.raises(OSError, match="disk vanished"):
        t.fit()
    run = str(tmp_path / "r")
    assert ckpt.read_latest(run) == "step_00000002"
    assert ckpt.complete_checkpoints(run) == ["step_00000002"]
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".tmp")]
    loaded = ckpt.load_checkpoint(run)
    assert loaded["state_json"]["step"] == 2
    # a half-written folder left by a killed writer is never taken for a checkpoint
    os.makedirs(os.path.join(run, "checkpoints", "step_00000004"))
    open(os.path.join(run, "checkpoints", "step_00000004", "model.safetensors"), "wb").close()
    assert ckpt.find_checkpoint(run).endswith("step_00000002")


def test_keep_last_k_and_fresh_run_refuses_existing(tmp_path):
    t = _trainer(tmp_path / "r", 8, **{"train.checkpoint_every": 2, "train.keep": 2})
    t.fit()
    assert ckpt.complete_checkpoints(str(tmp_path / "r")) == ["step_00000006", "step_00000008"]
    with pytest.raises(TrainingError, match="--resume auto"):
        _trainer(tmp_path / "r", 8)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ds = data.load("digits")
        cfg = resolve("digits", ds, {**TINY, "train.max_steps": 2, "train.time_budget": None})
        Trainer(cfg, ds, str(tmp_path / "new"), resume=str(tmp_path / "nope"), progress=False)


def test_pickle_renamed_safetensors_is_refused_and_never_runs(tmp_path):
    t = _trainer(tmp_path / "r", 2)
    t.fit()
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    name = os.path.join(ckpt.find_checkpoint(str(tmp_path / "r")), "ema.safetensors")
    with open(name, "wb") as f:
        pickle.dump({"weight": Payload()}, f)
    with pytest.raises(ckpt.CheckpointError, match="not a safetensors file.*pickle"):
        ckpt.load_checkpoint(str(tmp_path / "r"))
    torch.save({"w": torch.zeros(2)}, name)  # torch's zip format, renamed
    with pytest.raises(ckpt.CheckpointError, match="zip"):
        ckpt.load_checkpoint(str(tmp_path / "r"))
    assert not marker.exists()


def test_non_finite_loss_skips_then_stops(tmp_path, monkeypatch):
    import undiffuse.training.trainer as tr

    real = tr.denoising_loss
    state = {"n": 0}

    def flaky(*a, **k):
        state["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if state["n"] in (3, 4) or state["n"] > 6 else loss

    monkeypatch.setattr(tr, "denoising_loss", flaky)
    t = _trainer(tmp_path / "r", 50, **{"train.max_bad_steps": 3})
    before = {k: v.clone() for k, v in t.net.state_dict().items()}
    with pytest.raises(TrainingError, match="3 non-finite losses in a row"):
        t.fit()
    with open(tmp_path / "r" / "log.jsonl") as f:
        entries = [json.loads(x) for x in f]
    skipped = [e["step"] for e in entries if e.get("skipped")]
    assert skipped == [3, 4, 7, 8, 9]
    assert all(torch.isfinite(v).all() for v in t.net.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in t.net.state_dict().items())


def test_tensorboard_scalars_match_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = _trainer(tmp_path / "r", 6, **{"train.tensorboard": True, "train.log_every": 2})
    t.fit()
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    tb = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    logged = _losses(tmp_path / "r")
    assert [s for s, _ in tb] == [2, 4, 6] == [s for s, _ in logged]
    for (_, a), (_, b) in zip(tb, logged):
        assert a == pytest.approx(b, rel=1e-6)
    assert "samples" in acc.Tags()["images"]


def test_resume_with_other_data_shape_is_refused(tmp_path):
    _trainer(tmp_path / "r", 2).fit()
    ds = data.load("digits", image_size=6)
    cfg = resolve("digits", ds, {**TINY, "train.max_steps": 4, "train.time_budget": None})
    with pytest.raises(TrainingError, match=r"shape \(1, 8, 8\).*\(1, 6, 6\)"):
        Trainer(cfg, ds, str(tmp_path / "r"), resume="auto", progress=False, log=lambda m: None)


def test_evaluation_during_training_logs_and_keeps_best(tmp_path):
    t = _trainer(tmp_path / "r", 12, **{"train.eval_every": 4, "train.eval_samples": 40, "train.keep_best": True,
                                        "train.checkpoint_every": 2, "train.keep": 1})
    t.fit()
    run = str(tmp_path / "r")
    with open(os.path.join(run, "log.jsonl")) as f:
        evals = [e for e in map(json.loads, f) if "eval" in e]
    assert [e["step"] for e in evals] == [4, 8, 12]
    fds = [e["eval"]["fd"] for e in evals]
    assert all(k in evals[0]["eval"] for k in ("fd", "kid", "precision", "recall", "copy_rate"))
    best_step = [4, 8, 12][fds.index(min(fds))]
    assert ckpt.read_pointer(run, "best") == ckpt.checkpoint_name(best_step)
    kept = ckpt.complete_checkpoints(run)
    assert ckpt.checkpoint_name(best_step) in kept and ckpt.checkpoint_name(12) in kept
    assert len(kept) <= 2  # keep=1 plus the protected best
    assert ckpt.find_checkpoint(os.path.join(run, "best")).endswith(ckpt.checkpoint_name(best_step))
    state = ckpt.load_checkpoint(run)["state_json"]
    assert state["best"] == {"fd": min(fds), "step": best_step}
