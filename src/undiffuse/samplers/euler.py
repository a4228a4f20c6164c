"""First-order samplers: Euler, Euler ancestral, DDIM and DDPM.

In the rescaled space all four are the same step: jump to the denoised estimate and add
back noise, ``x' = D + sigma_down * (x - D) / sigma + sigma_up * z``, with
``sigma_down^2 + sigma_up^2 = sigma_next^2``. They differ only in how much of the next noise
level is fresh noise (see ``ancestral_split``).
"""
from __future__ import annotations

from ._common import ancestral_split, call, randn_like, report, to_d


def euler(denoiser, x, sigmas, *, generator=None, callback=None, extra=None):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, eq. 3); order 1.

    Identical to deterministic DDIM (Song et al. 2021) in the rescaled space.
    """
    extra = extra or {}
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s, **extra)
        report(callback, i, x, s, s_next, den)
        x = x + (s_next - s) * to_d(x, s, den)
    return x


def euler_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, eta=1.0, s_noise=1.0):
    """Euler step to sigma_down, then fresh noise of std sigma_up (k-diffusion's ancestral
    Euler; with eta = 1 it samples the DDPM posterior at each step)."""
    extra = extra or {}
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s, **extra)
        report(callback, i, x, s, s_next, den)
        down, up = ancestral_split(s, s_next, eta)
        x = x + (down - s) * to_d(x, s, den)
        if s_next > 0 and up > 0:
            x = x + randn_like(x, generator) * (s_noise * up)
    return x


def ddim(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12) with its stochasticity eta: 0 is deterministic,
    1 is the DDPM posterior. Works for every process in the rescaled space."""
    return euler_ancestral(denoiser, x, sigmas, generator=generator, callback=callback, extra=extra, eta=eta)


def ddpm(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, variance="small"):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on any sigma grid.

    ``variance="small"`` uses the posterior variance beta_tilde (equal to DDIM with eta=1);
    ``"large"`` uses beta_t (Ho et al.'s other choice), with beta_t = 1 - abar_t / abar_prev.
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    extra = extra or {}
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s, **extra)
        report(callback, i, x, s, s_next, den)
        down, up = ancestral_split(s, s_next, 1.0)
        x = den + down * to_d(x, s, den)  # posterior mean
        if s_next > 0:
            if variance == "large":
                # beta_t / abar_prev in sigmas: (s^2 - s'^2)(1 + s'^2) / (1 + s^2)
                up = ((s**2 - s_next**2) * (1 + s_next**2) / (1 + s**2)) ** 0.5
            x = x + randn_like(x, generator) * up
    return x
