"""Linear multistep (Adams-Bashforth in sigma) on the probability-flow ODE.

The derivative d = (x - D) / sigma at the last ``order`` noise levels is interpolated by a
Lagrange polynomial in sigma and integrated exactly over [sigma, sigma_next] (the rule of
k-diffusion's and diffusers' LMS samplers; here the integral is closed form, not quadrature).
All the weights depend on the sigmas alone, so they are computed once per call, before the
first step.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ._common import call, report, to_d


def lms_coefficients(nodes: Sequence[float], a: float, b: float) -> list[float]:
    """Weights w_j with int_a^b p(s) ds = sum_j w_j y_j for the polynomial p through (nodes, y).

    Each Lagrange basis polynomial is built in u = s - a (coefficients of u^0, u^1, ..., so the
    powers stay on the scale of the steps) and integrated term by term: int_0^{b-a} u^m du.
    """
    h = b - a
    weights = []
    for j, node_j in enumerate(nodes):
        poly = [1.0]  # basis_j(u), lowest power first
        for m, node in enumerate(nodes):
            if m == j:
                continue
            root, scale = node - a, 1.0 / (node_j - node)  # factor (u - root) * scale
            poly = [((poly[p - 1] if p else 0.0) - root * (poly[p] if p < len(poly) else 0.0)) * scale
                    for p in range(len(poly) + 1)]
        weights.append(sum(c * h ** (p + 1) / (p + 1) for p, c in enumerate(poly)))
    return weights


def lms_weights(sigmas: Sequence[float], order: int) -> list[list[float]]:
    """For each step i, the weights of the stored derivatives, oldest first (warm-up from order 1)."""
    out = []
    for i in range(len(sigmas) - 1):
        k = min(order, i + 1)
        out.append(lms_coefficients(sigmas[i - k + 1: i + 1], sigmas[i], sigmas[i + 1]))
    return out


def lms(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, order=4):
    """Linear multistep of the given order (1 evaluation per step; warm-up from order 1)."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    extra = extra or {}
    weights = lms_weights(sigmas.detach().cpu().to(torch.float64).tolist(), order)
    ds = []  # stored derivatives, oldest first
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s, **extra)
        report(callback, i, x, s, s_next, den)
        ds = (ds + [to_d(x, s, den)])[-order:]
        for w, d in zip(weights[i], ds):
            x = torch.add(x, d, alpha=w)  # one fused kernel per term
    return x
