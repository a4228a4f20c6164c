"""Cross-checks against diffusers' schedulers (a test-only reference; the package never imports it).

Both sides sample the same analytic model: a Gaussian mixture whose exact denoiser is turned
into an eps-prediction "network". The network is defined on the noise level,
``eps(x_t, sigma) = (x - D(x, sigma)) / sigma`` with ``x = x_t * sqrt(1 + sigma^2)``, and each side
feeds it the sigma its own time label stands for:

* diffusers' loop calls it at ``sigma(t)`` read from the scheduler's own table (its float32
  alphas_cumprod, linearly interpolated at fractional t exactly as Euler/Heun do);
* our sampler reaches it through ``Denoiser(net, VPDiscrete(), "eps")``, whose time label
  ``t(sigma)`` the net maps back with ``VPDiscrete.sigma`` (an exact round trip).

Keying the network on sigma matters: diffusers' float32 table differs from our float64 one by
up to 8e-5 relative (float32 ``1 - beta`` near beta = 1e-4), which would otherwise show up as a
model difference rather than a sampler difference. Our samplers run on diffusers' sigmas (at
``scheduler.timesteps``, then 0) from the same starting state, and the final x0 must agree to
1e-4 relative (max abs difference / max abs value). Everything runs in float64 except where
diffusers upcasts to float32 itself (Euler, DPM-Solver), which costs ~1e-7.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from undiffuse import samplers
from undiffuse.core import schedules  # noqa: E402
from undiffuse.core.analytic import GaussianMixture  # noqa: E402
from undiffuse.core.precond import Denoiser  # noqa: E402
from undiffuse.core.process import VPDiscrete  # noqa: E402

# diffusers' own numpy-2 deprecation noise (np.array on a tensor), not ours
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]  # tiny exact models: one thread (conftest)

RTOL = 1e-4
STEPS = (5, 10, 25)
BASE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
            prediction_type="epsilon")
GMM = GaussianMixture.random(dim=16, components=4, seed=3)
PROCESS = VPDiscrete()  # the same linear 1000-step table, in float64


def eps_model(x_t: torch.Tensor, sigma) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    x = x_t * (1 + sigma**2).sqrt()
    return (x - GMM(x, sigma.reshape(-1))) / sigma


def our_net(x_t, t):
    return eps_model(x_t, PROCESS.sigma(t))


DENOISER = Denoiser(our_net, PROCESS, "eps")




def _sigma_table(sched) -> np.ndarray:
    ac = sched.alphas_cumprod.to(torch.float64)
    return ((1 - ac) / ac).sqrt().numpy()


def _sigma_of_t(sched, t) -> float:
    table = _sigma_table(sched)
    return float(np.interp(float(t), np.arange(len(table)), table))


# name -> (scheduler factory, our sampler + options, extra step() kwargs, draws noise)
CASES = {
    "ddim": (lambda: diffusers.DDIMScheduler(**BASE, clip_sample=False, set_alpha_to_one=True),
             ("ddim", {"eta": 0.0}), {"eta": 0.0}, False),
    "ddim_eta1": (lambda: diffusers.DDIMScheduler(**BASE, clip_sample=False, set_alpha_to_one=True),
                  ("ddim", {"eta": 1.0}), {"eta": 1.0}, True),
    "ddpm": (lambda: diffusers.DDPMScheduler(**BASE, clip_sample=False),
             ("ddpm", {}), {}, True),
    "ddpm_large": (lambda: diffusers.DDPMScheduler(**BASE, clip_sample=False, variance_type="fixed_large"),
                   ("ddpm", {"variance": "large"}), {}, True),
    "euler": (lambda: diffusers.EulerDiscreteScheduler(**BASE), ("euler", {}), {}, False),
    "heun": (lambda: diffusers.HeunDiscreteScheduler(**BASE), ("heun", {}), {}, False),
    "dpmpp_2m": (lambda: diffusers.DPMSolverMultistepScheduler(**BASE, solver_order=2),
                 ("dpmpp_2m", {}), {}, False),
    # dpmpp_3m's defaults are k-diffusion's: diffusers' Taylor ("heun") warm-up step, no lower-order cap
    "dpmpp_3m": (lambda: diffusers.DPMSolverMultistepScheduler(**BASE, solver_order=3, solver_type="heun",
                                                               lower_order_final=False),
                 ("dpmpp_3m", {}), {}, False),
    "dpmpp_3m_diffusers_defaults": (lambda: diffusers.DPMSolverMultistepScheduler(**BASE, solver_order=3),
                                    ("dpmpp_3m", {"second_order": "midpoint", "lower_order_final": True}), {}, False),
    "unipc2_bh2": (lambda: diffusers.UniPCMultistepScheduler(**BASE, solver_order=2, solver_type="bh2"),
                   ("unipc", {"order": 2, "variant": "bh2"}), {}, False),
    "unipc3_bh2": (lambda: diffusers.UniPCMultistepScheduler(**BASE, solver_order=3, solver_type="bh2"),
                   ("unipc", {"order": 3, "variant": "bh2"}), {}, False),
    "unipc2_bh1": (lambda: diffusers.UniPCMultistepScheduler(**BASE, solver_order=2, solver_type="bh1"),
                   ("unipc", {"order": 2, "variant": "bh1"}), {}, False),
    "unipc3_bh1": (lambda: diffusers.UniPCMultistepScheduler(**BASE, solver_order=3, solver_type="bh1"),
                   ("unipc", {"order": 3, "variant": "bh1"}), {}, False),
    "unipc3_no_corrector_0_2": (
        lambda: diffusers.UniPCMultistepScheduler(**BASE, solver_order=3, disable_corrector=[0, 2]),
        ("unipc", {"order": 3, "disable_corrector": (0, 2)}), {}, False),
}
# Euler and Heun keep their state in the rescaled space x = x_t / alpha (sigma-scaled inputs);
# the others keep x_t.
RESCALED_STATE = ("euler", "heun")


def _our_sigmas(sched) -> torch.Tensor:
    """Diffusers' noise levels (Heun repeats its timesteps for the second stage), then 0."""
    ts = list(dict.fromkeys(float(t) for t in sched.timesteps))
    sigmas = torch.tensor([_sigma_of_t(sched, t) for t in ts] + [0.0], dtype=torch.float64)
    # our model sees exactly these sigmas (no clamping at the ends of our table)
    assert torch.allclose(PROCESS.sigma(PROCESS.t(sigmas[:-1])), sigmas[:-1], rtol=1e-12, atol=0)
    return sigmas


