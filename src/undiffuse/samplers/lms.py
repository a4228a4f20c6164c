"""Linear multistep (Adams-Bashforth in sigma) on the probability-flow ODE.

The derivative d = (x - D) / sigma at the last ``order`` noise levels is interpolated by a
Lagrange polynomial in sigma and integrated exactly over [sigma, sigma_next] (the rule of
k-diffusion's and diffusers' LMS samplers; here the integral is closed form, not quadrature).
"""
from __future__ import annotations

import numpy as np

from ._common import call, report, to_d


def lms_coefficients(nodes: np.ndarray, a: float, b: float) -> np.ndarray:
    """Weights w_j with int_a^b p(s) ds = sum_j w_j y_j for the interpolant through (nodes, y)."""
    w = np.empty(len(nodes))
    for j in range(len(nodes)):
        basis = np.poly1d([1.0])
        for m, node in enumerate(nodes):
            if m != j:
                basis = basis * np.poly1d([1.0, -node]) / (nodes[j] - node)
        antideriv = basis.integ()
        w[j] = antideriv(b) - antideriv(a)
    return w


def lms(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, order=4):
    """Linear multistep of the given order (1 evaluation per step; warm-up from order 1)."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    extra = extra or {}
    s_np = sigmas.detach().cpu().numpy().astype(np.float64)
    ds = []
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s, **extra)
        report(callback, i, x, s, s_next, den)
        ds = (ds + [to_d(x, s, den)])[-order:]
        k = len(ds)
        nodes = s_np[i - k + 1: i + 1]  # sigmas of the stored derivatives, oldest first
        w = lms_coefficients(nodes, s_np[i], s_np[i + 1])
        x = x + sum(float(wj) * dj for wj, dj in zip(w, ds))
    return x
