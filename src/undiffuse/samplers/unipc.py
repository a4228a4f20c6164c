"""UniPC: unified predictor-corrector multistep sampler (Zhao et al. 2023, "UniPC: A Unified
Predictor-Corrector Framework for Fast Sampling of Diffusion Models"), data-prediction form.

With lambda = -log(sigma) and h = lambda_next - lambda, the exact step of the probability-flow
ODE dx/dlambda = D - x in the rescaled space is (as in ``dpmpp.py``)

    x_next = e^{-h} x + (1 - e^{-h}) D_0 + int_0^h e^{-(h-u)} (D(lambda + u) - D_0) du.

UniPC replaces the last integral by ``B(h) * sum_k a_k (D_k - D_0) / r_k`` over a few other
points with known denoiser outputs D_k at lambda + r_k h (paper eq. 8 for UniP, eq. 6 for
UniC). Taylor-expanding D and asking the sum to match the integral term by term gives the
order conditions (paper Theorem 3.1, ``R_p(h) a_p = g_p(h) / B(h)``):

    sum_k a_k r_k^(j-1) = g_j / B(h),   g_j = j! h phi_{j+1}(-h) = h^-j int_0^h e^{-(h-u)} u^j du,

for j = 1 .. (number of points), with phi_1(z) = (e^z - 1)/z, phi_{k+1}(z) = (phi_k(z) - 1/k!)/z.
B(h) is ``h`` ("bh1") or ``1 - e^{-h}`` ("bh2"); any B(h) = O(h) works. With a single point
the paper (and its reference code) takes a = 1/2 instead of solving, and that choice is the
only place where bh1 and bh2 differ (with a square system B(h) cancels).

* UniP-p (predictor) steps from the current point using the current output and the p - 1
  previous ones (r_k < 0); it is order p.
* UniC-p (corrector) redoes the step just taken once D at the new point is known, using the
  previous outputs plus the new one (r = 1); it raises the order to p + 1 at no extra
  evaluation, because that D is needed for the next predictor anyway. The corrected x
  replaces the predicted one; the stored D stays the one evaluated at the prediction.

Step i: evaluate D at x_i; correct x_i (unless i = 0 or i - 1 is in ``disable_corrector``)
with the order of the predictor that produced it; then predict x_{i+1} with order
min(order, i + 1) (warm-up), also capped at n - i with ``lower_order_final`` (the schedule of
diffusers' UniPCMultistepScheduler). The step into sigma = 0 returns the denoised estimate, so
the last corrected point is not used by the output and no evaluation is spent at sigma = 0.
"""
from __future__ import annotations

import math

import torch

from ._common import call, report

VARIANTS = ("bh1", "bh2")


def _lam(sigma):
    return -torch.log(sigma)


def _g(h, n: int) -> list:
    """g_j = j! h phi_{j+1}(-h) for j = 1..n (the right-hand sides of the order conditions).

    The phi recursion loses about eps / h^n relative precision: 1e-7 at h = 1e-3 in float64.
    """
    phi = -torch.expm1(-h) / h  # phi_1(-h)
    out = []
    for j in range(1, n + 1):
        phi = (phi - 1 / math.factorial(j)) / (-h)  # phi_{j+1}(-h)
        out.append(math.factorial(j) * h * phi)
    return out


def _uni_step(x, s, s_next, d0, points, variant):
    """One UniP/UniC update from (x, s) with D_0 = d0 to s_next; ``points`` is a list of
    (lambda_k, D_k) at the other nodes used for the higher-order terms."""
    lam0 = _lam(s)
    h = _lam(s_next) - lam0
    one_minus_e = -torch.expm1(-h)  # 1 - e^{-h}
    x_next = (s_next / s) * x + one_minus_e * d0
    if not points:
        return x_next
    bh = one_minus_e if variant == "bh2" else h  # B(h)
    r = [(lam_k - lam0) / h for lam_k, _ in points]
    if len(points) == 1:
        a = [0.5]
    else:
        vander = torch.stack([torch.stack([rk**j for rk in r]) for j in range(len(r))])
        a = torch.linalg.solve(vander, torch.stack(_g(h, len(r))) / bh)
    return x_next + bh * sum(a[k] * (d_k - d0) / r[k] for k, (_, d_k) in enumerate(points))


def unipc(denoiser, x, sigmas, *, generator=None, callback=None, extra=None, order=2, variant="bh2",
          lower_order_final=True, disable_corrector=()):
    """UniPC with predictor order ``order`` (1, 2 or 3) and the matching corrector, one
    evaluation per step; the deterministic convergence order is ``order + 1``.

    ``variant`` picks B(h): "bh1" (h) or "bh2" (e^h - 1 in the paper's signed h, i.e.
    1 - e^{-h} here). ``disable_corrector`` lists step indices whose predicted point is not
    corrected. The callback sees the corrected x of each step and D at the predicted one.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    extra = extra or {}
    skip = {int(i) for i in disable_corrector}
    n = len(sigmas) - 1
    hist = []  # (lambda, D) of previous steps, newest last
    x_last = p_last = None  # start of the previous step and the order of its predictor
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = call(denoiser, x, s, **extra)
        if i > 0 and i - 1 not in skip:  # UniC-p on the step from sigmas[i-1] just taken
            older = hist[-p_last:-1] if p_last > 1 else []
            x = _uni_step(x_last, sigmas[i - 1], s, hist[-1][1], older + [(_lam(s), den)], variant)
        report(callback, i, x, s, s_next, den)
        hist = (hist + [(_lam(s), den)])[-3:]
        if s_next == 0:
            x = den
            continue
        p = min(order, i + 1, n - i if lower_order_final else order)
        x_last, p_last = x, p
        x = _uni_step(x, s, s_next, den, hist[-p:-1] if p > 1 else [], variant)
    return x
