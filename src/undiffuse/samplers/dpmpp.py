"""DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and its
third-order and SDE variants).

Write lambda = -log(sigma) (half the log-SNR) and h = lambda_next - lambda. In the rescaled
space the probability-flow ODE is dx/dlambda = D - x, whose exact solution over one step is

    x_next = e^{-h} x + int_0^h e^{-(h-u)} D(lambda + u) du.

Expanding D in a Taylor series around the current point and integrating each term exactly
gives the coefficients below (phi-functions of the exponential integrator):

    int e^{-(h-u)} du          = 1 - e^{-h}
    int e^{-(h-u)} u du        = h - 1 + e^{-h}
    int e^{-(h-u)} u^2/2 du    = h^2/2 - h + 1 - e^{-h}

The derivatives of D in lambda are estimated from previous denoiser outputs (Newton divided
differences), so each step costs one evaluation. The step into sigma = 0 (h = inf) is always
first order: it returns the denoised estimate.

DPM-Solver++(3M) as published in code (Lu et al.'s ``multistep_dpm_solver_third_update``,
k-diffusion, diffusers) weighs the second divided difference f012 (= D''/2) by the last
integral above, i.e. half its Taylor value; ``dpmpp_3m`` follows them and ``dpmpp_3m_taylor``
uses the Taylor value.
"""
from __future__ import annotations

import torch

from ._common import call, randn_like, report


def _lam(sigma):
    return -torch.log(sigma)


def _orders(n: int, max_order: int, lower_order_final: bool) -> list[int]:
    """Order used at each of n steps: warm-up from 1, first order into sigma = 0, and with
    ``lower_order_final`` (diffusers' default; DPM-Solver's advice for fewer than 15 steps) at
    most second order just before it."""
    orders = [min(max_order, i + 1) for i in range(n)]
    orders[-1] = 1
    if lower_order_final and n < 15 and n >= 2:
        orders[-2] = min(orders[-2], 2)
    return orders


_SECOND_ORDER = ("taylor", "midpoint")


def _multistep(denoiser, x, sigmas, *, order, callback, extra, lower_order_final, second_order="midpoint",
               d2_taylor=False):
    """DPM-Solver++ multistep of the given order. ``second_order``: how a two-point step weighs
    the slope f01 (``"midpoint"``: (1 - e^{-h}) h / 2, ``"taylor"``: h - 1 + e^{-h}, the exact
    integral of the linear term); ``d2_taylor``: weigh the second divided difference f012 = D''/2
    by 2 (its Taylor value) instead of 1 (the reference implementations' value)."""
    if second_order not in _SECOND_ORDER:
        raise ValueError(f"second_order must be one of {', '.join(_SECOND_ORDER)}, got {second_order!r}")
    extra = extra or {}
    n = len(sigmas) - 1
    orders = _orders(n, order, lower_order_final)
    hist_d, hist_lam = [], []  # previous denoised outputs and their lambdas (newest last)
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s, **extra)
        report(callback, i, x, s, s_next, den)
        hist_d, hist_lam = (hist_d + [den])[-3:], (hist_lam + [_lam(s)])[-3:]
        if s_next == 0:
            x = den
            continue
        h = _lam(s_next) - _lam(s)
        e = torch.exp(-h)
        i0 = -torch.expm1(-h)  # 1 - e^{-h}
        x_next = (s_next / s) * x + i0 * den
        k = orders[i]
        if k >= 2:
            # first divided difference (slope of D in lambda) between the last two points
            h0 = hist_lam[-1] - hist_lam[-2]
            f01 = (hist_d[-1] - hist_d[-2]) / h0
            if k == 2:
                # midpoint: D' taken at the midpoint, integrated with the first-order weight
                # (DPM-Solver++(2M): x += (1 - e^{-h}) * h / 2 * D'); taylor: int e^{-(h-u)} u du * D'
                w1 = i0 * (h / 2) if second_order == "midpoint" else h - 1 + e
                x_next = x_next + w1 * f01
            else:
                h1 = hist_lam[-2] - hist_lam[-3]
                f12 = (hist_d[-2] - hist_d[-3]) / h1
                f012 = (f01 - f12) / (h0 + h1)  # = D''/2 for a quadratic
                d1 = f01 + h0 * f012  # D'(lambda) of the interpolating quadratic
                i1 = h - 1 + e
                i2 = h**2 / 2 - h + 1 - e
                d2 = 2 * f012 if d2_taylor else f012
                x_next = x_next + i1 * d1 + i2 * d2
        x = x_next
    return x


def dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, lower_order_final=True):
    """DPM-Solver++(2M), second order, one evaluation per step (k-diffusion's and diffusers'
    ``dpmpp_2m`` to rounding; ``lower_order_final`` has no effect at order 2)."""
    return _multistep(denoiser, x, sigmas, order=2, callback=callback, extra=extra,
                      lower_order_final=lower_order_final)


def dpmpp_3m(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, lower_order_final=False,
             second_order="taylor"):
    """DPM-Solver++(3M) as k-diffusion, diffusers and the authors' code define it: one evaluation
    per step, the quadratic through the last three denoiser outputs with its second divided
    difference weighed by i2 = h^2/2 - h + 1 - e^{-h} (half the Taylor value, the
    ``multistep_dpm_solver_third_update`` of Lu et al.'s code). So its local error has an h^3
    term and it converges at order 2 (2.5 measured on tests/test_samplers.py's mixture), yet it
    is the more accurate of the two at few steps on the benchmark mixture (BENCHMARKS.md).

    Defaults give k-diffusion's ``sample_dpmpp_3m_sde(eta=0)`` to 1e-10 (tests/test_kdiffusion_crosscheck.py).
    ``second_order="midpoint"`` and ``lower_order_final=True`` give diffusers'
    ``DPMSolverMultistepScheduler(solver_order=3)`` with its defaults (``solver_type="midpoint"``,
    order 2 before the last step below 15 steps); diffusers' ``solver_type="heun"`` is ``"taylor"``.
    For the truly third-order method use ``dpmpp_3m_taylor``.
    """
    return _multistep(denoiser, x, sigmas, order=3, callback=callback, extra=extra,
                      lower_order_final=lower_order_final, second_order=second_order)


def dpmpp_3m_taylor(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, lower_order_final=True,
                    second_order="midpoint"):
    """DPM-Solver++(3M) with the full Taylor weight on the second divided difference (2 * i2 * f012,
    exact for a quadratic D), so truly third order (3.1 measured, against 2.5 for ``dpmpp_3m``),
    though less accurate than ``dpmpp_3m`` at 10 and 20 steps on the benchmark mixture
    (BENCHMARKS.md). Its defaults (midpoint warm-up step, order 2 before the last step below 15
    steps) are undiffuse's ``dpmpp_3m`` before it was made to match the reference, so they give
    the same images; ``calibrated`` with ``base_order=3`` and no offsets is this solver with
    ``lower_order_final=False``.
    """
    return _multistep(denoiser, x, sigmas, order=3, callback=callback, extra=extra,
                      lower_order_final=lower_order_final, second_order=second_order, d2_taylor=True)


def dpmpp_2m_sde(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, eta=1.0, s_noise=1.0):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, eq. 19) with k-diffusion's eta generalisation:
    eta = 0 is the ODE solver, eta = 1 the reverse SDE. Midpoint form of the second-order term.
    """
    extra = extra or {}
    prev_den, prev_h = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s, **extra)
        report(callback, i, x, s, s_next, den)
        if s_next == 0:
            x = den
            continue
        h = _lam(s_next) - _lam(s)
        eh = eta * h
        w = -torch.expm1(-h - eh)  # 1 - e^{-(1+eta) h}
        x = (s_next / s) * torch.exp(-eh) * x + w * den
        if prev_den is not None:
            r = prev_h / h
            x = x + 0.5 * w * (den - prev_den) / r
        if eta > 0:
            x = x + randn_like(x, generator) * (s_next * (-torch.expm1(-2 * eh)).sqrt() * s_noise)
        prev_den, prev_h = den, h
    return x
