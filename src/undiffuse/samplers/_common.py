"""Helpers shared by the samplers: per-sample noise, sigma broadcasting, callbacks."""
from __future__ import annotations

from typing import Callable

import torch

from undiffuse.core.noise import Generators, per_sample_generators, randn_like  # noqa: F401 (the samplers' noise)

Tensor = torch.Tensor


def call(denoiser: Callable, x: Tensor, sigma, **extra) -> Tensor:
    """Evaluate the denoiser at a scalar noise level, broadcast as a per-sample tensor."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return denoiser(x, s.expand(x.shape[0]) if s.dim() == 0 else s, **extra)


def levels(sigmas: Tensor, x: Tensor) -> list[Tensor]:
    """Every noise level as the per-sample sigma tensor the denoiser takes (x's dtype and
    device, one row per sample), made once per call instead of once per step."""
    return list(sigmas.to(dtype=x.dtype, device=x.device)[:, None].expand(-1, x.shape[0]).unbind(0))


def per_step(*coefficients: Tensor) -> list[tuple]:
    """Per-step coefficients (each a tensor over the steps, computed once per call from the
    sigmas) as one tuple per step: Python floats, which cost nothing to combine with a tensor,
    or 0-dim tensors when they carry gradients (calibration differentiates through the sigmas)."""
    table = torch.stack(coefficients, 1)
    return [tuple(row.unbind(0)) for row in table.unbind(0)] if table.requires_grad else \
        [tuple(row) for row in table.tolist()]


def axpy(x: Tensor, a, y: Tensor) -> Tensor:
    """x + a * y in one fused kernel when ``a`` is a Python number (a differentiable 0-dim
    tensor takes the two-kernel path)."""
    return torch.add(x, y, alpha=a) if isinstance(a, (int, float)) else x + a * y


def report(callback, i: int, x: Tensor, sigma, sigma_next, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": float(sigma), "sigma_next": float(sigma_next), "denoised": denoised})


def to_d(x: Tensor, sigma, denoised: Tensor) -> Tensor:
    """Probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 3)."""
    return (x - denoised) / sigma


def ancestral_split(sigma, sigma_next, eta: float = 1.0):
    """Split a step sigma -> sigma_next into a deterministic part (to sigma_down) and fresh
    noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2.

    eta = 1 is the DDPM posterior (and DDIM with eta = 1); eta = 0 is deterministic DDIM.
    Derivation: DDIM's (Song et al. 2021, eq. 16) sigma_t divided by sqrt(alpha_bar_prev) is
    eta * sigma_next * sqrt(1 - sigma_next^2 / sigma^2) in the rescaled space.
    Works on numbers and, elementwise, on tensors of levels (every step of a schedule at once).
    """
    if eta == 0 or (not torch.is_tensor(sigma_next) and sigma_next == 0):
        return sigma_next, 0.0 * sigma_next
    up = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    up = min(up, sigma_next) if not torch.is_tensor(up) else torch.minimum(up, torch.as_tensor(sigma_next))
    down = (sigma_next**2 - up**2) ** 0.5
    return down, up
