"""Reverse-SDE predictor-corrector sampling (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", Algorithms 2-3).

In the rescaled space every process is variance exploding, so the predictor is the
reverse-diffusion (ancestral) step for VE and the corrector is Langevin MCMC with the step
size set from a target signal-to-noise ratio ``snr``:

    eps_i = 2 * (snr * ||z|| / ||score||)^2,  x <- x + eps_i * score + sqrt(2 eps_i) z

with score = (D(x, sigma) - x) / sigma^2 and norms taken per sample. The final step into
sigma = 0 returns the denoised mean (the paper's "denoise" option).
"""
from __future__ import annotations

from ._common import call, randn_like, report


def _norm(v, over_batch: bool):
    n = v.reshape(v.shape[0], -1).norm(dim=1)
    if over_batch:
        n = n.mean().expand(v.shape[0])
    return n.reshape(-1, *([1] * (v.dim() - 1)))


def sde_pc(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, snr=0.16, corrector_steps=1,
           predictor=True, norm="sample"):
    """Each noise level: ``corrector_steps`` Langevin steps, then one reverse-diffusion step.
    Costs (1 + corrector_steps) evaluations per level."""
    if norm not in ("sample", "batch"):
        raise ValueError(f"norm must be 'sample' or 'batch', got {norm!r}")
    extra = extra or {}
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        for _ in range(corrector_steps):
            score = (call(denoiser, x, s, **extra) - x) / s**2
            z = randn_like(x, generator)
            step = 2 * (snr * _norm(z, norm == "batch") / _norm(score, norm == "batch").clamp_min(1e-30)) ** 2
            x = x + step * score + (2 * step).sqrt() * z
        den = call(denoiser, x, s, **extra)
        report(callback, i, x, s, s_next, den)
        if s_next == 0:
            x = den
        elif predictor:
            # reverse diffusion: x + (s^2 - s'^2) * score + sqrt(s^2 - s'^2) z
            var = s**2 - s_next**2
            x = x + var * (den - x) / s**2 + randn_like(x, generator) * var.sqrt()
    return x
