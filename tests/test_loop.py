"""The one training loop (``training.loop``): every objective's draws split over processes
exactly, the seed derivation, the LR schedule and EMA shared by the classifier and the
autoencoder, non-finite steps skipped everywhere, and the caller's random state untouched."""
import json
import math

import pytest
import torch

from undiffuse import data
from undiffuse.config import OptimConfig, TrainConfig, resolve
from undiffuse.core.analytic import GaussianMixture
from undiffuse.core.noise import derive_seed
from undiffuse.nets.classifier import ClassifierConfig
from undiffuse.training import autoencoder as ae_mod
from undiffuse.training import classifier as clf_mod
from undiffuse.training import loop, trainer
from undiffuse.training.consistency import ConsistencyObjective
from undiffuse.training.denoising import DenoisingObjective
from undiffuse.training.loop import Batch, LoopConfig, TrainingError, TrainingLoop, lr_factor
from undiffuse.training.progressive import ProgressiveObjective

TINY_CLF = ClassifierConfig(channels=8, channel_mult=(1,), head_channels=8)
TINY_AE = {"channels": 8, "channel_mult": (1, 2, 2)}


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


# ----------------------------------------------------------------------------- seeds


def test_derive_seed_is_the_documented_fold():
    p = 1_000_003
    assert derive_seed(7, 3) == 7 * p + 3 and derive_seed(0, 0) == 0 and derive_seed(5) == 5
    assert derive_seed(2, 5, 1, 0) == ((2 * p + 5) * p + 1) * p + 0
    assert derive_seed(-3, 4) == (-3 * p + 4) % 2**64  # what torch reads from the negative value
    a = torch.randn(4, generator=torch.Generator().manual_seed(-3 * p + 4))
    b = torch.randn(4, generator=torch.Generator().manual_seed(derive_seed(-3, 4)))
    assert torch.equal(a, b)
    for bad in (1.5, True, "3"):
        with pytest.raises(TypeError, match="integers"):
            derive_seed(1, bad)


def test_data_order_is_still_the_first_releases():
    """Routing the data order through derive_seed changed nothing: epoch e of seed s is the
    permutation of seed s * 1_000_003 + e, as before."""
    order = trainer.DataOrder(10, seed=4)
    got = torch.cat([order.next(10) for _ in range(3)])
    want = torch.cat([torch.randperm(10, generator=torch.Generator().manual_seed(4 * 1_000_003 + e)) for e in range(3)])
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------- objectives split exactly


def _toy_trainer(tmp_path, kind):
    ds = data.load("moons", num_points=256)
    over = {"train.max_steps": 1, "train.tensorboard": False, "train.sample_count": 1, "model.width": 16,
            "optim.batch_size": 8}
    if kind == "consistency":
        over.update({"diffusion.boundary_sigma": 0.002, "objective.kind": "consistency", "objective.steps_start": 10,
                     "objective.steps_end": 40})
    cfg = resolve("toy", ds, over)
    objective = None
    if kind == "progressive":
        teacher = GaussianMixture.random(dim=2, components=3, seed=1)
        teacher.sigma_min, teacher.sigma_max = 0.002, 80.0
        objective = ProgressiveObjective(teacher, [80.0, 10.0, 1.0, 0.1, 0.0], "euler")
    t = trainer.Trainer(cfg, ds, str(tmp_path / kind), progress=False, log=lambda m: None, objective=objective)
    return t, ds


