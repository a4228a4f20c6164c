"""Denoising losses: noise-level sampling, per-sample loss, weightings.

Every parameterization trains its raw network output ``F`` towards the target that makes
the denoiser exact (see ``precond``): with ``x = x0 + sigma * eps`` and
``D = c_skip * x + c_out * F``, ``D = x0`` exactly when

    F_target = ((1 - c_skip) * x0 - c_skip * sigma * eps) / c_out

which is eps for eps-prediction, x0 for x0-prediction, v = (eps - sigma x0)/sqrt(1 + sigma^2)
for v-prediction, eps - x0 for flow and EDM's target for EDM preconditioning, without the
cancellation of computing ``(x0 - c_skip * x) / c_out`` at small sigma.

Since ``|F - F_target|^2 = |D - x0|^2 / c_out^2``, a weighting is most simply stated as a
weight on the x0 error, ``w_D(sigma)``; the weight on the network's own error is then
``w_D * c_out^2``. Weightings:

* ``uniform``: the plain mean squared error of each parameterization's own target
  (``w_D = 1 / c_out^2``): Ho et al. 2020's "simple" loss for eps, the v loss for v, etc.
* ``min_snr``: Min-SNR-gamma (Hang et al. 2023): ``w_D = min(SNR, gamma)`` with
  SNR = 1 / sigma^2; equals min(SNR, gamma)/SNR for eps and min(SNR, gamma)/(SNR + 1) for v.
* ``edm``: Karras et al. 2022, eq. 8: ``w_D = (sigma^2 + sd^2) / (sigma * sd)^2``; with EDM
  preconditioning this is again the plain MSE of F.

Noise levels:

* ``uniform_t``: t uniform over the process's training range (integer timesteps for the
  discrete VP table, as DDPM trains).
* ``lognormal``: ln(sigma) ~ N(p_mean, p_std^2) (Karras et al. 2022). For rectified flow
  this is the logit-normal t of Esser et al. 2024, since logit(t) = ln(sigma).
* ``u_shaped``: the U-shaped density of Lee et al. 2024 ("Improving the Training of Rectified
  Flows", sec. 4.1), ``p(u) proportional to cosh(a (u - 1/2))`` on ``u in [0, 1]``, mapped to
  ``t = t_min + u (t_max - t_min)``; it puts most training at the two ends, where reflow's
  1- and 2-step samplers evaluate (``t`` near 1) and the last step lands (``t`` near 0).
  Drawn by inverting its CDF ``F(u) = (sinh(a (u - 1/2)) + sinh(a/2)) / (2 sinh(a/2))``:
  ``u = 1/2 + asinh((2 r - 1) sinh(a/2)) / a`` for ``r`` uniform. ``a`` -> 0 is uniform in t.
* ``sigma_max``: every level at the process's ``sigma_max``, where 1-step sampling evaluates:
  training the 1-step map alone (the distillation stage after reflow of Liu et al. 2023,
  sec. 2.3, when the data are a reflow's couplings).

Sigmas are clipped to the process's [sigma_min, sigma_max].

Distances (on the network output ``F``, per sample, before the weighting):

* ``l2``: the mean over elements of ``|F - F_target|^2`` (the default);
* ``pseudo_huber``: ``sqrt(|F - F_target|^2 + c^2) - c`` with the squared norm summed over the
  sample's ``d`` elements (Song & Dhariwal 2023's pseudo-Huber, used for reflow by Lee et al.
  2024); ``c`` defaults to ``0.00054 sqrt(d)``. Quadratic for errors much smaller than ``c``,
  linear (robust to a few badly fit pairs) above.
"""
from __future__ import annotations

import torch

from .precond import Denoiser, coefficients

Tensor = torch.Tensor

NOISE_SAMPLING = ("uniform_t", "lognormal", "u_shaped", "sigma_max")
WEIGHTINGS = ("uniform", "min_snr", "edm")
DISTANCES = ("l2", "pseudo_huber")


def u_shaped(r: Tensor, a: float) -> Tensor:
    """Map uniform ``r`` in [0, 1] to ``u`` in [0, 1] with density ``cosh(a (u - 1/2))`` (normalised),
    by the inverse CDF (see the module docstring). ``a`` must be > 0."""
    if not a > 0:
        raise ValueError(f"u_shaped: a must be > 0, got {a}")
    half = torch.sinh(torch.as_tensor(a / 2, dtype=torch.float64))
    return (0.5 + torch.asinh((2 * r.to(torch.float64) - 1) * half) / a).clamp(0, 1)


