"""Same name, same numbers: every sampler undiffuse shares with k-diffusion gives k-diffusion's
output to 1e-10 (relative, float64) on an exact Gaussian-mixture denoiser, Karras sigmas, 5 / 10 /
20 steps, from the same start and, for the stochastic ones, the same noise: k-diffusion draws its
noise from a ``noise_sampler`` fed by the same per-sample seeded stream undiffuse's driver uses.

k-diffusion (0.1.1.post1) is a test-only reference loaded by file path (tests/_kdiffusion.py);
the test skips when it is not installed. k-diffusion has no iPNDM, UniPC or SDE predictor-
corrector, so those are cross-checked elsewhere (diffusers) or against the exact ODE only.
"""
from __future__ import annotations

import pytest
import torch
from _kdiffusion import sampling as _kdiffusion_sampling

from undiffuse import samplers
from undiffuse.core import schedules
from undiffuse.core.analytic import GaussianMixture
from undiffuse.core.noise import SeededNoise, randn_like

K = _kdiffusion_sampling()
if K is None:
    pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)",
                allow_module_level=True)

RTOL = 1e-10
STEPS = (5, 10, 20)
GMM = GaussianMixture.random(dim=16, components=4, seed=3, scale_range=(0.2, 1.0))
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
BATCH = 6


def _no_noise(sigma, sigma_next):
    raise AssertionError("a deterministic sampler asked for noise")


# name -> (our sampler, its options, k-diffusion's function, its options, noise: None / "sampler" / "churn")
# "sampler": k-diffusion's noise_sampler is fed from a seeded stream built like ours; "churn":
# k-diffusion's Heun takes no noise_sampler but calls torch.randn_like once per step (using it
# only where it churns), so that call is answered from the stream at those steps (_ChurnNoise).
CASES = {
    "euler": ("euler", {}, "sample_euler", {}, None),
    "ddim": ("ddim", {}, "sample_euler", {}, None),
    "heun": ("heun", {}, "sample_heun", {}, None),
    "heun_churn": ("heun", {"s_churn": 10.0, "s_noise": 1.003}, "sample_heun", {"s_churn": 10.0, "s_noise": 1.003},
                   "churn"),
    "heun_churn_window": ("heun", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 10.0},
                          "sample_heun", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 10.0}, "churn"),
    "lms": ("lms", {}, "sample_lms", {}, None),
    "lms_order2": ("lms", {"order": 2}, "sample_lms", {"order": 2}, None),
    "dpmpp_2m": ("dpmpp_2m", {}, "sample_dpmpp_2m", {}, None),
    # k-diffusion 0.1.1.post1's DPM-Solver++(3M) is its 3M SDE with eta = 0
    "dpmpp_3m": ("dpmpp_3m", {}, "sample_dpmpp_3m_sde", {"eta": 0.0, "noise_sampler": _no_noise}, None),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}, "sample_dpmpp_2m_sde", {}, "sampler"),
    "dpmpp_2m_sde_eta0.5": ("dpmpp_2m_sde", {"eta": 0.5, "s_noise": 0.9}, "sample_dpmpp_2m_sde",
                            {"eta": 0.5, "s_noise": 0.9}, "sampler"),
    "dpmpp_2m_sde_eta0": ("dpmpp_2m_sde", {"eta": 0.0}, "sample_dpmpp_2m_sde",
                          {"eta": 0.0, "noise_sampler": _no_noise}, None),
    "euler_ancestral": ("euler_ancestral", {}, "sample_euler_ancestral", {}, "sampler"),
    "euler_ancestral_eta0.5": ("euler_ancestral", {"eta": 0.5, "s_noise": 1.1}, "sample_euler_ancestral",
                               {"eta": 0.5, "s_noise": 1.1}, "sampler"),
    "ddim_eta1": ("ddim", {"eta": 1.0}, "sample_euler_ancestral", {"eta": 1.0}, "sampler"),
    "ddpm": ("ddpm", {}, "sample_euler_ancestral", {"eta": 1.0}, "sampler"),
}


