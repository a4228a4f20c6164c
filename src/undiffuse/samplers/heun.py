"""Heun's second-order method with optional churn (Karras et al. 2022, Algorithm 2)."""
from __future__ import annotations

import math

from ._common import call, randn_like, report, to_d


def heun(denoiser, x, sigmas, *, generator=None, callback=None, extra=None,
         s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0):
    """EDM's sampler. Each step costs 2 evaluations except the last (to sigma = 0), which is
    an Euler step. ``s_churn`` > 0 adds noise to raise sigma by a factor gamma before each
    step for noise levels in [s_tmin, s_tmax] (EDM eq. 7, Algorithm 2 lines 4-6)."""
    extra = extra or {}
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= float(s) <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + randn_like(x, generator) * (s_noise * (s_hat**2 - s**2) ** 0.5)
        den = call(denoiser, x, s_hat, **extra)
        report(callback, i, x, s_hat, s_next, den)
        d = to_d(x, s_hat, den)
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:  # second-order correction (trapezoidal rule)
            den2 = call(denoiser, x_next, s_next, **extra)
            d2 = to_d(x_next, s_next, den2)
            x_next = x + (s_next - s_hat) * (d + d2) / 2
        x = x_next
    return x
