"""Turn a raw network into a denoiser ``D(x, sigma) -> x0`` in the rescaled space.

Every parameterization is one set of four coefficients, computed together::

    D(x, sigma) = c_skip * x + c_out * F(c_in * x, c_noise)

where ``x = x0 + sigma * eps`` and ``F`` is the raw network. The network always sees the
input and the noise label the way it was trained:

=========  ==================  ===================  =====================  ==================
target     c_skip              c_out                c_in                   c_noise
=========  ==================  ===================  =====================  ==================
eps        1                   -sigma               alpha(sigma)           t(sigma)
x0         0                   1                    alpha(sigma)           t(sigma)
v          1/(1+sigma^2)       -sigma/sqrt(1+s^2)   alpha(sigma)           t(sigma)
edm        sd^2/(s^2+sd^2)     s*sd/sqrt(s^2+sd^2)  1/sqrt(s^2+sd^2)       log(sigma)/4
flow       1/(1+sigma)         -sigma/(1+sigma)     1/(1+sigma)            t(sigma)
=========  ==================  ===================  =====================  ==================

* eps: Ho et al. 2020. x0 = x - sigma * eps.
* v: Salimans & Ho 2022, v = alpha_t eps - sigma_t x0 with VP (alpha_t, sigma_t); written
  in sigma this is v = (eps - sigma x0) / sqrt(1 + sigma^2) for any process.
* edm: Karras et al. 2022, Table 1 (sd = sigma_data).
* flow: Liu et al. 2023 / Lipman et al. 2023, u = eps - x0 at x_t = (1-t) x0 + t eps with
  t = sigma / (1 + sigma); x0 = x_t - t u.

``alpha`` and ``t`` come from the noise process, so an eps network trained on a discrete VP
table is fed ``x_t`` and its (fractional) timestep index exactly as during training.
``time_scale`` multiplies the noise label (e.g. 1000 for flow models trained on t * 1000).

Consistency models (Song et al. 2023) need ``D(x, sigma_min) = x`` exactly. With
``boundary_sigma = b`` the denoiser above (any parameterization) becomes

    f(x, sigma) = x + w(sigma) * (D(x, sigma) - x),    w = max(0, (sigma - b) / sigma)

so ``f`` is the identity at (and below) ``b`` and equals ``D`` up to a factor ``1 - b/sigma``
on ``D - x`` above it: a consistency student initialised from a teacher's weights starts as
the teacher's denoiser. (The consistency-model paper's EDM-style c_skip/c_out with the
boundary built in is one such choice; this one keeps every parameterization.)
"""
from __future__ import annotations

import torch
from torch import nn

from .process import NoiseProcess

Tensor = torch.Tensor

PARAMETERIZATIONS = ("eps", "x0", "v", "edm", "flow")


def coefficients(parameterization: str, sigma: Tensor, process: NoiseProcess | None = None,
                 sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``(c_skip, c_out, c_in, c_noise)`` for per-sample ``sigma`` (any float dtype)."""
    s = sigma
    if parameterization == "edm":
        sd = sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = (s**2 + sd**2).rsqrt()
        c_noise = s.log() / 4
        return c_skip, c_out, c_in, c_noise
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
    if process is None:
        raise ValueError(f"parameterization {parameterization!r} needs the noise process it was trained with")
    if parameterization == "flow":
        c_in = 1 / (1 + s)
        return c_in, -s / (1 + s), c_in, process.t(s).to(s.dtype)
    c_in = process.alpha_of_sigma(s).to(s.dtype)
    c_noise = process.t(s).to(s.dtype)
    if parameterization == "eps":
        return torch.ones_like(s), -s, c_in, c_noise
    if parameterization == "x0":
        return torch.zeros_like(s), torch.ones_like(s), c_in, c_noise
    # v
    return 1 / (1 + s**2), -s * (1 + s**2).rsqrt(), c_in, c_noise


def _per_sample_sigma(sigma, x: Tensor) -> Tensor:
    sigma = torch.as_tensor(sigma, device=x.device)
    if sigma.dim() == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma


class Denoiser(nn.Module):
    """Wrap ``net(x_in, c_noise, **cond)`` so that ``self(x, sigma, **cond)`` estimates x0.

    The maths runs in float32 or float64 (whichever ``x`` is); the network input is cast to
    the network's own dtype and its output back, so a bf16 network is safe to wrap.

    A :class:`~undiffuse.core.types.DenoiserLike` (and ``HasBoundary``, ``HasSigmaData``): its
    sigma range is the process's; ``sample_shape`` is the per-sample shape (None: any).
    """

    def __init__(self, net: nn.Module | callable, process: NoiseProcess, parameterization: str = "eps", *,
                 sigma_data: float = 0.5, time_scale: float = 1.0, net_dtype: torch.dtype | None = None,
                 boundary_sigma: float | None = None, sample_shape: tuple[int, ...] | None = None):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
        self.net = net
        self.process = process
        self.parameterization = parameterization
        self.sigma_data = sigma_data
        self.time_scale = time_scale
        self.net_dtype = net_dtype
        self.boundary_sigma = boundary_sigma  # consistency models: the identity at and below this sigma
        self.sample_shape = None if sample_shape is None else tuple(sample_shape)  # per sample, no batch axis

    @property
    def sigma_min(self) -> float:
        """The process's smallest noise level (rescaled-space std)."""
        return self.process.sigma_min

    @property
    def sigma_max(self) -> float:
        """The process's largest finite noise level (rescaled-space std)."""
        return self.process.sigma_max

    def forward(self, x: Tensor, sigma, **cond) -> Tensor:
        sigma = _per_sample_sigma(sigma, x).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        c_skip, c_out, c_in, c_noise = coefficients(self.parameterization, sigma, self.process, self.sigma_data)
        shape = (-1,) + (1,) * (x.dim() - 1)
        dtype = self.net_dtype or _module_dtype(self.net) or x.dtype
        raw = self.net((c_in.reshape(shape) * x).to(dtype), (c_noise * self.time_scale).to(dtype), **cond)
        den = c_skip.reshape(shape).to(x.dtype) * x + c_out.reshape(shape).to(x.dtype) * raw.to(x.dtype)
        if self.boundary_sigma is None:
            return den
        w = ((sigma - self.boundary_sigma) / sigma).clamp(min=0).reshape(shape).to(x.dtype)
        return x + w * (den - x)


def _module_dtype(net) -> torch.dtype | None:
    if isinstance(net, nn.Module):
        for p in net.parameters():
            return p.dtype
    return None
