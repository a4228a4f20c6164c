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


# ----------------------------------------------------------------------------- reliability (issue 17)


def test_final_step_is_written_once_and_keep_1_always_holds_a_checkpoint(tmp_path, monkeypatch):
    """The last step is a checkpoint step: fit must not write it again at the end (a re-save
    used to delete the complete folder before renaming the new one in)."""
    written, real = [], ckpt.save_checkpoint

    def recording(run, step, **kw):
        written.append(step)
        return real(run, step, **kw)

    monkeypatch.setattr(ckpt, "save_checkpoint", recording)
    result = _trainer(tmp_path / "r", 4, **{"train.checkpoint_every": 2, "train.keep": 1}).fit()
    assert written == [2, 4]
    assert result["checkpoint"].endswith(ckpt.checkpoint_name(4))
    assert ckpt.complete_checkpoints(str(tmp_path / "r")) == ["step_00000004"]
    # a run resumed at its end does not rewrite its checkpoint either
    written.clear()
    ds = data.load("digits")
    cfg = resolve("digits", ds, {**TINY, "train.max_steps": 4, "train.time_budget": None, "train.keep": 1})
    t = Trainer(cfg, ds, str(tmp_path / "r"), resume="auto", progress=False, log=lambda m: None)
    assert t.fit()["step"] == 4 and written == []


_KILLED_WHILE_REPLACING = """
import os, sys
from undiffuse.io import checkpoint as ckpt
run = sys.argv[1]
c = ckpt.load_checkpoint(run)
real = os.replace
def dying(src, dst):
    if os.path.basename(src).startswith(".tmp-"):  # the new folder is complete: die before it is renamed in
        os._exit(9)  # like kill -9: no cleanup runs
    return real(src, dst)
os.replace = dying
ckpt.save_checkpoint(run, c["state_json"]["step"], model=c["model"], ema=c["ema"], state_tensors=c["state"],
                     state=c["state_json"], keep=1)
"""


