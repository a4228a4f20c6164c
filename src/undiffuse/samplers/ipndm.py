"""iPNDM: improved pseudo numerical methods (Zhang & Chen 2023, "DEIS", Sec. 4 / App.;
Liu et al. 2022 "PNDM").

Adams-Bashforth in the probability-flow ODE's derivative d = (x - D)/sigma with the fixed
equal-step coefficients up to fourth order and a lower-order warm start instead of PNDM's
Runge-Kutta start, so every step costs exactly one evaluation. ``variable=True`` uses the
exact variable-step Adams-Bashforth weights instead (the same rule as ``lms``) -- the
"iPNDM-v" variant.
"""
from __future__ import annotations

from ._common import call, report, to_d
from .lms import lms

# Adams-Bashforth weights for equal steps, newest derivative first.
_AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ipndm(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, order=4, variable=False):
    if order not in _AB:
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order}")
    if variable:
        return lms(denoiser, x, sigmas, generator=generator, callback=callback, extra=extra, order=order)
    extra = extra or {}
    ds = []
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s, **extra)
        report(callback, i, x, s, s_next, den)
        ds = ([to_d(x, s, den)] + ds)[:order]
        coef = _AB[len(ds)]
        x = x + (s_next - s) * sum(c * d for c, d in zip(coef, ds))
    return x
