"""Multistep consistency sampling (Song et al. 2023, Algorithm 1)."""
from __future__ import annotations

from undiffuse.core.types import denoiser_info

from ._common import call, randn_like, report


def consistency(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, boundary=None):
    """Jump to the model's estimate of the path's end, then, while levels remain, put back
    fresh noise at the next level and jump again: ``x' = f(x, s) + sqrt(s'^2 - b^2) z``.

    ``boundary`` is the level ``b`` at which the model is the identity (default: the
    denoiser's ``boundary_sigma`` (``HasBoundary``), else 0). With the two levels ``[sigma_max, 0]`` this is
    one-step generation. Meant for consistency models; for an ordinary denoiser it is
    ancestral sampling with all the noise renewed at every step.
    """
    extra = extra or {}
    if boundary is None:
        boundary = denoiser_info(denoiser).boundary_sigma or 0.0
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s, **extra)
        report(callback, i, x, s, s_next, den)
        x = den
        if s_next > 0:
            x = den + randn_like(den, generator) * float(max(s_next**2 - boundary**2, 0.0)) ** 0.5
    return x