def _noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(8, GMM.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _start(name: str, steps: int):
    """Our starting x and sigmas for a case whose diffusers state is x_t."""
    sched = CASES[name][0]()
    sched.set_timesteps(steps)
    sigmas = _our_sigmas(sched)
    return _noise() * sched.init_noise_sigma * (1 + sigmas[0] ** 2).sqrt(), sigmas


def _run_pair(name: str, steps: int, seed: int = 0):
    make, (sampler, options), step_kwargs, noisy = CASES[name]
    sched = make()
    sched.set_timesteps(steps)
    noise = _noise(seed)

    # diffusers' own loop
    x = noise * sched.init_noise_sigma
    gen = {"generator": torch.Generator().manual_seed(seed + 1)} if noisy else {}
    for t in sched.timesteps:
        eps = eps_model(sched.scale_model_input(x, t), _sigma_of_t(sched, t))
        x = sched.step(eps, t, x, **step_kwargs, **gen).prev_sample
    if isinstance(sched, diffusers.UniPCMultistepScheduler):
        # The step into sigma = 0 is first order and returns the last x0 prediction. With bh1,
        # diffusers multiplies its (empty, zero) correction by B(h) = -h = -inf there and
        # returns NaN; its intended output is that prediction, so compare with it.
        if sched.config.solver_type == "bh1" and not torch.isfinite(x).all():
            x = sched.model_outputs[-1]
        assert torch.equal(x, sched.model_outputs[-1])
    theirs = x

    # ours on the same sigmas from the same state
    sigmas = _our_sigmas(sched)
    x0 = noise * sched.init_noise_sigma
    if name not in RESCALED_STATE:
        x0 = x0 * (1 + sigmas[0] ** 2).sqrt()  # x_T / alpha(sigma_max)
    gen = {"generator": torch.Generator().manual_seed(seed + 1)} if noisy else {}
    ours = samplers.get(sampler)(DENOISER, x0, sigmas, **options, **gen)
    return ours, theirs


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_diffusers(name, steps):
    ours, theirs = _run_pair(name, steps)
    assert torch.isfinite(theirs).all()
    assert _rel(ours, theirs) < RTOL, f"{name} with {steps} steps: relative difference {_rel(ours, theirs):.2e}"


def test_crosscheck_is_sensitive():
    """The tolerance separates real solver differences: bh1 vs bh2, a disabled corrector and
    the Taylor vs the reference third-order weight all differ by far more than 1e-4."""
    _, theirs = _run_pair("unipc2_bh2", 10)
    other = samplers.unipc(DENOISER, *_start("unipc2_bh2", 10), order=2, variant="bh1")
    assert _rel(other, theirs) > 10 * RTOL
    other = samplers.unipc(DENOISER, *_start("unipc2_bh2", 10), order=2, disable_corrector=range(10))
    assert _rel(other, theirs) > 10 * RTOL
    _, theirs3 = _run_pair("dpmpp_3m", 10)
    taylor = samplers.dpmpp_3m_taylor(DENOISER, *_start("dpmpp_3m", 10), second_order="taylor", lower_order_final=False)
    assert _rel(taylor, theirs3) > 10 * RTOL


@pytest.mark.parametrize("steps", (1, 5, 7, 10, 25, 50, 999))
@pytest.mark.parametrize("spacing", ("leading", "trailing"))
def test_timesteps_match_ddim(spacing, steps):
    sched = diffusers.DDIMScheduler(**BASE, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    ours = schedules.timesteps(PROCESS, steps, spacing)
    assert torch.equal(ours, sched.timesteps.to(torch.float64))


@pytest.mark.parametrize("steps", (1, 5, 7, 10, 25, 50, 999))
def test_linspace_timesteps_match_euler(steps):
    sched = diffusers.EulerDiscreteScheduler(**BASE, timestep_spacing="linspace")
    sched.set_timesteps(steps)
    ours = schedules.timesteps(PROCESS, steps, "linspace")
    assert torch.equal(ours.to(torch.float32), sched.timesteps)  # diffusers builds them in float32
