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
"""
from __future__ import annotations

import torch

from ._common import call, randn_like, report


def _lam(sigma):
    return -torch.log(sigma)


def _orders(n: int, max_order: int, lower_order_final: bool) -> list[int]:
    """Order used at each of n steps: warm-up from 1, first order into sigma = 0, and (as
    DPM-Solver advises for fewer than 15 steps) at most second order just before it."""
    orders = [min(max_order, i + 1) for i in range(n)]
    orders[-1] = 1
    if lower_order_final and n < 15 and n >= 2:
        orders[-2] = min(orders[-2], 2)
    return orders


def _multistep(denoiser, x, sigmas, *, order, generator, callback, extra, lower_order_final,
               diffusers_third_order=False):
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
                # 2M: D' taken at the midpoint, integrated with the first-order weight
                # (DPM-Solver++(2M): x += (1 - e^{-h}) * h / 2 * D')
                x_next = x_next + i0 * (h / 2) * f01
            else:
                h1 = hist_lam[-2] - hist_lam[-3]
                f12 = (hist_d[-2] - hist_d[-3]) / h1
                f012 = (f01 - f12) / (h0 + h1)  # = D''/2 for a quadratic
                d1 = f01 + h0 * f012  # D'(lambda) of the interpolating quadratic
                i1 = h - 1 + e
                i2 = h**2 / 2 - h + 1 - e
                d2 = f012 if diffusers_third_order else 2 * f012
                x_next = x_next + i1 * d1 + i2 * d2
        x = x_next
    return x


def dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, lower_order_final=True):
    """DPM-Solver++(2M), second order, one evaluation per step."""
    return _multistep(denoiser, x, sigmas, order=2, generator=generator, callback=callback, extra=extra,
                      lower_order_final=lower_order_final)


def dpmpp_3m(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, lower_order_final=True,
             diffusers_third_order=False):
    """DPM-Solver++(3M), third order, one evaluation per step.

    ``diffusers_third_order=True`` reproduces diffusers' (and the reference code's) weight on
    the second-derivative term, which is half the Taylor value; see BENCHMARKS.md for what
    that does to the convergence order.
    """
    return _multistep(denoiser, x, sigmas, order=3, generator=generator, callback=callback, extra=extra,
                      lower_order_final=lower_order_final, diffusers_third_order=diffusers_third_order)


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