@pytest.mark.parametrize("kind", ["denoising", "consistency", "progressive"])
def test_each_process_gets_its_rows_of_one_processes_draws(tmp_path, kind):
    """Two processes' halves of a micro-batch (same generator state, rows 0-3 and 4-7) give
    the per-sample losses of the whole batch, and leave the generator where one process does:
    N processes train on one process's random draws, for every objective."""
    t, ds = _toy_trainer(tmp_path, kind)
    assert isinstance(t.objective, {"denoising": DenoisingObjective, "consistency": ConsistencyObjective,
                                    "progressive": ProgressiveObjective}[kind])
    index = torch.tensor([5, 17, 3, 250, 9, 100, 42, 7])
    x0 = ds.get(index)
    start = t.gen.get_state()
    t.batch = Batch(index, slice(0, 8))
    with torch.no_grad():
        whole = t.objective(t, x0, {})
        after = t.gen.get_state()
        halves = []
        for rows in (slice(0, 4), slice(4, 8)):
            t.gen.set_state(start)
            t.batch = Batch(index, rows)
            halves.append(t.objective(t, x0[rows], {}))
            assert torch.equal(t.gen.get_state(), after)
    assert whole.shape == (8,) and torch.isfinite(whole).all()
    torch.testing.assert_close(torch.cat(halves), whole, rtol=1e-5, atol=1e-7)


def test_a_trainer_step_is_the_objectives_mean_loss(tmp_path):
    """train_step has one path: whatever the objective returns is averaged (and only that)."""
    t, ds = _toy_trainer(tmp_path, "denoising")
    seen = []

    def constant(tr, x0, cond):
        seen.append(tr.batch)
        return torch.arange(len(x0), dtype=torch.float32) + 0 * tr.denoiser(x0, torch.ones(len(x0))).sum()

    t.objective = constant
    assert t.train_step() == pytest.approx(3.5)
    assert len(seen) == 1 and seen[0].size == 8 and t.step == 1


# ----------------------------------------------------------------------------- schedule and progress


def test_loop_progress_by_steps_or_by_the_nearer_limit():
    net = torch.nn.Linear(2, 1)
    cfg = LoopConfig(train=TrainConfig(max_steps=100, time_budget=10.0))
    by_steps = TrainingLoop(cfg, net, None, gen=torch.Generator())
    nearer = TrainingLoop(cfg, net, None, gen=torch.Generator(), schedule_by="larger")
    for lp in (by_steps, nearer):
        lp.step, lp.elapsed = 20, 5.0
    assert by_steps.fraction_done() == pytest.approx(0.2) and nearer.fraction_done() == pytest.approx(0.5)
    timed = TrainingLoop(LoopConfig(train=TrainConfig(time_budget=10.0)), net, None, gen=torch.Generator())
    timed.elapsed = 2.5
    assert timed.fraction_done() == pytest.approx(0.25) and not timed.done()
    with pytest.raises(ValueError, match="allowed: steps, larger"):
        TrainingLoop(cfg, net, None, gen=torch.Generator(), schedule_by="time")


def test_lr_factor_and_ema_beta_exist_once():
    assert trainer.lr_factor is loop.lr_factor and trainer.ema_beta is loop.ema_beta
    for mod in (clf_mod, ae_mod):  # no copies of the schedule left in the other trainings
        with open(mod.__file__) as f:
            assert "math.cos" not in f.read(), mod.__name__


def test_classifier_learning_rate_follows_the_shared_schedule(digits, tmp_path):
    logged = []
    clf_mod.train_classifier(digits, str(tmp_path / "c"), net=TINY_CLF, max_steps=6, batch_size=16, warmup_steps=3,
                             lr=1e-3, eval_sigmas=(), progress=False, log=logged.append, log_every=1)
    cfg = LoopConfig(optim=OptimConfig(lr=1e-3, warmup_steps=3))
    want = [1e-3 * lr_factor(cfg, s, s / 6) for s in range(6)]
    assert [e["step"] for e in logged] == list(range(1, 7))
    assert [e["lr"] for e in logged] == pytest.approx(want, rel=1e-12)
    assert want[2] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 6)))  # warm-up done at step 3


# ----------------------------------------------------------------------------- non-finite losses