def _start(steps: int):
    sigmas = schedules.get_sigmas("karras", steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    x = torch.randn(BATCH, GMM.dim, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    return x * sigmas[0], sigmas


class _ChurnNoise:
    """Stands in for ``torch`` inside k-diffusion's module while its Heun runs: ``randn_like``,
    called once per step, returns the stream's next draw at the steps that churn (as our Heun
    draws) and zeros (unused there) at the others; everything else is torch's."""

    def __init__(self, stream: SeededNoise, churns: list[bool]):
        self._stream, self._churns = stream, iter(churns)

    def randn_like(self, x):
        return randn_like(x, self._stream) if next(self._churns) else torch.zeros_like(x)

    def __getattr__(self, name):
        return getattr(torch, name)


def _churns(sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), **_):
    n = len(sigmas) - 1
    return [s_churn > 0 and s_tmin <= float(s) <= s_tmax for s in sigmas[:-1]] if n else []


def run_pair(name: str, steps: int, sampler: str | None = None, **override):
    """(ours, k-diffusion's) for one case; ``sampler`` and ``override`` change our sampler and
    options (negative controls)."""
    ours_name, ours_opts, k_name, k_opts, noise = CASES[name]
    x, sigmas = _start(steps)
    seeds = [1000 + 7 * i for i in range(BATCH)]
    ours_opts, k_opts = dict(ours_opts), dict(k_opts)
    if noise is not None:  # one stream each, built alike: same seeds, same draws in the same order
        ours_opts["generator"] = SeededNoise(seeds, draws=steps)
        theirs = SeededNoise(seeds, draws=steps)
    if noise == "sampler":
        k_opts["noise_sampler"] = lambda sigma, sigma_next: randn_like(x, theirs)
    ours_opts.update(override)
    ours = samplers.get(sampler or ours_name)(GMM, x.clone(), sigmas, **ours_opts)
    if noise == "churn":
        K.torch = _ChurnNoise(theirs, _churns(sigmas, **k_opts))
    try:
        theirs_out = getattr(K, k_name)(GMM, x.clone(), sigmas, disable=True, **k_opts)
    finally:
        K.torch = torch
    return ours, theirs_out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny exact models: one thread (conftest)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_kdiffusion(name, steps):
    ours, theirs = run_pair(name, steps)
    assert ours.dtype == theirs.dtype == torch.float64 and torch.isfinite(theirs).all()
    assert rel(ours, theirs) < RTOL, f"{name}, {steps} steps: relative difference {rel(ours, theirs):.2e}"


def test_noise_matters_in_the_stochastic_cases():
    """The matched noise is what makes the stochastic cases agree: other seeds differ by O(1)."""
    ours, theirs = run_pair("euler_ancestral", 10, generator=SeededNoise(list(range(BATCH)), draws=10))
    assert rel(ours, theirs) > 1e-2


@pytest.mark.parametrize("name, override", [
    # the full Taylor weight on the second difference, nothing else changed
    ("dpmpp_3m", {"sampler": "dpmpp_3m_taylor", "second_order": "taylor", "lower_order_final": False}),
    ("dpmpp_3m", {"second_order": "midpoint"}),  # the midpoint form of the warm-up step
    ("dpmpp_2m_sde", {"s_noise": 1 + 1e-7}),  # one coefficient off by 1e-7
    ("euler_ancestral", {"eta": 1 - 1e-7}),
    ("heun", {"s_churn": 1e-6}),
])
def test_a_changed_coefficient_is_caught(name, override):
    """Negative control: a change in one coefficient, however small, fails the 1e-10 check."""
    assert _kdiffusion_sampling() is K
    ours, theirs = run_pair(name, 10, **override)
    assert rel(ours, theirs) > 100 * RTOL, f"{name} {override}: only {rel(ours, theirs):.1e}"


def test_lower_order_final_is_caught():
    """dpmpp_3m's optional cap (order 2 just before the last step below 15 steps, diffusers'
    default) changes the result: the reference has no such cap."""
    ours, theirs = run_pair("dpmpp_3m", 10, lower_order_final=True)
    assert rel(ours, theirs) > 100 * RTOL
