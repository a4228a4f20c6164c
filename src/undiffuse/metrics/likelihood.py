"""Likelihoods of diffusion models: the probability-flow ODE log-density, the DDPM variational
bound, and the bits/dim bookkeeping for discrete (8-bit) data.

Convention (see ``precond.py``): a model is a denoiser ``D(x, sigma) -> x0`` in the rescaled
space ``x = x0 + sigma * eps``. Its probability-flow ODE is (Karras et al. 2022, eq. 1 with the
score of eq. 3, ``grad log p = (D - x) / sigma^2``; ``s(t) = 1``, ``sigma(t) = t``)

    dx/dsigma = f(x, sigma) = (x - D(x, sigma)) / sigma.

**ODE log-likelihood** (Song et al. 2021, "Score-based generative modeling through SDEs",
Sec. 4.3 and Appendix D.2; Chen et al. 2018, "Neural ODEs", Theorem 1, the instantaneous
change of variables ``d log p(x(t)) / dt = -tr(df/dx)``). Along an ODE trajectory,

    log p_{sigma_min}(x(sigma_min)) = log p_{sigma_max}(x(sigma_max)) + int_{sigma_min}^{sigma_max} tr(df/dx) dsigma.

We integrate in ``s = log sigma`` (smooth and well scaled, as ``analytic.ode_solution`` does):

    dx/ds = x - D(x, e^s),        dL/ds = tr(d(x - D)/dx) = dim - tr(dD/dx),

from ``s = log sigma_min`` with ``x = x0`` (the data point itself, no noise added) and ``L = 0``
up to ``log sigma_max``, and return ``log p(x0) = log N(x(sigma_max); 0, sigma_max^2 I) + L``.

What that number is, precisely:

* It is the log-density, at ``x0``, of the model's marginal at ``sigma_min``: for a perfect
  model, the data convolved with ``N(0, sigma_min^2 I)``, i.e. for data ``N(mu, C)`` exactly
  ``log N(x0; mu, C + sigma_min^2 I)``. It approximates the data density when ``sigma_min`` is
  small against the data's finest scale (Song et al. use t = 1e-5 for the same reason). The
  start needs ``sigma_min > 0``: the drift ``(x - D)/sigma`` has no limit at sigma = 0.
* The prior ``N(0, sigma_max^2 I)`` replaces the true ``p_{sigma_max} = p_data * N(0, sigma_max^2 I)``.
  For data ``N(mu, C)`` the ODE ends at ``x = mu + (C + sigma_max^2 I)^{1/2} z`` with
  ``z = (C + sigma_min^2 I)^{-1/2} (x0 - mu)``, and the error in ``log p`` is
  ``-mu . z / sigma_max + (tr C - z^T C z - |mu|^2) / (2 sigma_max^2) + O(sigma_max^-3)`` nats:
  first order in ``|mu| / sigma_max``. So ``sigma_max`` must be large against the data's mean
  (measured: dim 2..8, |mu| ~ 1-2, sigma_max = 100 gives 6e-3..9e-3 bits/dim, 1e4 gives 1e-4), or the
  data centred. Integrating in log sigma, a larger ``sigma_max`` costs only a few steps more.
* ``divergence``: ``"exact"`` computes ``tr(dD/dx)`` with one backward pass per dimension
  (cheap for small ``dim``); ``"hutchinson"`` uses ``E[v^T (dD/dx) v] = tr(dD/dx)`` with
  Rademacher or Gaussian probes ``v`` (Hutchinson 1989; Grathwohl et al. 2019, "FFJORD",
  Sec. 3.1; Song et al. 2021, Appendix D.2), drawn once per data point and held fixed over the whole
  solve, so the result is an unbiased estimate of the exact ODE log-likelihood (not of its
  log). ``"auto"`` = exact if ``dim <= 64``. The identity part of ``tr(d(x - D)/dx)`` is exact
  in both cases; only ``tr(dD/dx)`` is estimated. Rademacher probes (the default) have the
  smaller variance, ``2 sum_{i != j} M_ij^2`` against ``2 |M|_F^2`` for Gaussian ones (``M`` the
  integrated Jacobian; ``dD/dx ~ I`` at low noise makes its diagonal large): measured on a 6-D
  Gaussian, a standard deviation of 1.4 nats against 15 per single-probe solve.
* The denoiser is called with gradients enabled; put networks in eval mode (no dropout).
  Parameter gradients are not accumulated (only gradients with respect to ``x`` are taken).
* Batch elements must be independent under the denoiser (no batch statistics): the Jacobian
  trace is read off per-sample gradients of batch sums.

Processes with ``alpha != 1`` (VP, flow). The rescaled space is the data's own space (``x =
x0`` at sigma = 0), so ``space="rescaled"`` (default) needs no correction. The process's own
variable at the start is ``x_t = alpha(sigma_min) * x``; with ``space="process"`` we report,
as Song et al.'s VP code does (it starts the ODE at ``x_t = data``), the log-density of ``x_t``
at the data point: start at ``x = x0 / alpha`` and add ``-dim * log alpha(sigma_min)``
(change of variables ``p_{x_t}(y) = p_x(y / alpha) / alpha^dim``). Since ``alpha(sigma_min) ~
1 - sigma_min^2 / 2`` the two differ by O(dim * sigma_min^2) nats.

**Bits per dimension** for data quantised into bins of width ``w`` in model space (8-bit
images in this repo: ``x = 2 u / 255 - 1``, ``u = 0..255``, so ``w = 2/255``). Uniform
dequantisation (Theis et al. 2016; Uria et al. 2013; Ho et al. 2020 Sec. 4.2 / Song et al.
2021 Appendix D.2): with ``v ~ U[-1/2, 1/2)^dim`` and ``y = u + v``, any density ``p_x`` on
the model space gives the discrete model ``P(u) = int_{bin(u)} p_x``; since ``x = w y - 1``,
``p_y(y) = w^dim p_x(x)`` and by Jensen

    -log2 P(u) <= E_v[-log2 p_y(u + v)] = E_v[-log2 p_x(x)] - dim * log2 w,

so ``bpd = -log p_x(x) / (dim ln 2) - log2 w``, i.e. ``+ log2(127.5) = +6.994`` for ``w = 2/255``
(``+ 7`` for the ``2 (u + v) / 256 - 1`` convention of Song et al., ``w = 2/256``). Check: a
density uniform on the dequantised cube ``[-1 - w/2, 1 + w/2]^dim`` has
``-log p_x = dim * log(256 w)``, giving exactly 8 bits/dim.

**DDPM variational bound** (Sohl-Dickstein et al. 2015; Ho et al. 2020, eqs. 5-7 and 13;
Nichol & Dhariwal 2021, Sec. 2 "L_vlb"): ``L = L_T + sum_{t=2}^T L_{t-1} + L_0`` with
``L_T = KL(q(x_T|x_0) || N(0, I))``, ``L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t))``
at one sample ``x_t ~ q(x_t|x_0)`` per step, and ``L_0 = -log p(x_0|x_1)``, the discretised
Gaussian decoder of Ho et al. eq. 13 for 8-bit data (or a Gaussian density for continuous
data). ``p(x_{t-1}|x_t) = N(mu_tilde(x0_hat, x_t), sigma_t^2 I)`` with ``x0_hat`` from the model
(Ho et al. eq. 7 posterior mean with x0 replaced by the prediction) and fixed variance
``sigma_t^2 = beta_tilde_t`` ("small") or ``beta_t`` ("large"); as in Nichol & Dhariwal's code
the decoder (t = 1) uses ``beta_tilde_2`` for both, since ``beta_tilde_1 = 0``. A tensor of T
per-step variances (index 0 = the decoder's) can be passed instead, e.g. learned (Nichol &
Dhariwal 2021) or optimal (Bao et al. 2022, "Analytic-DPM") ones.

With fixed variances the bound is loose even for the exact denoiser: the true reverse kernel
at low noise is wider than ``beta_tilde_t`` (its variance is ``beta_tilde_t + c_t^2 Var[x0 |
x_t]``), and the first steps of a schedule with constant small betas each cost O(1) nats
however large T is. Measured on 4-D Gaussians with the exact denoiser and a Gaussian decoder:
``E[L] - H(data)`` is about 0.8 bits/dim at T = 1000 ("small"), 0.17-0.19 ("large"), 1e-4 to
3e-4 with the optimal isotropic variances ``beta_tilde_t + c_t^2 E|x0 - x0_hat|^2 / dim``
(Bao et al. 2022; ``c_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from undiffuse.core.process import NoiseProcess, VPDiscrete
from undiffuse.core.types import denoiser_info

Tensor = torch.Tensor

#: width of one 8-bit intensity bin in model space for the map x = 2 u / 255 - 1 (u = 0..255)
BIN_WIDTH_8BIT = 2.0 / 255.0
#: largest dimension for which ``divergence="auto"`` picks the exact trace
EXACT_MAX_DIM = 64

DIVERGENCES = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
METHODS = ("RK45", "DOP853")
SPACES = ("rescaled", "process")
VARIANCES = ("small", "large")
DECODERS = ("discretized", "gaussian")
PREDICTIONS = ("denoiser", "eps")

_LN2 = math.log(2.0)


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def _batch(x0, name: str = "x0") -> Tensor:
    x0 = torch.as_tensor(x0)
    if not x0.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x0.dtype}")
    if x0.dim() < 2 or x0.shape[0] < 1 or x0[0].numel() < 1:
        raise ValueError(f"{name} must have shape (batch, ...) with at least one sample and one "
                         f"dimension, got {tuple(x0.shape)}")
    if not torch.isfinite(x0).all():
        raise ValueError(f"{name} has non-finite values")
    return x0.detach().to(torch.float64)


# --------------------------------------------------------------------------- bits per dim


def bits_per_dim(log_prob_nats, dim: int, *, bin_width: float | None = None) -> Tensor:
    """Convert log-densities (nats, per sample) into bits per dimension.

    Without ``bin_width``: the continuous ``-log p / (dim ln 2)``. With ``bin_width`` ``w`` (the
    model-space width of one quantisation bin, ``BIN_WIDTH_8BIT = 2/255`` for 8-bit data mapped
    by ``x = 2 u / 255 - 1``) and ``log_prob_nats`` measured at uniformly dequantised points
    (``dequantize``): the upper bound on the discrete negative log2-likelihood
    ``-log p / (dim ln 2) - log2 w`` (derivation in the module docstring).
    """
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    lp = torch.as_tensor(log_prob_nats, dtype=torch.float64)
    bpd = -lp / (dim * _LN2)
    if bin_width is not None:
        if not bin_width > 0:
            raise ValueError(f"bin_width must be positive, got {bin_width!r}")
        bpd = bpd - math.log2(bin_width)
    return bpd


def dequantize(x, generator: torch.Generator | None = None, *, bin_width: float = BIN_WIDTH_8BIT) -> Tensor:
    """Uniform dequantisation in model space: ``x + w * (U[0, 1) - 1/2)``.

    ``x`` is either integer levels ``u`` (e.g. uint8 0..255), mapped first to ``-1 + u * w``
    (``= 2 u / 255 - 1`` for the default ``w = 2/255``), or floats already on that grid. The
    noise fills each bin, centred on its grid point, so ``round((y + 1) / w)`` recovers ``u``.
    Integers come back as float64, floats in their own dtype.
    """
    if not bin_width > 0:
        raise ValueError(f"bin_width must be positive, got {bin_width!r}")
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        if x.dtype == torch.bool or (x < 0).any():
            raise ValueError("integer levels must be non-negative")
        x = -1.0 + x.to(torch.float64) * bin_width
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.dtype)
    return x + bin_width * (u - 0.5)


# --------------------------------------------------------------------------- ODE likelihood


def _probes(kind: str, shape, generator) -> Tensor:
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=torch.float64)
    return torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1


def ode_log_likelihood(denoiser, x0, *, sigma_min: float | None = None, sigma_max: float | None = None,
                       divergence: str = "auto", hutchinson_samples: int = 1, probe: str = "rademacher",
                       rtol: float = 1e-5, atol: float = 1e-5, generator: torch.Generator | None = None,
                       method: str = "RK45", space: str = "rescaled", bin_width: float | None = None,
                       cond: dict | None = None) -> dict:
    """Log-likelihood of data points under the probability-flow ODE of ``denoiser``.

    Solves the augmented ODE of the module docstring with ``scipy.integrate.solve_ivp`` (float64,
    all samples in one state vector, so one adaptive step size for the batch) from
    ``sigma_min`` (start at ``x = x0``) to ``sigma_max`` (prior ``N(0, sigma_max^2 I)``).

    Args:
        denoiser: ``D(x, sigma, **cond) -> x0`` with ``sigma`` a per-sample tensor of shape (B,),
            e.g. a ``precond.Denoiser`` or an ``analytic.GaussianMixture``. It must be
            differentiable in ``x`` and treat samples independently.
        x0: data points, shape (B, ...), in the model (rescaled = data) space.
        sigma_min, sigma_max: integration range; default to ``denoiser.sigma_min/sigma_max``.
        divergence: "exact", "hutchinson" or "auto" (exact if dim <= 64).
        hutchinson_samples: probes per data point (held fixed over the solve, averaged).
        probe: "rademacher" or "gaussian" Hutchinson probes.
        rtol, atol: solver tolerances (on the whole state, x and the log-density change).
        generator: torch generator for the probes.
        method: "RK45" or "DOP853".
        space: "rescaled" (default) or "process" (log-density of ``x_t = alpha(sigma_min) x`` at
            ``x0``; needs ``denoiser.process``; see the module docstring).
        bin_width: passed to ``bits_per_dim`` (None: continuous bits/dim).
        cond: extra keyword arguments for the denoiser (class labels, ...).

    Returns a dict: ``log_prob`` (B,) nats, ``bits_per_dim`` (B,), ``prior_log_prob`` (B,) and
    ``delta_log_prob`` (B,) (the two parts of log_prob), ``nfe`` (denoiser forward passes),
    ``backward_passes``, ``divergence`` ("exact" or "hutchinson"), ``sigma_min``, ``sigma_max``
    and ``x_end`` (the state at sigma_max).
    """
    from scipy.integrate import solve_ivp

    for name, value, allowed in (("divergence", divergence, DIVERGENCES), ("probe", probe, PROBES),
                                 ("method", method, METHODS), ("space", space, SPACES)):
        _choice(name, value, allowed)
    x0 = _batch(x0)
    cond = dict(cond or {})
    info = denoiser_info(denoiser, sigma_min=sigma_min, sigma_max=sigma_max)
    sigma_min, sigma_max = (float(s) for s in info.sigma_range("ode_log_likelihood"))
    _check_solve(sigma_min, sigma_max, hutchinson_samples, rtol, atol)

    shape = tuple(x0.shape)
    batch, dim = shape[0], int(np.prod(shape[1:]))
    n = batch * dim
    if divergence == "auto":
        divergence = "exact" if dim <= EXACT_MAX_DIM else "hutchinson"
    probes = None
    if divergence == "hutchinson":
        probes = _probes(probe, (int(hutchinson_samples),) + shape, generator)

    start, log_alpha = _start_point(x0, space, info.process, sigma_min)
    counts = {"nfe": 0, "backward": 0}

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        counts["nfe"] += 1
        sigma = torch.full((batch,), math.exp(s), dtype=torch.float64)
        with torch.enable_grad():
            x = torch.tensor(y[:n], dtype=torch.float64).reshape(shape).requires_grad_(True)
            d = denoiser(x, sigma, **cond)
            if tuple(d.shape) != shape:
                raise ValueError(f"denoiser returned shape {tuple(d.shape)} for input {shape}")
            d = d.to(torch.float64)
            tr = _trace_jacobian(x, d, probes, counts)
        dx = (x.detach() - d.detach()).reshape(-1)
        dlogp = dim - tr
        return torch.cat([dx, dlogp]).numpy()

    y0 = torch.cat([start.reshape(-1), torch.zeros(batch, dtype=torch.float64)]).numpy()
    s0, s1 = math.log(sigma_min), math.log(sigma_max)
    sol = solve_ivp(rhs, (s0, s1), y0, method=method, rtol=rtol, atol=atol, t_eval=[s1])
    if not sol.success:
        raise RuntimeError(f"likelihood ODE solve failed: {sol.message}")
    end = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1]))
    x_end, delta = end[:n].reshape(shape), end[n:]
    prior = (-0.5 * x_end.reshape(batch, dim).pow(2).sum(1) / sigma_max**2
             - dim * math.log(sigma_max) - 0.5 * dim * math.log(2 * math.pi))
    log_prob = prior + delta - dim * log_alpha
    return {"log_prob": log_prob, "bits_per_dim": bits_per_dim(log_prob, dim, bin_width=bin_width),
            "prior_log_prob": prior, "delta_log_prob": delta - dim * log_alpha,
            "nfe": counts["nfe"], "backward_passes": counts["backward"], "divergence": divergence,
            "sigma_min": sigma_min, "sigma_max": sigma_max, "x_end": x_end}


def _check_solve(sigma_min: float, sigma_max: float, hutchinson_samples, rtol: float, atol: float) -> None:
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min:g}, sigma_max={sigma_max:g}")
    if int(hutchinson_samples) != hutchinson_samples or hutchinson_samples < 1:
        raise ValueError(f"hutchinson_samples must be a positive integer, got {hutchinson_samples!r}")
    if not (rtol > 0 and atol > 0):
        raise ValueError("rtol and atol must be positive")


def _start_point(x0: Tensor, space: str, process, sigma_min: float) -> tuple[Tensor, float]:
    """Where the solve starts and ``log alpha(sigma_min)``: ``x0`` itself in the rescaled space;
    for ``space="process"`` the rescaled point of ``x_t = x0`` (module docstring)."""
    if space != "process":
        return x0, 0.0
    if not isinstance(process, NoiseProcess):
        raise ValueError('space="process" needs a denoiser with a .process (alpha_of_sigma)')
    log_alpha = float(torch.as_tensor(process.alpha_of_sigma(torch.tensor(sigma_min, dtype=torch.float64))).log())
    return x0 * math.exp(-log_alpha), log_alpha


def _trace_jacobian(x: Tensor, d: Tensor, probes: Tensor | None, counts: dict) -> Tensor:
    """tr(dD/dx) per sample: exact (one backward pass per dimension) without ``probes``, else
    Hutchinson's estimate averaged over the probes (one backward pass each); ``counts["backward"]``
    counts the passes."""
    batch, dim = x.shape[0], x[0].numel()
    if not d.requires_grad:  # D does not depend on x
        return torch.zeros(batch, dtype=torch.float64)
    if probes is None:
        flat = d.reshape(batch, dim)
        tr = torch.zeros(batch, dtype=torch.float64)
        for i in range(dim):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < dim - 1, allow_unused=True)
            if g is not None:
                tr += g.reshape(batch, dim)[:, i]
        counts["backward"] += dim
        return tr
    acc = torch.zeros(batch, dtype=torch.float64)
    k = probes.shape[0]
    for j in range(k):
        (g,) = torch.autograd.grad((d * probes[j]).sum(), x, retain_graph=j < k - 1, allow_unused=True)
        if g is not None:
            acc += (g * probes[j]).reshape(batch, dim).sum(1)
    counts["backward"] += k
    return acc / k


# --------------------------------------------------------------------------- DDPM bound


def _log_ndtr_diff(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a <= b, accurate in both tails (mirrored when a > 0)."""
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    lhi, llo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return lhi + torch.log(-torch.expm1(llo - lhi))


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, var, *, bin_width: float = BIN_WIDTH_8BIT,
                                  low: float = -1.0, high: float = 1.0) -> Tensor:
    """Element-wise log-probability of the bin around ``x`` under ``N(mean, var)`` (Ho et al. 2020,
    eq. 13): bins ``[x - w/2, x + w/2]``, the first and last extended to -inf and +inf, so the
    probabilities of the levels ``low, low + w, ..., high`` sum to one."""
    x = torch.as_tensor(x, dtype=torch.float64)
    mean = torch.as_tensor(mean, dtype=torch.float64)
    std = torch.as_tensor(var, dtype=torch.float64).sqrt()
    half, tol = bin_width / 2, bin_width / 4
    a = torch.where(x <= low + tol, torch.full_like(x, -math.inf), (x - half - mean) / std)
    b = torch.where(x >= high - tol, torch.full_like(x, math.inf), (x + half - mean) / std)
    return _log_ndtr_diff(a, b)


