"""A multistep solver whose step positions and coefficients can be calibrated per model.

Every step has the exponential-integrator form of DPM-Solver++ (Lu et al. 2022) with free
weights on the differences of past denoiser outputs:

    x_{i+1} = (s_{i+1} / s_i) x_i + (1 - s_{i+1} / s_i) D_i + sum_j w_ij (D_i - D_{i-j}),  j = 1..K

The first two terms make every step consistent whatever the weights (a constant D is
integrated exactly), so the weights only shape the higher-order correction. The weights are
``w = w_base(sigmas) + deltas``: ``w_base`` are the weights of DPM-Solver++(2M) or (3M) for the
current sigmas (``base_order`` 2 or 3), or of the fourth-order exponential Adams-Bashforth
rule (``base_order=4``: the cubic through the last four denoiser outputs in lambda = -log sigma,
integrated exactly against the exponential kernel; the variable-step form of DEIS's tAB,
Zhang & Chen 2023, in data prediction), and ``deltas`` are learned offsets (zero gives the
base solver back, except that the step into sigma = 0 may use history too). ``shifts`` optionally
evaluate the denoiser at ``s_i * exp(shift_i)`` instead of ``s_i`` (a learned correction of
the noise level the network is asked about, in the spirit of time-shift samplers). Learning the positions and
the offsets on a small batch against an accurate ODE solve is the idea of learned solvers
such as "Align Your Steps" (Sabour et al. 2024, positions) and LD3 / BNS-style solver
distillation (coefficients); see ``undiffuse.fewstep.calibrate``.
"""
from __future__ import annotations

import torch

from ._common import call, report

HISTORY = 3  # K: number of past outputs a step may use


def adams_weights(sigmas: torch.Tensor, i: int, order: int) -> list:
    """Exponential Adams-Bashforth weights on (D_i - D_{i-j}), j = 1..HISTORY, for step i.

    With lambda = -log sigma, u_j = lambda_{i-j} - lambda_i and h = lambda_{i+1} - lambda_i, let P
    be the polynomial through (u_j, D_{i-j}), j < k = min(order, i + 1). Then
    x_{i+1} = e^{-h} x_i + int_0^h e^{-(h-u)} P(u) du = e^{-h} x_i + sum_j c_j D_{i-j}, where the
    c_j solve sum_j c_j u_j^m = I_m = int_0^h e^{-(h-u)} u^m du for m < k (I_0 = 1 - e^{-h},
    I_m = h^m - m I_{m-1}). As sum_j c_j = I_0, the weight on D_i - D_{i-j} is -c_j.
    With three points this is DPM-Solver++(3M); its two-point warm-up step differs from 2M's
    (which approximates I_1 by I_0 h / 2).
    """
    zero = sigmas.new_zeros(())
    k = min(order, i + 1)
    if sigmas[i + 1] == 0 or k == 1:
        return [zero] * HISTORY
    lam = -torch.log(sigmas[i - k + 1: i + 2])  # lambda_{i-k+1} .. lambda_{i+1}
    h = lam[-1] - lam[-2]
    u = lam[:-1].flip(0) - lam[-2]  # u_0 = 0, u_1, ..., u_{k-1} (all <= 0)
    moments = [-torch.expm1(-h)]
    for m in range(1, k):
        moments.append(h**m - m * moments[-1])
    vander = torch.stack([u**m for m in range(k)])  # (k, k): row m, column j
    c = torch.linalg.solve(vander, torch.stack(moments))
    return [-c[j] for j in range(1, k)] + [zero] * (HISTORY - k + 1)


def base_weights(sigmas: torch.Tensor, i: int, order: int) -> list:
    """Base weights on (D_i - D_{i-j}), j = 1..HISTORY, for step i (differentiable in sigmas):
    DPM-Solver++(2M) / (3M) for order 2 / 3, exponential Adams-Bashforth for order 4."""
    if order == 4:
        return adams_weights(sigmas, i, order)
    zero = sigmas.new_zeros(())
    s_next = sigmas[i + 1]
    k = min(order, i + 1)
    if s_next == 0 or k == 1:
        return [zero] * HISTORY
    lam = -torch.log(sigmas[max(i - 2, 0): i + 2])
    h = lam[-1] - lam[-2]
    h0 = lam[-2] - lam[-3]
    i0 = -torch.expm1(-h)
    if k == 2:
        return [i0 * h / (2 * h0)] + [zero] * (HISTORY - 1)
    h1 = lam[-3] - lam[-4]
    e = torch.exp(-h)
    i1, i2 = h - 1 + e, h**2 / 2 - h + 1 - e
    # with a = D0 - D1, b = D0 - D2: f01 = a/h0, f12 = (b - a)/h1, f012 = (f01 - f12)/(h0 + h1)
    ca = (1 / h0 + 1 / h1) / (h0 + h1)  # d f012 / d a
    cb = -1 / (h1 * (h0 + h1))  # d f012 / d b
    wa = i1 * (1 / h0 + h0 * ca) + 2 * i2 * ca  # from i1 * (f01 + h0 f012) + i2 * 2 f012
    wb = i1 * h0 * cb + 2 * i2 * cb
    return [wa, wb] + [zero] * (HISTORY - 2)


def calibrated(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, base_order=3, deltas=None,
               shifts=None):
    """Run the calibrated multistep solver. ``deltas``: per step, up to K weight offsets (shape
    (steps, k) with 1 <= k <= K; missing columns are zero), or None."""
    if base_order not in (1, 2, 3, 4):
        raise ValueError(f"base_order must be 1, 2, 3 or 4, got {base_order!r}")
    n = len(sigmas) - 1
    if deltas is not None:
        deltas = torch.as_tensor(deltas, dtype=sigmas.dtype, device=sigmas.device)
        if deltas.dim() != 2 or deltas.shape[0] != n or not 1 <= deltas.shape[1] <= HISTORY:
            raise ValueError(f"deltas must have shape ({n}, k) with 1 <= k <= {HISTORY} for {n} steps, "
                             f"got {tuple(deltas.shape)}")
        deltas = torch.cat([deltas, deltas.new_zeros(n, HISTORY - deltas.shape[1])], 1)
    if shifts is not None:
        shifts = torch.as_tensor(shifts, dtype=sigmas.dtype, device=sigmas.device)
        if shifts.shape != (n,):
            raise ValueError(f"shifts must have shape ({n},) for {n} steps, got {tuple(shifts.shape)}")
    extra = extra or {}
    hist = []  # past denoiser outputs, newest first
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s if shifts is None else s * torch.exp(shifts[i]), **extra)
        report(callback, i, x, s, s_next, den)
        hist = [den] + hist[:HISTORY]
        ratio = s_next / s
        x_next = ratio * x + (1 - ratio) * den
        w = base_weights(sigmas, i, base_order)
        for j in range(1, len(hist)):
            wj = w[j - 1] + (deltas[i, j - 1] if deltas is not None else 0.0)
            x_next = x_next + wj * (den - hist[j])
        x = x_next
    return x
