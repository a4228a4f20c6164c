"""Budget-aware configuration (``training.budget``): the resolved config fits the run the
budget buys, says why, and never overrides an option the user gave. The step rates are
injected (a table per network) except in the tests of the measurement itself and of the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from undiffuse import data
from undiffuse.config import resolve
from undiffuse.training import budget as B

# steps/s by channel count and patch size: the generic preset's network is slow, the rungs fast
RATES = {(64, 1): 0.2, (32, 2): 2.0, (48, 2): 1.4, (32, 1): 0.9}


def fake_rate(cfg, shape):
    m = cfg.model
    return RATES[(m["channels"], m.get("patch_size", 1))] * 64 / cfg.optim.batch_size


@pytest.fixture(scope="module")
def mnist():
    return data.load("mnist5k")


def fit(ds, seconds=None, steps=None, explicit=(), default=True, preset="small", **over):
    overrides = dict(over)
    if seconds is not None:
        overrides["train.time_budget"] = float(seconds)
    if steps is not None:
        overrides["train.max_steps"] = steps
        overrides.setdefault("train.time_budget", None)
    cfg = resolve(preset, ds, overrides)
    return B.fit_budget(cfg, ds.shape, set(overrides) | set(explicit), default_preset=default, rate=fake_rate)


def test_a_minute_and_an_hour_give_different_fits_each_explained(mnist):
    short, long = fit(mnist, 60), fit(mnist, 3600)
    assert short.config.model["patch_size"] == 2 and short.config.model["channels"] == 32
    assert long.config.model["channels"] == 32 and long.config.model["patch_size"] == 1  # 0.9 * 3600 >= 3000
    assert short.expected_steps == 120 and long.expected_steps == 3240
    assert short.config.optim.warmup_steps == 30 and long.config.optim.warmup_steps == 500
    assert short.config.train.max_steps is None and short.config.train.checkpoint_every == 50
    text = "\n".join(short.reasons)
    for word in ("stopping", "network: unet-32-p2", "expected steps: about 120", "warm-up: 30", "EMA half-life"):
        assert word in text
    assert "network: unet-32 " in "\n".join(long.reasons)
    # in between: the 48-channel patch rung (1.4 steps/s * 2400 s = 3360 steps), not the 0.9 one
    assert fit(mnist, 2400).config.model["channels"] == 48


def test_a_budget_the_preset_fills_keeps_its_network(mnist):
    f = fit(mnist, 30 * 3600)  # 0.2 steps/s * 108,000 s = 21,600 steps
    assert f.config.model == resolve("small", mnist, {}).model
    assert "the small preset's own" in f.reasons[1]


def test_explicit_options_are_never_overridden(mnist):
    f = fit(mnist, 60, **{"model.channels": 64, "optim.warmup_steps": 400, "train.checkpoint_every": 5000})
    assert f.config.model["channels"] == 64 and f.config.model.get("patch_size", 1) == 1
    assert f.config.optim.warmup_steps == 400 and f.config.train.checkpoint_every == 5000
    g = fit(mnist, 60, **{"optim.lr": 1e-4, "optim.batch_size": 32})
    assert g.config.model["patch_size"] == 2 and g.config.optim.lr == 1e-4 and g.config.optim.batch_size == 32
    h = fit(mnist, 60, **{"ema.rampup": 0.0, "ema.halflife_samples": 1e6})
    assert h.config.ema.halflife_samples == 1e6
    k = fit(mnist, 60, **{"ema.rampup": 0.0})  # no ramp-up: the half-life itself is scaled
    assert math.isclose(k.config.ema.halflife_samples, 0.05 * 120 * 64)
    both = fit(mnist, 60, **{"train.max_steps": 20})  # an explicit step cap stays and bounds the steps
    assert both.config.train.max_steps == 20 and both.expected_steps == 20


def test_a_named_preset_keeps_its_network_but_fits_its_schedule(mnist):
    f = fit(mnist, 60, default=False)
    assert f.config.model == resolve("small", mnist, {}).model
    assert f.config.optim.warmup_steps == 3 and f.config.train.max_steps is None  # 0.2 * 60 = 12 steps


def test_a_step_budget_scales_without_measuring(mnist):
    def no_rate(cfg, shape):
        raise AssertionError("a step budget needs no rate")
    cfg = resolve("small", mnist, {"train.max_steps": 100, "train.time_budget": None})
    f = B.fit_budget(cfg, mnist.shape, {"train.max_steps", "train.time_budget"}, default_preset=True, rate=no_rate)
    assert f.config.model == cfg.model and f.config.optim.warmup_steps == 25 and f.config.train.max_steps == 100


def test_the_ladder_follows_the_image_size():
    assert [r["name"] for r in B.ladder_for((1, 28, 28))] == ["unet-32-p2", "unet-48-p2", "unet-32"]
    assert [r["name"] for r in B.ladder_for((4, 7, 7))] == ["unet-32"]  # the latent grids' own
    assert [r["name"] for r in B.ladder_for((1, 15, 15))] == ["unet-32"]  # patches must divide the sides
    assert [r["name"] for r in B.ladder_for((3, 64, 64))] == ["unet-32-p4", "unet-48-p2"]
    assert B.ladder_for((2,)) == [] and B.ladder_for((3, 256, 256)) == []


def test_measure_rate_is_positive_and_leaves_the_global_rng_alone(mnist):
    cfg = resolve("digits", data.load("digits"), {})
    state = torch.get_rng_state()
    r = B.measure_rate(cfg, (1, 8, 8))
    assert torch.equal(state, torch.get_rng_state())
    assert 0.05 < r < 1000
    text = resolve("small", mnist, {"conditioning.kind": "class"})
    assert B.measure_rate(B._with_rung(text, B.ladder_for(mnist.shape)[0], set()), mnist.shape) > 0


def _dry_run(*args):
    p = subprocess.run([sys.executable, "-m", "undiffuse", "train", "--dry-run", *args], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), p.stderr


def test_dry_run_prints_the_fit_and_a_named_preset_keeps_its_network(tmp_path):
    cfg, err = _dry_run("--data", "mnist5k", "--no-latent", "--time-budget", "1m", "--out", str(tmp_path / "a"))
    assert "budget: network: unet-32-p2" in err and "budget: expected steps" in err
    assert cfg["model"]["patch_size"] == 2 and cfg["train"]["max_steps"] is None
    named, err = _dry_run("--data", "mnist5k", "--preset", "small", "--time-budget", "1m", "--out", str(tmp_path / "b"))
    assert named["latent"]["autoencoder"] is None  # a named preset trains on pixels
    assert named["model"]["channels"] == 64 and "budget: network" not in err and "budget: warm-up" in err


def test_latent_grids_get_their_rung_with_its_noise_levels(mnist):
    cfg = resolve("small", mnist, {"train.time_budget": 600.0})
    f = B.fit_budget(cfg, (4, 7, 7), {"train.time_budget"}, default_preset=True, rate=fake_rate)
    assert f.config.model["channels"] == 32 and f.config.diffusion.p_mean == -0.4 and f.config.optim.batch_size == 64
    assert "diffusion.p_mean -0.4" in "\n".join(f.reasons)
    g = B.fit_budget(cfg, (4, 7, 7), {"train.time_budget", "diffusion.p_mean"}, default_preset=True, rate=fake_rate)
    assert g.config.diffusion.p_mean == cfg.diffusion.p_mean  # given: kept
