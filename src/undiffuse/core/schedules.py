"""Sigma discretizations for sampling.

A schedule is a strictly decreasing float64 tensor of ``steps + 1`` noise levels whose last
entry is 0. Every sampler takes such a tensor, so every schedule works with every sampler.

* ``karras``: Karras et al. 2022, eq. 5, uniform in sigma^(1/rho) (rho = 7).
* ``logsnr``: uniform in log-SNR = -2 log sigma (the spacing DPM-Solver recommends).
* ``exponential``: uniform in (ramp^rho) of log sigma; rho = 1 equals ``logsnr``, other rho
  bend it toward the low (rho > 1) or high (rho < 1) end ("polyexponential").
* ``linspace`` / ``leading`` / ``trailing``: uniform in the process time t, with the
  spacings DDIM and diffusers users know (Lin et al. 2024, Table 2). On a discrete process
  they give the same integer timesteps as diffusers.
* ``custom``: a user list (``sigmas=[...]``), validated; a trailing 0 is appended if absent.
"""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import torch

from undiffuse.utils.atomic import write_json

from .process import NoiseProcess, VPDiscrete

Tensor = torch.Tensor

_SCHEDULES = ("karras", "logsnr", "exponential", "linspace", "leading", "trailing", "custom")
_NEEDS_PROCESS = ("linspace", "leading", "trailing")


def names() -> list[str]:
    return list(_SCHEDULES)


def _append_zero(s: Tensor) -> Tensor:
    return torch.cat([s, s.new_zeros(1)])


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    ramp = torch.linspace(1, 0, steps, dtype=torch.float64) ** rho
    return _append_zero((ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp())


def logsnr(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    return exponential(steps, sigma_min, sigma_max, rho=1.0)


def timesteps(process: NoiseProcess, steps: int, spacing: str, sigma_min: float | None = None,
              sigma_max: float | None = None, steps_offset: int = 0) -> Tensor:
    """Process times, decreasing, for the uniform-t spacings.

    On a ``VPDiscrete`` process with the full range this reproduces diffusers'
    ``timestep_spacing`` options: ``linspace`` (DDIM's rounded variant is ``leading``-like;
    here ``linspace`` is the unrounded ``linspace(T-1, 0, n)`` of the Euler schedulers),
    ``leading`` (``arange(n) * (T // n) + offset``) and ``trailing``
    (``round(arange(T, 0, -T/n)) - 1``).
    """
    # float64 ends: a bare torch.tensor(float) is float32, 3e-8..6e-8 off
    lo = torch.tensor(sigma_min if sigma_min is not None else process.sigma_min, dtype=torch.float64)
    hi = torch.tensor(sigma_max if sigma_max is not None else process.sigma_max, dtype=torch.float64)
    t_lo, t_hi = float(process.t(lo)), float(process.t(hi))
    if isinstance(process, VPDiscrete) and sigma_min is None and sigma_max is None:
        T = process.steps
        if spacing == "linspace":
            return torch.from_numpy(np.linspace(0, T - 1, steps)[::-1].copy())
        if spacing == "leading":
            ratio = T // steps
            return torch.from_numpy((np.arange(0, steps) * ratio).round()[::-1].astype(np.float64) + steps_offset)
        if spacing == "trailing":
            return torch.from_numpy(np.round(np.arange(T, 0, -T / steps)).astype(np.float64) - 1)
    span = t_hi - t_lo
    i = torch.arange(steps, dtype=torch.float64)
    if spacing == "linspace":
        return torch.linspace(t_hi, t_lo, steps, dtype=torch.float64)
    if spacing == "leading":
        return t_lo + span * (steps - 1 - i) / steps
    if spacing == "trailing":
        return t_hi - span * i / steps
    raise ValueError(f"unknown spacing {spacing!r}; allowed: linspace, leading, trailing")


def validate(sigmas, name: str = "sigmas") -> Tensor:
    """Return ``sigmas`` as float64, or raise ValueError saying what is wrong."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach() if not isinstance(sigmas, Tensor) else sigmas
    if s.dim() != 1 or s.numel() < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 noise levels ending in 0, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must all be finite, got {s.tolist()}")
    if s[-1] != 0:
        raise ValueError(f"{name} must end in 0, got last value {float(s[-1])}")
    if (s[:-1] <= 0).any():
        raise ValueError(f"{name} must be positive before the final 0, got {s.tolist()}")
    if not (s[1:] < s[:-1]).all():
        raise ValueError(f"{name} must be strictly decreasing, got {s.tolist()}")
    return s


def get_sigmas(schedule: str | Sequence[float] | Tensor, steps: int | None = None, *,
               sigma_min: float | None = None, sigma_max: float | None = None,
               process: NoiseProcess | None = None, **options) -> Tensor:
    """Build the ``steps + 1`` sigmas of a named schedule, or validate a user list.

    ``schedule`` may be a name from :func:`names`, or directly a list/tensor of sigmas.
    ``sigma_min``/``sigma_max`` default to the process's range when a process is given.
    """
    if not isinstance(schedule, str):
        return _custom(schedule)
    if schedule not in _SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(_SCHEDULES)}")
    if schedule == "custom":
        if "sigmas" not in options:
            raise ValueError("schedule 'custom' needs sigmas=[...] (a decreasing list ending in 0)")
        return _custom(options.pop("sigmas"))
    if steps is None or not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if process is not None:
        sigma_min = process.sigma_min if sigma_min is None else sigma_min
        sigma_max = process.sigma_max if sigma_max is None else sigma_max
    if schedule in _NEEDS_PROCESS:
        if process is None:
            raise ValueError(f"schedule {schedule!r} is uniform in the process time t and needs a process "
                             f"(pass a Denoiser, or process=...)")
        user_range = (sigma_min != process.sigma_min) or (sigma_max != process.sigma_max)
        ts = timesteps(process, steps, schedule, sigma_min if user_range else None,
                       sigma_max if user_range else None, **options)
        return validate(_append_zero(process.sigma(ts).to(torch.float64)), f"schedule {schedule!r}")
    if sigma_min is None or sigma_max is None:
        raise ValueError(f"schedule {schedule!r} needs sigma_min and sigma_max (or a process)")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if steps == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    if schedule == "karras":
        s = karras(steps, sigma_min, sigma_max, **options)
    elif schedule == "logsnr":
        s = logsnr(steps, sigma_min, sigma_max)
    else:
        s = exponential(steps, sigma_min, sigma_max, **options)
    return validate(s, f"schedule {schedule!r}")


def _custom(values) -> Tensor:
    s = torch.as_tensor(values, dtype=torch.float64).detach().clone().reshape(-1) if not isinstance(values, Tensor) \
        else values.detach().to(torch.float64).reshape(-1)
    if s.numel() and s[-1] != 0 and torch.isfinite(s[-1]):
        s = _append_zero(s)
    return validate(s, "custom sigmas")


def save(sigmas: Tensor, path, **meta) -> None:
    """Write a schedule as a plain JSON list (plus optional metadata) atomically."""
    write_json(path, {"sigmas": [float(v) for v in validate(sigmas)], **meta})


def load(path) -> Tensor:
    """Read a schedule written by :func:`save` (or a bare JSON list of sigmas)."""
    with open(path) as f:
        data = json.load(f)
    values = data["sigmas"] if isinstance(data, dict) else data
    return _custom(values)