def test_kill_while_replacing_a_checkpoint_keeps_it_for_resume(tmp_path):
    """Writing a step that has a checkpoint (a new best at a saved step, or a run resumed from an
    earlier checkpoint) with --keep 1, killed between removing the old folder and renaming the
    new one in: --resume auto must still find the complete checkpoint, not start over."""
    run = str(tmp_path / "r")
    _trainer(run, 2, **{"train.checkpoint_every": 2, "train.keep": 1}).fit()
    before = load_file(os.path.join(run, "checkpoints", "step_00000002", "model.safetensors"))
    res = subprocess.run([sys.executable, "-c", _KILLED_WHILE_REPLACING, run], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 9, res.stderr
    ds = data.load("digits")
    cfg = resolve("digits", ds, {**TINY, "train.max_steps": 4, "train.time_budget": None, "train.keep": 1})
    t = Trainer(cfg, ds, run, resume="auto", progress=False, log=lambda m: None)
    assert t.step == 2
    assert ckpt.complete_checkpoints(run) == ["step_00000002"]
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".")]
    after = load_file(os.path.join(run, "checkpoints", "step_00000002", "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_replacing_a_checkpoint_renames_before_deleting_and_flushes_the_folder(tmp_path, monkeypatch):
    run = str(tmp_path / "r")
    _trainer(run, 2, **{"train.checkpoint_every": 2}).fit()
    c = ckpt.load_checkpoint(run)
    events = []
    real_replace, real_rmtree, real_fsync = os.replace, ckpt.shutil.rmtree, ckpt._fsync

    def replace(src, dst):
        events.append(("replace", os.path.basename(src), os.path.basename(dst)))
        return real_replace(src, dst)

    def rmtree(path, *a, **k):
        if os.path.exists(path):
            assert os.path.basename(path) != "step_00000002", "the complete checkpoint was deleted"
            events.append(("rmtree", os.path.basename(path)))
        return real_rmtree(path, *a, **k)

    def fsync(path):
        events.append(("fsync", os.path.basename(path)))
        return real_fsync(path)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    monkeypatch.setattr(ckpt, "_fsync", fsync)
    ckpt.save_checkpoint(run, 2, model=c["model"], ema=c["ema"], state_tensors=c["state"], state=c["state_json"])
    aside = f".old-step_00000002-{os.getpid()}"
    i = events.index(("replace", "step_00000002", aside))
    assert events[i + 1][:2] == ("replace", f".tmp-step_00000002-{os.getpid()}")
    assert events[i + 2] == ("fsync", "checkpoints")  # the rename is on disk before anything is deleted
    assert events.index(("rmtree", aside)) > i + 2
    assert ckpt.complete_checkpoints(run) == ["step_00000002"]


def test_resume_auto_refuses_a_run_whose_checkpoints_are_all_unreadable(tmp_path, capsys):
    run = tmp_path / "r"
    _trainer(run, 3, **{"train.checkpoint_every": 1, "train.keep": 3}).fit()
    os.remove(run / "checkpoints" / "step_00000001" / "model.safetensors")
    os.remove(run / "checkpoints" / "step_00000002" / "ema.safetensors")
    os.remove(run / "checkpoints" / "step_00000002" / "state.json")
    os.remove(run / "checkpoints" / "step_00000003" / "state.json")
    ds = data.load("digits")
    cfg = resolve("digits", ds, {**TINY, "train.max_steps": 4, "train.time_budget": None})
    with pytest.raises(ckpt.CheckpointError) as e:
        Trainer(cfg, ds, str(run), resume="auto", progress=False, log=lambda m: None)
    assert str(run / "checkpoints") in str(e.value)
    assert ("3 checkpoint folders, none readable: step_00000001 (model.safetensors missing), step_00000002 "
            "(ema.safetensors, state.json missing), step_00000003 (state.json missing)") in str(e.value)
    from _cli import run_main

    code, _, err = run_main(["train", "--data", "digits", "--out", str(run), "--resume", "auto", "--max-steps", "4",
                             *TINY_ARGS, "--no-progress"], capsys)
    assert code == 2 and "none readable: step_00000001 (model.safetensors missing)" in err
    # a run folder without any checkpoint folder (only a writer's leftover temporary one) starts fresh
    fresh = tmp_path / "fresh"
    os.makedirs(fresh / "checkpoints" / ".tmp-step_00000002-1")
    assert Trainer(cfg, ds, str(fresh), resume="auto", progress=False, log=lambda m: None).step == 0


SIGNAL_RUN = ["train", "--data", "digits", "--max-steps", "150", "--checkpoint-every", "100", "--no-progress",
              "--set", "model.dropout=0.1", *TINY_ARGS]


@pytest.fixture(scope="module")
def straight_signal_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "a"
    p = _cli(*SIGNAL_RUN, "--out", str(run))
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return run


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_the_run_resumes_bitwise(tmp_path, sig, straight_signal_run):
    """A real signal to a real ``undiffuse train`` process (dropout on): it stops after the
    current step, exits 0 with a checkpoint at the step it reached, and resuming to the end
    gives the straight run's weights, optimizer and random state bit for bit (resumed after
    SIGTERM only: the resume does not depend on which signal stopped the run)."""
    run = tmp_path / "b"
    victim = _cli(*SIGNAL_RUN, "--out", str(run))
    log = run / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and '"step": 5,' in log.read_text()):
        time.sleep(0.005)
    victim.send_signal(sig)
    out, err = victim.communicate(timeout=300)
    assert victim.returncode == 0, err
    reached = max(s for s, _ in _losses(run))
    assert 5 <= reached < 150
    result = json.loads(out.strip().splitlines()[-1])
    assert result["interrupted"] is True and result["step"] == reached
    assert f"stopped by signal {int(sig)} at step {reached}" in err
    assert ckpt.complete_checkpoints(str(run)) == [ckpt.checkpoint_name(reached)]
    assert ckpt.read_latest(str(run)) == ckpt.checkpoint_name(reached)
    if sig != signal.SIGTERM:
        return
    resumed = _cli(*SIGNAL_RUN, "--out", str(run), "--resume", "auto")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"resumed from {run / 'checkpoints' / ckpt.checkpoint_name(reached)} at step {reached}" in err
    _assert_same_checkpoint(straight_signal_run, run, 150)


def test_resume_with_dropout_restores_the_global_rng(tmp_path):
    """Dropout draws from the trainer's global-generator state: a resumed run must continue that
    stream exactly (with dropout 0 nothing would notice a missing restore)."""
    over = {"train.checkpoint_every": 3, "model.dropout": 0.3}
    _trainer(tmp_path / "a", 6, **over).fit()
    b = _trainer(tmp_path / "b", 6, **over)
    real_step = b.train_step

    def dies_at_4():
        if b.step == 4:
            raise KeyboardInterrupt
        return real_step()

    b.train_step = dies_at_4
    with pytest.raises(KeyboardInterrupt):
        b.fit()
    assert ckpt.complete_checkpoints(str(tmp_path / "b")) == ["step_00000003"]
    torch.manual_seed(99)  # whatever the caller's global state is, the run's own is restored
    ds = data.load("digits")
    cfg = resolve("digits", ds, {**TINY, "train.max_steps": 6, "train.time_budget": None, **over})
    Trainer(cfg, ds, str(tmp_path / "b"), resume="auto", progress=False, log=lambda m: None).fit()
    _assert_same_checkpoint(tmp_path / "a", tmp_path / "b", 6)
    # and dropout did act: the same run without it differs
    _trainer(tmp_path / "c", 6, **{**over, "model.dropout": 0.0}).fit()
    a6 = load_file(os.path.join(tmp_path / "a", "checkpoints", "step_00000006", "model.safetensors"))
    c6 = load_file(os.path.join(tmp_path / "c", "checkpoints", "step_00000006", "model.safetensors"))
    assert any(not torch.equal(a6[k], c6[k]) for k in a6)


def test_trainer_leaves_the_callers_rng_alone_and_repeats_from_its_seed(tmp_path):
    over = {"model.dropout": 0.2, "train.checkpoint_every": 3}
    ds = data.load("digits")
    cfg = resolve("digits", ds, {**TINY, "train.max_steps": 3, "train.time_budget": None, **over})
    torch.manual_seed(1234)
    caller = torch.get_rng_state()
    t = Trainer(cfg, ds, str(tmp_path / "a"), progress=False, log=lambda m: None)
    assert torch.equal(torch.get_rng_state(), caller), "constructing a Trainer changed the global RNG"
    t.fit()
    assert torch.equal(torch.get_rng_state(), caller), "fit changed the global RNG"
    torch.manual_seed(5)  # another caller state: the run is a function of its seed alone
    _trainer(tmp_path / "b", 3, **over).fit()
    _assert_same_checkpoint(tmp_path / "a", tmp_path / "b", 3)
    other = _trainer(tmp_path / "c", 3, **{**over, "train.seed": 1})
    other.fit()
    wa = load_file(os.path.join(tmp_path / "a", "checkpoints", "step_00000003", "model.safetensors"))
    wc = load_file(os.path.join(tmp_path / "c", "checkpoints", "step_00000003", "model.safetensors"))
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_broken_tensorboard_is_an_error_and_a_missing_one_is_skipped(tmp_path, monkeypatch):
    import types

    class Broken(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("protobuf version mismatch")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", Broken("torch.utils.tensorboard"))
    with pytest.raises(TrainingError, match=r"importing TensorBoard failed \(RuntimeError: protobuf version "
                                            r"mismatch\).*train.tensorboard=false"):
        _trainer(tmp_path / "broken", 2, **{"train.tensorboard": True})
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError: not installed
    t = _trainer(tmp_path / "missing", 2, **{"train.tensorboard": True})
    assert t.tb is None
    t.fit()
    assert not os.path.exists(tmp_path / "missing" / "tensorboard")