def ddpm_vlb(model, x0, process, *, prediction: str = "denoiser", variance: str | Tensor = "small",
             decoder: str = "discretized", bin_width: float = BIN_WIDTH_8BIT, clip_denoised: bool = False,
             generator: torch.Generator | None = None, cond: dict | None = None) -> dict:
    """The discrete-time variational bound ``L_vlb`` of a DDPM-style model, per data point.

    Terms (module docstring; Ho et al. 2020 eq. 5, Nichol & Dhariwal 2021 Sec. 2), with the
    process's 0-based table index ``i = t - 1``, ``abar = process.alphas_cumprod``:

    * ``prior``: ``L_T = KL(N(sqrt(abar_T) x0, (1 - abar_T) I) || N(0, I))``
      ``= 1/2 sum_d [abar_T (x0_d^2 - 1) - log(1 - abar_T)]`` (closed form, no sampling);
    * ``kl[:, t-2]`` for t = 2..T: ``KL(N(mu_q, beta_tilde_t) || N(mu_p, sigma_t^2))`` at one
      ``x_t ~ q(x_t | x0)``, ``mu_q - mu_p = sqrt(abar_{t-1}) beta_t / (1 - abar_t) (x0 - x0_hat)``
      (Ho et al. eq. 7);
    * ``decoder``: ``L_0 = -log p(x0 | x1)`` with mean ``x0_hat(x1)`` and variance ``beta_tilde_2``;
      ``"discretized"`` (8-bit data on the grid ``-1 + k * bin_width``; Ho et al. eq. 13) or
      ``"gaussian"`` (a density, for continuous data).

    Args:
        model: with ``prediction="denoiser"`` (default) a denoiser ``D(x, sigma, **cond)`` in the
            rescaled space, called at ``x = x_t / sqrt(abar_t)``, ``sigma = process.sigmas[i]``;
            with ``"eps"`` a raw DDPM network ``eps(x_t, i, **cond)`` taking the 0-based
            integer timestep (LongTensor of shape (B,)).
        x0: data, shape (B, ...), in model space ([-1, 1] for images).
        process: a discrete VP process (a ``VPDiscrete``: its ``.betas`` and ``.alphas_cumprod`` are read).
        variance: "small" (``beta_tilde_t``) or "large" (``beta_t``) reverse variances, or a
            tensor of T positive variances in the process's ``x_t`` space (index 0: decoder).
        decoder: "discretized" or "gaussian".
        clip_denoised: clamp ``x0_hat`` to [-1, 1] before forming the means.
        generator: torch generator for the ``x_t`` samples.

    Returns a dict of float64 tensors: ``bits_per_dim`` (B,) (= ``nats / (dim ln 2)``; for the
    discretized decoder a bound on the discrete NLL of the 8-bit data, for the Gaussian one a
    continuous bits/dim), ``nats`` (B,), ``prior`` (B,), ``decoder`` (B,) and ``kl`` (B, T-1),
    all in nats. It is a one-sample Monte Carlo estimate of the bound (exact in ``prior``).
    """
    _choice("prediction", prediction, PREDICTIONS)
    if isinstance(variance, str):
        _choice("variance", variance, VARIANCES)
    _choice("decoder", decoder, DECODERS)
    x0 = _batch(x0)
    cond = dict(cond or {})
    tab = _VLBTables.of(process, variance)
    if decoder == "discretized":
        _check_on_grid(x0, bin_width)
    abar, sigmas, steps = tab.abar, tab.sigmas, tab.steps
    shape = tuple(x0.shape)
    batch, dim = shape[0], int(np.prod(shape[1:]))

    def predict_x0(xt: Tensor, i: int) -> Tensor:
        if prediction == "denoiser":
            sigma = torch.full((batch,), float(sigmas[i]), dtype=torch.float64)
            out = model(xt / abar[i].sqrt(), sigma, **cond)
        else:
            t = torch.full((batch,), i, dtype=torch.long)
            eps_hat = model(xt, t, **cond)
            if tuple(eps_hat.shape) != shape:
                raise ValueError(f"model returned shape {tuple(eps_hat.shape)} for input {shape}")
            out = (xt - (1 - abar[i]).sqrt() * eps_hat.to(torch.float64)) / abar[i].sqrt()
        if tuple(out.shape) != shape:
            raise ValueError(f"model returned shape {tuple(out.shape)} for input {shape}")
        out = out.detach().to(torch.float64)
        return out.clamp(-1, 1) if clip_denoised else out

    kl = torch.zeros(batch, steps - 1, dtype=torch.float64)
    dec = torch.zeros(batch, dtype=torch.float64)
    with torch.no_grad():
        for i in range(steps):
            eps = torch.randn(shape, generator=generator, dtype=torch.float64)
            xt = abar[i].sqrt() * x0 + (1 - abar[i]).sqrt() * eps
            x0_hat = predict_x0(xt, i)
            if i == 0:
                mean = tab.coef_x0[0] * x0_hat + tab.coef_xt[0] * xt  # = x0_hat (coef_x0 = 1, coef_xt = 0)
                dec = _decoder_nll(x0, mean, tab.model_var[0], decoder, bin_width)
                continue
            sq = (tab.coef_x0[i] * (x0 - x0_hat)).reshape(batch, dim).pow(2).sum(1)
            ratio = tab.post_var[i] / tab.model_var[i]
            kl[:, i - 1] = 0.5 * (dim * (ratio - 1 - ratio.log()) + sq / tab.model_var[i])
    a_t = abar[-1]
    prior = 0.5 * (a_t * (x0.reshape(batch, dim).pow(2) - 1) - torch.log1p(-a_t)).sum(1)
    nats = prior + kl.sum(1) + dec
    return {"bits_per_dim": nats / (dim * _LN2), "nats": nats, "prior": prior, "decoder": dec, "kl": kl}


