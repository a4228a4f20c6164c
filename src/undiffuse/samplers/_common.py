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
    """
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0 * sigma_next
    up = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    up = min(up, sigma_next) if not torch.is_tensor(up) else torch.minimum(up, torch.as_tensor(sigma_next))
    down = (sigma_next**2 - up**2) ** 0.5
    return down, up
