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

from ._common import axpy, levels, per_step, randn_like, report


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


def _multistep_weights(sigmas, orders, second_order: str, d2_taylor: bool) -> list[tuple]:
    """Per step, (r, c0, c1, c2) with x_next = r x + c0 D_i + c1 D_{i-1} + c2 D_{i-2}: the step's
    DPM-Solver++ update written on the denoiser outputs themselves, computed for all steps at
    once (r = None: the step into sigma = 0, x_next = D_i).

    With h0 = lambda_i - lambda_{i-1}, h1 = lambda_{i-1} - lambda_{i-2} and the divided differences
    f01 = (D_i - D_{i-1}) / h0, f12 = (D_{i-1} - D_{i-2}) / h1, f012 = (f01 - f12) / (h0 + h1):

    * order 1: x_next = r x + i0 D_i, with r = sigma_next / sigma = e^{-h}, i0 = 1 - e^{-h};
    * order 2: + w1 f01, w1 = i0 h / 2 (``"midpoint"``: D' at the midpoint, DPM-Solver++(2M)) or
      h - 1 + e^{-h} (``"taylor"``: the exact integral of the linear term);
    * order 3: + i1 (f01 + h0 f012) + q i2 f012 (the quadratic's D' at lambda_i and D''/2 = f012),
      q = 1 (the reference implementations) or 2 (``d2_taylor``: the Taylor value).
    """
    n = len(sigmas) - 1
    m = int((sigmas[1:] > 0).sum())  # steps that land on a positive sigma (all but the last, usually)
    pad = sigmas.new_ones(2)  # h0, h1 before the first steps (never used there: finite, so no NaN gradients)
    lam = -torch.log(sigmas[: m + 1])
    h = lam[1:] - lam[:-1]
    h0, h1 = torch.cat([pad[:1], h])[:m], torch.cat([pad, h])[:m]
    r = sigmas[1: m + 1] / sigmas[:m]
    e = torch.exp(-h)
    i0, i1 = -torch.expm1(-h), h - 1 + e
    i2 = h**2 / 2 - h + 1 - e
    k = torch.tensor(orders[:m], device=sigmas.device)
    zero = torch.zeros_like(h)
    w1 = torch.where(k == 2, i0 * (h / 2) if second_order == "midpoint" else i1, i1)  # weight on f01
    g = torch.where(k == 3, i1 * h0 + (2 if d2_taylor else 1) * i2, zero)  # weight on f012
    g = g / (h0 + h1)
    w1 = torch.where(k >= 2, w1, zero)
    c0 = i0 + w1 / h0 + g / h0
    c1 = -w1 / h0 - g * (1 / h0 + 1 / h1)
    c2 = g / h1
    return per_step(r, c0, c1, c2) + [(None, None, None, None)] * (n - m)


def _multistep(denoiser, x, sigmas, *, order, callback, extra, lower_order_final, second_order="midpoint",
               d2_taylor=False):
    """DPM-Solver++ multistep of the given order (see ``_multistep_weights`` for the update)."""
    if second_order not in _SECOND_ORDER:
        raise ValueError(f"second_order must be one of {', '.join(_SECOND_ORDER)}, got {second_order!r}")
    extra = extra or {}
    n = len(sigmas) - 1
    weights = _multistep_weights(sigmas, _orders(n, order, lower_order_final), second_order, d2_taylor)
    sig, sv = levels(sigmas, x), sigmas.tolist()
    hist = []  # denoiser outputs, newest first
    for i in range(n):
        den = denoiser(x, sig[i], **extra)
        report(callback, i, x, sv[i], sv[i + 1], den)
        hist = [den] + hist[:2]
        r, *c = weights[i]
        if r is None:
            x = den
            continue
        x = x * r
        for cj, dj in zip(c, hist):
            if not (isinstance(cj, float) and cj == 0.0):  # (order 1 and 2 steps leave c2, c1 at 0)
                x = axpy(x, cj, dj)
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
    eta = 0 is the ODE solver, eta = 1 the reverse SDE. Midpoint form of the second-order term:

        x_next = (sigma_next / sigma) e^{-eta h} x + w D_i + (w / 2r) (D_i - D_{i-1}) + sigma_next sqrt(1 - e^{-2 eta h}) z

    with w = 1 - e^{-(1 + eta) h} and r = h_{i-1} / h; the coefficients are computed for all steps at once.
    """
    extra = extra or {}
    n = len(sigmas) - 1
    m = int((sigmas[1:] > 0).sum())
    h = torch.log(sigmas[:m]) - torch.log(sigmas[1: m + 1])
    eh = eta * h
    a = (sigmas[1: m + 1] / sigmas[:m]) * torch.exp(-eh)
    w = -torch.expm1(-h - eh)  # 1 - e^{-(1+eta) h}
    half = torch.cat([torch.zeros_like(w[:1]), 0.5 * w[1:] * h[1:] / h[:-1]])  # w / 2r, none at the first step
    noise = sigmas[1: m + 1] * (-torch.expm1(-2 * eh)).sqrt() * s_noise
    weights = per_step(a, w + half, -half, noise)
    sig, sv = levels(sigmas, x), sigmas.tolist()
    prev_den = None
    for i in range(n):
        den = denoiser(x, sig[i], **extra)
        report(callback, i, x, sv[i], sv[i + 1], den)
        if i >= m:  # into sigma = 0
            x = den
            continue
        a_i, c0, c1, b = weights[i]
        x = axpy(x * a_i, c0, den)
        if prev_den is not None:
            x = axpy(x, c1, prev_den)
        if eta > 0:
            x = axpy(x, b, randn_like(x, generator))
        prev_den = den
    return x