def _check_on_grid(x0: Tensor, bin_width: float) -> None:
    """The discretized decoder's data must lie on the 8-bit grid ``-1 + k * bin_width``."""
    if not bin_width > 0:
        raise ValueError(f"bin_width must be positive, got {bin_width!r}")
    levels = (x0 + 1) / bin_width
    if (x0 < -1 - 1e-6).any() or (x0 > 1 + 1e-6).any() or (levels - levels.round()).abs().max() > 1e-3:
        raise ValueError(f"the discretized decoder needs data on the grid -1 + k * {bin_width:g} in [-1, 1] "
                         "(8-bit data: x = 2 u / 255 - 1); use decoder='gaussian' for continuous data")


@dataclass(frozen=True)
class _VLBTables:
    """The per-step float64 tables of the bound (0-based index ``i = t - 1``): ``abar``, the
    posterior variance ``post_var`` (beta_tilde, 0 at i = 0), the posterior-mean coefficients
    of x0 and x_t (Ho et al. eq. 7), the reverse variances ``model_var`` (index 0: decoder) and
    the rescaled-space noise levels ``sigmas``."""

    steps: int
    abar: Tensor
    post_var: Tensor
    coef_x0: Tensor
    coef_xt: Tensor
    model_var: Tensor
    sigmas: Tensor

    @classmethod
    def of(cls, process, variance) -> "_VLBTables":
        if not isinstance(process, VPDiscrete):
            raise ValueError("ddpm_vlb needs a discrete VP process with .betas and .alphas_cumprod "
                             "(process.get('vp', ...))")
        betas = torch.as_tensor(process.betas, dtype=torch.float64)
        abar = torch.as_tensor(process.alphas_cumprod, dtype=torch.float64)
        steps = betas.shape[0]
        if steps < 2:
            raise ValueError("the process needs at least 2 steps")
        if not (abar[-1] > 0):
            raise ValueError("ddpm_vlb does not support zero terminal SNR processes (alphas_cumprod[-1] = 0)")
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        coef_x0 = betas * abar_prev.sqrt() / (1 - abar)
        coef_xt = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
        if isinstance(variance, str):
            model_var = (post_var if variance == "small" else betas).clone()
            model_var[0] = post_var[1]  # decoder variance (beta_tilde_1 = 0), as in Nichol & Dhariwal's code
        else:
            model_var = torch.as_tensor(variance, dtype=torch.float64).detach()
            if model_var.shape != (steps,) or not (model_var > 0).all() or not torch.isfinite(model_var).all():
                raise ValueError(f"variance must be 'small', 'large' or {steps} positive finite numbers")
        return cls(steps, abar, post_var, coef_x0, coef_xt, model_var, ((1 - abar) / abar).sqrt())


def _decoder_nll(x0: Tensor, mean: Tensor, var: Tensor, decoder: str, bin_width: float) -> Tensor:
    """``L_0 = -log p(x0 | x1)`` per sample: discretized (Ho et al. eq. 13) or a Gaussian density."""
    if decoder == "discretized":
        logp = discretized_gaussian_log_prob(x0, mean, var, bin_width=bin_width)
    else:
        logp = -0.5 * (x0 - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)
    return -logp.reshape(x0.shape[0], -1).sum(1)