def sample_sigma(kind: str, n: int, process, generator: torch.Generator, *, p_mean: float = -1.2,
                 p_std: float = 1.2, u_a: float = 4.0) -> Tensor:
    """Draw ``n`` training noise levels (float64, on the generator's device). ``u_a``: the
    ``u_shaped`` density's ``a``."""
    device = generator.device
    if kind in ("uniform_t", "u_shaped"):
        table = getattr(process, "sigmas", None)
        finite = None if table is None else table[torch.isfinite(table)].to(device)
        if finite is not None and kind == "uniform_t":  # discrete VP: integer timesteps, as DDPM trains
            return finite[torch.randint(0, len(finite), (n,), generator=generator, device=device)]
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        if kind == "u_shaped":
            u = u_shaped(u, u_a)
        if finite is not None:  # discrete VP: the timestep at that fraction of the table
            return finite[(u * len(finite)).long().clamp(max=len(finite) - 1)]
        t = process.t_min + u * (process.t_max - process.t_min)
        sigma = process.sigma(t)
    elif kind == "sigma_max":
        return torch.full((n,), float(process.sigma_max), dtype=torch.float64, device=device)
    elif kind == "lognormal":
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        sigma = (p_mean + p_std * z).exp()
    else:
        raise ValueError(f"unknown noise sampling {kind!r}; allowed: {', '.join(NOISE_SAMPLING)}")
    return sigma.clamp(process.sigma_min, process.sigma_max)


def weight_on_x0(weighting: str, sigma: Tensor, *, sigma_data: float = 0.5, min_snr_gamma: float = 5.0,
                 natural: Tensor | None = None) -> Tensor:
    """The weight ``w_D(sigma)`` on the squared x0 error; ``natural`` is ``1 / c_out^2``."""
    if weighting == "uniform":
        return natural
    if weighting == "min_snr":
        return (sigma.pow(-2)).clamp(max=min_snr_gamma)
    if weighting == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    raise ValueError(f"unknown loss weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")


def denoising_loss(denoiser: Denoiser, x0: Tensor, sigma: Tensor, eps: Tensor, *, weighting: str = "uniform",
                   min_snr_gamma: float = 5.0, distance: str = "l2", huber_c: float | None = None,
                   **cond) -> Tensor:
    """Per-sample weighted loss, shape (B,): ``w_D c_out^2`` times the ``distance`` between
    ``F`` and ``F_target`` (``l2``: the mean over each sample's elements of ``|F - F_target|^2``;
    ``pseudo_huber``: see the module docstring; ``huber_c`` its ``c``, None for the default).
    The caller reduces and scales."""
    if distance not in DISTANCES:
        raise ValueError(f"unknown loss distance {distance!r}; allowed: {', '.join(DISTANCES)}")
    if huber_c is not None and not huber_c > 0:
        raise ValueError(f"huber_c must be > 0, got {huber_c}")
    s64 = sigma.to(torch.float64)
    c_skip, c_out, c_in, c_noise = coefficients(denoiser.parameterization, s64, denoiser.process,
                                                denoiser.sigma_data)
    w = weight_on_x0(weighting, s64, sigma_data=denoiser.sigma_data, min_snr_gamma=min_snr_gamma,
                     natural=c_out.pow(-2)) * c_out**2
    shape = (-1,) + (1,) * (x0.dim() - 1)

    def col(v):
        return v.to(x0.dtype).reshape(shape)

    x = x0 + col(s64) * eps
    target = (col(1 - c_skip) * x0 - col(c_skip * s64) * eps) / col(c_out)
    net_in = col(c_in) * x
    dtype = next((p.dtype for p in denoiser.net.parameters()), x0.dtype)
    raw = denoiser.net(net_in.to(dtype), (c_noise * denoiser.time_scale).to(dtype), **cond).to(x0.dtype)
    sq = (raw - target).pow(2).flatten(1)
    if distance == "l2":
        err = sq.mean(1)
    else:
        c = huber_c if huber_c is not None else 0.00054 * sq.shape[1] ** 0.5
        err = (sq.sum(1) + c * c).sqrt() - c
    return w.to(x0.dtype) * err
