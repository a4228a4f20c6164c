"""Every sampler against the truth of an analytic Gaussian-mixture denoiser."""
import numpy as np
import pytest
import torch
from conftest import SMAX, SMIN

import undiffuse
from undiffuse import samplers
from undiffuse.core import schedules
from undiffuse.core.analytic import GaussianMixture, ode_solution

# (sampler, options, lowest acceptable measured order, highest acceptable)
ORDER_CASES = [
    ("euler", {}, 0.85, 1.3),
    ("ddim", {}, 0.85, 1.3),
    ("heun", {}, 1.8, 2.5),
    ("dpmpp_2m", {}, 1.8, 2.4),
    ("dpmpp_3m", {}, 2.2, 2.8),  # the reference's half-Taylor second difference: order 2 (2.52 measured)
    ("dpmpp_3m_taylor", {}, 2.7, 3.6),
    ("dpmpp_3m_taylor", {"lower_order_final": False, "second_order": "taylor"}, 2.7, 3.6),
    ("unipc", {"order": 2}, 1.8, 3.6),
    ("unipc", {"order": 3}, 2.7, 4.5),
    ("lms", {}, 2.8, 4.5),
    ("ipndm", {"variable": True}, 2.8, 4.5),
    ("ipndm", {}, 1.7, 4.5),
]


def _state_before_last_step(name, gm, x, sigmas, **kw):
    """Run a sampler and capture x at the last positive sigma (before the jump to 0)."""
    cap = {}

    def cb(state):
        if state["sigma_next"] == 0:
            cap["x"] = state["x"]

    samplers.get(name)(gm, x, sigmas, callback=cb, **kw)
    return cap["x"]


@pytest.mark.parametrize("name, opts, lo, hi", ORDER_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_convergence_order_against_exact_ode(name, opts, lo, hi, gmm8, ode_case):
    x, ref = ode_case
    steps = [12, 24, 48, 96]
    errs = []
    for n in steps:
        sig = schedules.get_sigmas("logsnr", n, sigma_min=SMIN, sigma_max=SMAX)
        out = _state_before_last_step(name, gmm8, x, sig, **opts)
        errs.append(float(((out - ref) ** 2).mean().sqrt()))
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert lo <= slope <= hi, f"{name} {opts}: errors {errs}, measured order {slope:.2f}"
    assert errs[-1] < 0.02 and errs[-1] < errs[0] / 4  # and it actually converges to the ODE solution


def test_rk45_meets_its_tolerance(gmm8, ode_case):
    x, _ = ode_case
    ref, _ = ode_solution(gmm8, x, SMAX, SMIN)
    sig = schedules.get_sigmas("karras", 10, sigma_min=SMIN, sigma_max=SMAX)
    errs, nfes = [], []
    for tol in (1e-3, 1e-6):
        info = {}
        out = samplers.get("rk45")(gmm8, x, sig, rtol=tol, atol=tol, info=info)
        errs.append(float((out - ref).abs().max()))
        nfes.append(info["nfe"])
    assert errs[1] < errs[0] and errs[1] < 1e-4
    assert nfes[1] > nfes[0]


def _energy_distance(a, b):
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


STOCHASTIC = [("ddpm", {}), ("ddpm", {"variance": "large"}), ("euler_ancestral", {}), ("ddim", {"eta": 1.0}),
              ("dpmpp_2m_sde", {}), ("sde_pc", {}), ("heun", {"s_churn": 20.0})]


@pytest.fixture(scope="module")
def dist_case():
    gm = GaussianMixture.random(dim=8, components=3, seed=2, scale_range=(0.1, 0.5))
    g = torch.Generator().manual_seed(5)
    return gm, gm.sample(600, g), gm.sample(600, g)


@pytest.mark.parametrize("name, opts", STOCHASTIC, ids=lambda v: v if isinstance(v, str) else str(v))
def test_stochastic_samplers_reach_the_true_distribution(name, opts, dist_case):
    gm, true_a, true_b = dist_case
    baseline = _energy_distance(true_a, true_b)  # two fresh true sample sets
    noise = undiffuse.noise((600, 8), seed=0, dtype=torch.float64)
    assert _energy_distance(noise, true_a) > 40 * baseline  # the test can fail: noise is far
    x = undiffuse.sample(gm, noise, sampler=name, steps=60, schedule="karras", sigma_min=0.002, sigma_max=80.0,
                         seed=10, **opts)
    d = _energy_distance(x, true_a)
    assert d < 6 * baseline, f"{name}: energy distance {d:.4f} vs true-vs-true {baseline:.4f}"


def test_wrong_denoiser_is_detected(dist_case):
    """Negative control for the distribution test: a denoiser of another mixture fails it."""
    gm, true_a, true_b = dist_case
    other = GaussianMixture.random(dim=8, components=3, seed=99, scale_range=(0.1, 0.5))
    x = undiffuse.sample(other, undiffuse.noise((600, 8), seed=0, dtype=torch.float64), sampler="ddpm", steps=60,
                         sigma_min=0.002, sigma_max=80.0, seed=10)
    assert _energy_distance(x, true_a) > 6 * _energy_distance(true_a, true_b)


@pytest.mark.parametrize("name", samplers.names())
def test_per_sample_seeds_do_not_depend_on_batch(name, gmm8):
    kw = {"sigma_min": SMIN, "sigma_max": SMAX, "steps": 6, "sampler": name}
    full = undiffuse.sample(gmm8, undiffuse.noise((5, 8), seed=100, dtype=torch.float64), seed=7, **kw)
    # sample 3 alone, with its own noise seed (100 + 3) and its own sampler seed (7 + 3)
    alone = undiffuse.sample(gmm8, undiffuse.noise((1, 8), seed=103, dtype=torch.float64), seed=10, **kw)
    # rk45 picks its steps from the whole batch's error, so it agrees to its tolerance only
    tol = 1e-3 if name == "rk45" else 1e-8
    assert torch.allclose(full[3:4], alone, rtol=1e-6, atol=tol)
    again = undiffuse.sample(gmm8, undiffuse.noise((5, 8), seed=100, dtype=torch.float64), seed=7, **kw)
    assert torch.equal(full, again)


@pytest.mark.parametrize("name", samplers.names())
def test_every_sampler_runs_on_images_in_float32_and_calls_back(name):
    gm = GaussianMixture.random(dim=2 * 4 * 4, components=2, seed=0)
    gm.sample_shape = (2, 4, 4)  # the mixture flattens any shape with 32 entries
    calls = []
    out = undiffuse.sample(gm, undiffuse.noise((3, 2, 4, 4), seed=0), sampler=name, steps=4, sigma_min=0.01,
                           sigma_max=10.0, seed=0, callback=calls.append)
    assert out.shape == (3, 2, 4, 4) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert len(calls) >= 1 and {"i", "x", "sigma", "sigma_next", "denoised"} <= set(calls[0])
    if samplers.info(name).evals_per_step:
        assert len(calls) == 4


class _CountNoise(torch.overrides.TorchFunctionMode):
    """Counts the calls that draw normal noise (torch.randn, Tensor.normal_) under it."""

    calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.randn, torch.Tensor.normal_):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["euler_ancestral", "ddpm", "dpmpp_2m_sde", "heun_churn", "sde_pc"])