def test_classifier_skips_non_finite_steps_and_stops_after_too_many(digits, tmp_path, monkeypatch):
    real = clf_mod._draw_sigma
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        sigma = real(*a, **k)
        return sigma * float("nan") if calls["n"] in (2, 3) else sigma

    monkeypatch.setattr(clf_mod, "_draw_sigma", flaky)
    with pytest.warns(RuntimeWarning) as warned:
        guide = clf_mod.train_classifier(digits, str(tmp_path / "c"), net=TINY_CLF, max_steps=5, batch_size=16,
                                         eval_sigmas=(), progress=False)
    assert [str(w.message) for w in warned] == [
        "step 2: non-finite loss (nan); step skipped (1 in a row, limit 20)",
        "step 3: non-finite loss (nan); step skipped (2 in a row, limit 20)"]
    assert guide.meta["steps"] == 5
    assert all(torch.isfinite(v).all() for v in guide.net.state_dict().values())
    monkeypatch.setattr(clf_mod, "_draw_sigma", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingError, match="20 non-finite losses in a row"):
        clf_mod.train_classifier(digits, str(tmp_path / "d"), net=TINY_CLF, max_steps=50, batch_size=16,
                                 eval_sigmas=(), progress=False)
    assert not (tmp_path / "d").exists()


def test_autoencoder_skips_non_finite_steps(digits, tmp_path, monkeypatch):
    real = ae_mod.kl_divergence
    calls = {"n": 0}

    def flaky(mean, logvar):
        calls["n"] += 1
        kl = real(mean, logvar)
        return kl * float("nan") if calls["n"] == 2 else kl

    monkeypatch.setattr(ae_mod, "kl_divergence", flaky)
    messages = []
    codec = ae_mod.train_autoencoder(digits, str(tmp_path / "ae"), max_steps=3, net_config=TINY_AE,
                                     log=messages.append)
    assert any(m.startswith("step 2: non-finite loss") for m in messages), messages
    assert codec.meta["training"]["steps"] == 3
    assert all(torch.isfinite(v).all() for v in codec.net.state_dict().values())


# ----------------------------------------------------------------------------- global random state


def test_autoencoder_training_leaves_the_global_generator_alone(digits, tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ae_mod.train_autoencoder(digits, str(tmp_path / "a"), max_steps=2, net_config=TINY_AE, log=lambda m: None)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(456)  # other global state: the same autoencoder (everything comes from seed)
    b = ae_mod.train_autoencoder(digits, str(tmp_path / "b"), max_steps=2, net_config=TINY_AE, log=lambda m: None)
    assert a.sha256 == b.sha256
    c = ae_mod.train_autoencoder(digits, str(tmp_path / "c"), max_steps=2, net_config=TINY_AE, seed=1,
                                 log=lambda m: None)
    assert c.sha256 != a.sha256


def test_classifier_training_leaves_the_global_generator_alone(digits, tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    clf_mod.train_classifier(digits, str(tmp_path / "c"), net=TINY_CLF, max_steps=2, batch_size=16, eval_sigmas=(),
                             progress=False)
    assert torch.equal(torch.get_rng_state(), before)


# ----------------------------------------------------------------------------- distributed distillation


@pytest.mark.slow
def test_two_processes_distill_like_one(tmp_path):
    """Consistency distillation on 2 processes takes the steps 1 process takes (to float
    tolerance), with the same generator state: the objective's draws are split, not reseeded."""
    from test_distributed import TRAIN, _assert_close_checkpoints, _run

    teacher = str(tmp_path / "teacher")
    _run([*[a for a in TRAIN if a not in ("--conditioning", "class")], "--max-steps", "2", "--out", teacher])
    common = ["distill", "--method", "consistency", "--teacher", teacher, "--max-steps", "3", "--steps", "4",
              "--no-progress", "--set", "optim.batch_size=16", "--set", "train.checkpoint_every=3",
              "--set", "optim.eps=0.001"]
    _run([*common, "--out", str(tmp_path / "one")])
    _run([*common, "--out", str(tmp_path / "two")], nproc=2)
    _assert_close_checkpoints(str(tmp_path / "one"), str(tmp_path / "two"), 3)
    with open(tmp_path / "two" / "log.jsonl") as f:
        assert [json.loads(line)["step"] for line in f if '"loss"' in line] == [1, 2, 3]
