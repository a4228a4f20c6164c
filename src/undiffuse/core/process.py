"""Noise processes in one convention.

Every process is written as ``x_t = alpha(t) * (x0 + sigma(t) * eps)``. Samplers work in the
rescaled space ``x = x_t / alpha = x0 + sigma * eps``, where a process is nothing but a map
between its own time ``t`` and the noise level ``sigma``; ``alpha`` only matters where a
network sees ``x_t`` (the preconditioner) and where training data are noised.

Processes here:

* ``VPDiscrete``: DDPM-style discrete tables (Ho et al. 2020) with ``linear``,
  ``scaled_linear``, ``cosine`` (Nichol & Dhariwal 2021, eq. 17) and ``sigmoid`` betas,
  optionally rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1). Time is the
  (fractional) index ``0 .. T-1``; between indices log-sigma is interpolated linearly.
* ``VPContinuous``: the variance-preserving SDE of Song et al. 2021 (linear beta(t)).
* ``VE``: variance exploding, geometric sigma(t) (Song et al. 2021).
* ``EDM``: ``alpha = 1``, ``sigma = t`` (Karras et al. 2022).
* ``RectifiedFlow``: ``x_t = (1 - t) x0 + t eps``, i.e. ``alpha = 1 - t``, ``sigma = t / (1 - t)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")


def _as_tensor(v, dtype=torch.float64) -> Tensor:
    if isinstance(v, Tensor):
        return v.to(dtype) if v.dtype != dtype and not v.is_floating_point() else v
    return torch.as_tensor(v, dtype=dtype)


class NoiseProcess:
    """Base class. Subclasses define ``sigma(t)``, ``t(sigma)`` and ``alpha_of_sigma``."""

    name: str = "process"
    #: smallest and largest noise level the process covers (rescaled space)
    sigma_min: float
    sigma_max: float

    def sigma(self, t) -> Tensor:
        raise NotImplementedError

    def t(self, sigma) -> Tensor:
        raise NotImplementedError

    def alpha_of_sigma(self, sigma) -> Tensor:
        """The signal scale alpha at noise level sigma (x_t = alpha * x)."""
        raise NotImplementedError

    def alpha(self, t) -> Tensor:
        return self.alpha_of_sigma(self.sigma(t))

    @property
    def t_min(self) -> float:
        return float(self.t(torch.tensor(self.sigma_min, dtype=torch.float64)))

    @property
    def t_max(self) -> float:
        return float(self.t(torch.tensor(self.sigma_max, dtype=torch.float64)))

    def snr(self, t) -> Tensor:
        """Signal-to-noise ratio alpha^2 / (alpha sigma)^2 = 1 / sigma^2."""
        return self.sigma(t).pow(-2)

    def add_noise(self, x0: Tensor, eps: Tensor, t) -> Tensor:
        """Return ``x_t = alpha(t) * (x0 + sigma(t) * eps)`` in the process's own space."""
        t = _as_tensor(t).to(x0.device)
        sigma = self.sigma(t).reshape(-1, *([1] * (x0.dim() - 1))) if t.dim() else self.sigma(t)
        alpha = self.alpha_of_sigma(sigma)
        if torch.isinf(sigma).any():  # zero terminal SNR: alpha = 0, x_t = eps exactly
            out = torch.where(torch.isinf(sigma), eps.to(torch.float64), alpha * x0 + alpha * sigma * eps)
        else:
            out = alpha * (x0 + sigma * eps)
        return out.to(x0.dtype)

    def config(self) -> dict:
        raise NotImplementedError


# --------------------------------------------------------------------------- beta tables


def make_betas(schedule: str, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               cosine_s: float = 0.008) -> Tensor:
    """Discrete beta table of length ``steps`` in float64."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2 for a beta table, got {steps}")
    if schedule == "linear":  # Ho et al. 2020
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if schedule == "scaled_linear":  # linear in sqrt(beta), used by latent diffusion
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    if schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999
        i = torch.arange(steps + 1, dtype=torch.float64)
        f = torch.cos((i / steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    if schedule == "sigmoid":  # GeoDiff (Xu et al. 2022): sigmoid over [-6, 6]
        s = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64))
        return s * (beta_end - beta_start) + beta_start
    raise ValueError(f"unknown beta schedule {schedule!r}; allowed: {', '.join(BETA_SCHEDULES)}")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so the last step has SNR 0."""
    abar_sqrt = torch.cumprod(1 - betas, 0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * first / (first - last)
    abar = abar_sqrt**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


# --------------------------------------------------------------------------- processes


def _vp_alpha(sigma: Tensor) -> Tensor:
    return (1 + sigma**2).rsqrt()


@dataclass(eq=False)
class VPDiscrete(NoiseProcess):
    """Discrete variance-preserving process (DDPM). ``t`` is the table index in [0, steps-1]."""

    beta_schedule: str = "linear"  # one of BETA_SCHEDULES
    steps: int = 1000  # number of training timesteps
    beta_start: float = 1e-4
    beta_end: float = 0.02
    zero_terminal_snr: bool = False  # rescale so alpha_bar[-1] = 0 (sigma_max = inf)

    name = "vp"

    def __post_init__(self):
        betas = make_betas(self.beta_schedule, self.steps, self.beta_start, self.beta_end)
        if self.zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        with torch.no_grad():
            self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()  # (T,)
        self._log_sigmas = self.sigmas.log()
        self.sigma_min = float(self.sigmas[0])
        finite = self.sigmas[torch.isfinite(self.sigmas)]
        self.sigma_max = float(finite[-1])

    def sigma(self, t) -> Tensor:
        t = _as_tensor(t).clamp(0, self.steps - 1)
        lo = t.floor().long().clamp(max=self.steps - 2)
        w = t - lo
        ls = self._log_sigmas.to(t.device)
        return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()

    def t(self, sigma) -> Tensor:
        """Fractional index whose (log-interpolated) sigma equals ``sigma``; clamped to range."""
        sigma = _as_tensor(sigma)
        ls = self._log_sigmas[torch.isfinite(self._log_sigmas)].to(sigma.device)
        log_s = sigma.log().clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, log_s.reshape(-1).contiguous()).clamp(1, len(ls) - 1).reshape(log_s.shape)
        lo = hi - 1
        w = (log_s - ls[lo]) / (ls[hi] - ls[lo])
        return lo.to(torch.float64) + w

    def alpha_of_sigma(self, sigma) -> Tensor:
        return _vp_alpha(_as_tensor(sigma))

    def alpha(self, t) -> Tensor:
        return self.alpha_of_sigma(self.sigma(t))

    def config(self) -> dict:
        return {"name": "vp", "beta_schedule": self.beta_schedule, "steps": self.steps,
                "beta_start": self.beta_start, "beta_end": self.beta_end,
                "zero_terminal_snr": self.zero_terminal_snr}


