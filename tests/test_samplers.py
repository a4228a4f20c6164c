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