def test_seeded_sampling_draws_once_per_sample_per_run(name, gmm8):
    """With ``seed=...`` a stochastic sampler's fresh noise costs one generator call per sample
    for the whole run (one block of draws), not one per sample per step."""
    sampler, opts = ("heun", {"s_churn": 5.0}) if name == "heun_churn" else (name, {})
    batch, steps = 12, 20
    z = undiffuse.noise((batch, 8), seed=0)
    with _CountNoise() as count:
        undiffuse.sample(gmm8, z, sampler=sampler, steps=steps, sigma_min=SMIN, sigma_max=SMAX, seed=3, **opts)
    calls = count.calls
    blocks = 2 if name == "sde_pc" else 1  # sde_pc draws twice a step: a second block of `steps` draws
    assert calls == blocks * batch, f"{calls} noise calls for {batch} samples, {steps} steps"


def test_seeded_noise_streams_are_defined_per_sample_and_block(monkeypatch):
    """Draw k of sample i is entry k % block of the block a generator seeded
    derive_seed(seed_i, 1 + k // block) fills; it never depends on the other samples, and never
    repeats the starting noise of the same seed."""
    from undiffuse.core.noise import SeededNoise, derive_seed

    monkeypatch.setattr(SeededNoise, "BLOCK_BYTES", 3 * 5 * 8)  # 3 draws of 5 float64 values per block
    x = torch.zeros(4, 5, dtype=torch.float64)
    many, one = SeededNoise([7, 8, 9, 10], draws=10), SeededNoise([9], draws=10)
    draws = [many.like(x) for _ in range(7)]  # blocks 0, 1 and part of 2
    alone = [one.like(x[2:3]) for _ in range(7)]
    for k, (d, a) in enumerate(zip(draws, alone)):
        assert torch.equal(d[2:3], a)
        g = torch.Generator().manual_seed(derive_seed(8, 1 + k // 3))
        assert torch.equal(d[1], torch.randn(3, 5, generator=g, dtype=torch.float64)[k % 3])
    assert not torch.allclose(draws[0][0], undiffuse.noise((1, 5), seed=7, dtype=torch.float64)[0])
    with pytest.raises(ValueError, match="4 seeds but the batch has 2"):
        many.like(x[:2])


def test_lms_weights_are_computed_once_per_call(gmm8, monkeypatch):
    import importlib

    lms_module = importlib.import_module("undiffuse.samplers.lms")  # the module (the package exports the function)

    calls = []
    original = lms_module.lms_weights
    monkeypatch.setattr(lms_module, "lms_weights", lambda *a: calls.append(a) or original(*a))
    sig = schedules.get_sigmas("karras", 12, sigma_min=SMIN, sigma_max=SMAX)
    samplers.get("lms")(gmm8, undiffuse.noise((2, 8), seed=0, dtype=torch.float64) * SMAX, sig)
    assert len(calls) == 1