@dataclass(eq=False)
class VPContinuous(NoiseProcess):
    """Continuous VP SDE (Song et al. 2021, eq. 11): beta(t) = beta_min + t (beta_max - beta_min)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_eps: float = 1e-3  # smallest time used (the SDE paper's epsilon)

    name = "vp_continuous"

    def __post_init__(self):
        self.sigma_min = float(self.sigma(self.t_eps))
        self.sigma_max = float(self.sigma(1.0))

    def _log_mean_coeff(self, t: Tensor) -> Tensor:  # log sqrt(alpha_bar)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sigma(self, t) -> Tensor:
        t = _as_tensor(t)
        return torch.expm1(-2 * self._log_mean_coeff(t)).sqrt()

    def t(self, sigma) -> Tensor:
        sigma = _as_tensor(sigma)
        d = self.beta_max - self.beta_min
        return (-self.beta_min + (self.beta_min**2 + 2 * d * torch.log1p(sigma**2)).sqrt()) / d

    def alpha_of_sigma(self, sigma) -> Tensor:
        return _vp_alpha(_as_tensor(sigma))

    def config(self) -> dict:
        return {"name": "vp_continuous", "beta_min": self.beta_min, "beta_max": self.beta_max,
                "t_eps": self.t_eps}


@dataclass(eq=False)
class VE(NoiseProcess):
    """Variance exploding (Song et al. 2021): sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    name = "ve"

    def sigma(self, t) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _as_tensor(t)

    def t(self, sigma) -> Tensor:
        return (_as_tensor(sigma) / self.sigma_min).log() / math.log(self.sigma_max / self.sigma_min)

    def alpha_of_sigma(self, sigma) -> Tensor:
        return torch.ones_like(_as_tensor(sigma))

    def config(self) -> dict:
        return {"name": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


@dataclass(eq=False)
class EDM(NoiseProcess):
    """Karras et al. 2022: alpha = 1, sigma = t; sigma_data is the data's standard deviation."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5

    name = "edm"

    def sigma(self, t) -> Tensor:
        return _as_tensor(t).clone()

    def t(self, sigma) -> Tensor:
        return _as_tensor(sigma).clone()

    def alpha_of_sigma(self, sigma) -> Tensor:
        return torch.ones_like(_as_tensor(sigma))

    def config(self) -> dict:
        return {"name": "edm", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "sigma_data": self.sigma_data}


@dataclass(eq=False)
class RectifiedFlow(NoiseProcess):
    """Rectified flow (Liu et al. 2023): x_t = (1 - t) x0 + t eps, so sigma = t / (1 - t)."""

    t_min: float = 1e-3  # type: ignore[assignment]
    t_max: float = 0.999  # type: ignore[assignment]

    name = "flow"

    def __post_init__(self):
        self.sigma_min = float(self.sigma(self.t_min))
        self.sigma_max = float(self.sigma(self.t_max))

    def sigma(self, t) -> Tensor:
        t = _as_tensor(t)
        return t / (1 - t)

    def t(self, sigma) -> Tensor:
        sigma = _as_tensor(sigma)
        return sigma / (1 + sigma)

    def alpha_of_sigma(self, sigma) -> Tensor:
        return 1 / (1 + _as_tensor(sigma))

    def config(self) -> dict:
        return {"name": "flow", "t_min": self.t_min, "t_max": self.t_max}


PROCESSES = {"vp": VPDiscrete, "vp_continuous": VPContinuous, "ve": VE, "edm": EDM, "flow": RectifiedFlow}


def names() -> list[str]:
    return list(PROCESSES)


def get(name: str, **kwargs) -> NoiseProcess:
    """Build a process by name, e.g. ``get("vp", beta_schedule="cosine")``."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; allowed: {', '.join(PROCESSES)}")
    return PROCESSES[name](**kwargs)


def from_config(cfg: dict) -> NoiseProcess:
    cfg = dict(cfg)
    return get(cfg.pop("name"), **cfg)
