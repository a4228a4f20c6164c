"""Adaptive Runge-Kutta (Dormand-Prince RK45) on the probability-flow ODE, as the score-SDE
paper's black-box ODE sampler (Song et al. 2021, Sec. 4.3), through SciPy's solve_ivp.

The ODE is integrated in u = -log(sigma), where dx/du = D(x, sigma) - x, from sigmas[0]
down to the smallest positive sigma, then jumps to sigma = 0 with one more evaluation.
Only the end points of ``sigmas`` matter; the solver picks its own steps from ``rtol``/``atol``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._common import call, report


def rk45(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, rtol=1e-5, atol=1e-5,
         method="RK45", info=None):
    """``info``, if a dict, receives ``nfe`` (evaluations used) and the solver's step count."""
    from scipy.integrate import solve_ivp

    extra = extra or {}
    positive = sigmas[sigmas > 0]
    s_hi, s_lo = float(positive[0]), float(positive[-1])
    shape, dtype, device = x.shape, x.dtype, x.device
    nfe = [0]

    def f(u, y):
        nfe[0] += 1
        xs = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
        den = call(denoiser, xs, math.exp(-u), **extra)
        report(callback, nfe[0] - 1, xs, math.exp(-u), s_lo, den)
        return (den - xs).to(torch.float64).reshape(-1).cpu().numpy()

    with torch.no_grad():
        y0 = x.detach().to(torch.float64).reshape(-1).cpu().numpy()
        if s_hi > s_lo:
            sol = solve_ivp(f, (-math.log(s_hi), -math.log(s_lo)), y0, method=method, rtol=rtol, atol=atol)
            if not sol.success:
                raise RuntimeError(f"rk45: ODE solver failed: {sol.message}")
            y0 = np.ascontiguousarray(sol.y[:, -1])
        xe = torch.from_numpy(y0).to(device=device, dtype=dtype).reshape(shape)
        out = call(denoiser, xe, s_lo, **extra)
    nfe[0] += 1
    if info is not None:
        info["nfe"] = nfe[0]
    return out
