"""First-order samplers: Euler, Euler ancestral, DDIM and DDPM.

In the rescaled space all four are the same step: jump to the denoised estimate and add
back noise, ``x' = D + sigma_down * (x - D) / sigma + sigma_up * z``, with
``sigma_down^2 + sigma_up^2 = sigma_next^2``. They differ only in how much of the next noise
level is fresh noise (see ``ancestral_split``).
"""
from __future__ import annotations

import torch

from ._common import ancestral_split, axpy, levels, per_step, randn_like, report


def _lerp(den, x, a):
    """den + a (x - den) = a x + (1 - a) den in one kernel (a: a float or a differentiable 0-dim tensor)."""
    return torch.lerp(den, x, a)


def euler(denoiser, x, sigmas, *, generator=None, callback=None, extra=None):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, eq. 3); order 1.

    Identical to deterministic DDIM (Song et al. 2021) in the rescaled space. The step
    x + (s' - s) (x - D) / s is written as D + (s' / s) (x - D), one interpolation per step.
    """
    extra = extra or {}
    ratios = per_step(sigmas[1:] / sigmas[:-1])
    sig, sv = levels(sigmas, x), sigmas.tolist()
    for i in range(len(sigmas) - 1):
        den = denoiser(x, sig[i], **extra)
        report(callback, i, x, sv[i], sv[i + 1], den)
        x = _lerp(den, x, ratios[i][0])
    return x


def _ancestral(denoiser, x, sigmas, generator, callback, extra, eta, s_noise, variance="small"):
    """x' = D + (sigma_down / sigma) (x - D) + s_noise * sigma_up * z for every step (z only when
    sigma_next > 0 and sigma_up > 0). ``variance="large"`` replaces sigma_up by DDPM's beta_t
    in sigmas, sqrt((s^2 - s'^2)(1 + s'^2) / (1 + s^2)), keeping the posterior mean."""
    extra = extra or {}
    s, s_next = sigmas[:-1], sigmas[1:]
    down, up = ancestral_split(s, s_next, eta)  # for all steps at once
    if variance == "large":
        up = ((s**2 - s_next**2) * (1 + s_next**2) / (1 + s**2)) ** 0.5
    weights = per_step(down / s, up * s_noise * (s_next > 0))
    sig, sv = levels(sigmas, x), sigmas.tolist()
    for i in range(len(sigmas) - 1):
        den = denoiser(x, sig[i], **extra)
        report(callback, i, x, sv[i], sv[i + 1], den)
        ratio, up = weights[i]
        x = _lerp(den, x, ratio)
        if sv[i + 1] > 0 and not (isinstance(up, float) and up == 0.0):
            x = axpy(x, up, randn_like(x, generator))
    return x


def euler_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, eta=1.0, s_noise=1.0):
    """Euler step to sigma_down, then fresh noise of std sigma_up (k-diffusion's ancestral
    Euler; with eta = 1 it samples the DDPM posterior at each step)."""
    return _ancestral(denoiser, x, sigmas, generator, callback, extra, eta, s_noise)


def ddim(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12) with its stochasticity eta: 0 is deterministic,
    1 is the DDPM posterior. Works for every process in the rescaled space."""
    return _ancestral(denoiser, x, sigmas, generator, callback, extra, eta, 1.0)


def ddpm(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, variance="small"):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on any sigma grid.

    ``variance="small"`` uses the posterior variance beta_tilde (equal to DDIM with eta=1);
    ``"large"`` uses beta_t (Ho et al.'s other choice), with beta_t = 1 - abar_t / abar_prev.
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    return _ancestral(denoiser, x, sigmas, generator, callback, extra, 1.0, 1.0, variance)
