"""iPNDM: improved pseudo numerical methods (Zhang & Chen 2023, "DEIS", Sec. 4 / App.;
Liu et al. 2022 "PNDM").

Adams-Bashforth in the probability-flow ODE's derivative d = (x - D)/sigma with the fixed
equal-step coefficients up to fourth order and a lower-order warm start instead of PNDM's
Runge-Kutta start, so every step costs exactly one evaluation. ``variable=True`` uses the
exact variable-step Adams-Bashforth weights instead (the same rule as ``lms``) -- the
"iPNDM-v" variant.

``deltas`` (per step, k numbers) add learned corrections sum_j delta_ij (d_i - d_{i-j}), j = 1..k,
to the averaged derivative; they vanish for a constant derivative, so every step stays
consistent whatever their values. k may exceed ``order - 1`` (up to ``steps - 1``: every
previous derivative, the learned-solver-coefficients form of LD3 / S4S-style solvers); the
Adams-Bashforth part still uses ``order`` derivatives. ``shifts`` evaluate the denoiser at ``s_i * exp(shift_i)``.
Both are fitted by ``undiffuse.fewstep.calibrate`` (zero gives iPNDM back); see ``samplers.calibrated``.
"""
from __future__ import annotations

import torch

from ._common import call, report, to_d
from .lms import lms

# Adams-Bashforth weights for equal steps, newest derivative first.
_AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ipndm(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, order=4, variable=False, deltas=None,
          shifts=None):
    if order not in _AB:
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order}")
    n = len(sigmas) - 1
    if variable:
        if deltas is not None or shifts is not None:
            raise ValueError("deltas and shifts need variable=False")
        return lms(denoiser, x, sigmas, generator=generator, callback=callback, extra=extra, order=order)
    if deltas is not None:
        deltas = torch.as_tensor(deltas, dtype=sigmas.dtype, device=sigmas.device)
        most = max(n - 1, order - 1, 1)  # every earlier derivative (or, as before, order - 1)
        if deltas.dim() != 2 or deltas.shape[0] != n or not 1 <= deltas.shape[1] <= most:
            raise ValueError(f"deltas must have shape ({n}, k) with 1 <= k <= {most} for {n} steps, "
                             f"got {tuple(deltas.shape)}")
    if shifts is not None:
        shifts = torch.as_tensor(shifts, dtype=sigmas.dtype, device=sigmas.device)
        if shifts.shape != (n,):
            raise ValueError(f"shifts must have shape ({n},) for {n} steps, got {tuple(shifts.shape)}")
    extra = extra or {}
    keep = order if deltas is None else max(order, deltas.shape[1] + 1)  # derivatives kept, newest first
    ds = []
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s if shifts is None else s * torch.exp(shifts[i]), **extra)
        report(callback, i, x, s, s_next, den)
        ds = ([to_d(x, s, den)] + ds)[:keep]
        coef = _AB[min(len(ds), order)]
        d = ds[0] * coef[0]
        for c, dj in zip(coef[1:], ds[1:]):
            d = torch.add(d, dj, alpha=c)  # one fused kernel per term
        if deltas is not None:
            for j in range(1, min(len(ds), deltas.shape[1] + 1)):
                d = d + deltas[i, j - 1] * (ds[0] - ds[j])
        x = x + (s_next - s) * d
    return x
