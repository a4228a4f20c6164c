"""Guidance as denoiser wrappers: every wrapper is itself a denoiser ``D(x, sigma, **cond)``,
so it works with every sampler and every model.

* **Classifier-free guidance** (Ho & Salimans 2022): ``D = D_u + w (D_c - D_u)``, where
  ``D_c`` sees the condition and ``D_u`` the "unconditional" one (the null class, the empty
  prompt, or a negative prompt). ``w = 1`` is the conditional model and ``w = 0`` the
  unconditional one, exactly: those scales make one network call, not two.
* **Guidance interval** (Kynkaanniemi et al. 2024): guidance only for noise levels in
  ``[lo, hi]``; elsewhere the plain conditional model (``w = 1``). High noise levels are
  where guidance collapses diversity, low ones where it does nothing useful.
* **Autoguidance** (Karras et al. 2024): the same formula with a *weaker model of the same
  task* (a smaller or less-trained network, same conditioning) in place of ``D_u``.
* **Experts by noise level** (eDiff-I, Balaji et al. 2022; SDXL's base and refiner): one
  denoiser above a noise level, another at and below it. Not guidance, but built the same way.
* **Classifier guidance** (Dhariwal & Nichol 2021): add the gradient of a noise-aware
  classifier's ``log p(y | x, sigma)`` to the score. In the rescaled space the score is
  ``(D - x) / sigma^2``, so the guided denoiser is ``D + w sigma^2 grad_x log p(y | x, sigma)``.

Conditioning tensors travel as keyword arguments (``class_labels``, ``context``,
``context_mask``, ...), batch-aligned with ``x``; samplers forward them through ``extra``.
"""
from __future__ import annotations

from typing import Callable

import torch

from undiffuse.core.types import HasBoundary, HasSigmaData, WrapsDenoiser

Tensor = torch.Tensor


class _Wrapper(WrapsDenoiser):
    """A guided denoiser carries what the one it wraps carries: a ``DenoiserLike`` (and
    ``HasBoundary``, ``HasSigmaData``) whose attributes are the inner denoiser's, None where it
    has none. Any other attribute (``net``, ``parameterization``, ...) is forwarded as well."""

    inner: Callable

    @property
    def boundary_sigma(self) -> float | None:
        return self.inner.boundary_sigma if isinstance(self.inner, HasBoundary) else None

    @property
    def sigma_data(self) -> float | None:
        return self.inner.sigma_data if isinstance(self.inner, HasSigmaData) else None

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _check_scale(scale: float, name: str = "scale") -> float:
    scale = float(scale)
    if not torch.isfinite(torch.tensor(scale)):
        raise ValueError(f"guidance {name} must be a finite number, got {scale}")
    return scale


def _check_interval(interval) -> tuple[float, float] | None:
    if interval is None:
        return None
    lo, hi = (float(v) for v in interval)
    if not 0 <= lo < hi:
        raise ValueError(f"guidance interval must be two noise levels 0 <= lo < hi, got ({lo}, {hi})")
    return lo, hi


def _in_interval(sigma: Tensor, interval) -> Tensor | None:
    """Per-sample bool mask of guided samples, or None when every sample is guided."""
    if interval is None:
        return None
    lo, hi = interval
    return (sigma >= lo) & (sigma <= hi)


def _mix(base: Tensor, better: Tensor, scale: float, guided: Tensor | None) -> Tensor:
    out = base + scale * (better - base)
    if guided is None:
        return out
    return torch.where(guided.reshape((-1,) + (1,) * (out.dim() - 1)), out, better)


def _rows(value, batch: int):
    """A batch-aligned copy of a conditioning value (expanding a single row or a scalar)."""
    if not isinstance(value, Tensor):
        return value
    if value.dim() == 0:
        return value.expand(batch)
    if value.shape[0] == 1 and batch > 1:
        return value.expand(batch, *value.shape[1:])
    return value


def _stack_conditions(cond: dict, uncond: dict, batch: int) -> dict | None:
    """``cond`` and ``uncond`` stacked along the batch for one network call, or None when
    they cannot be (different keys or non-tensor values)."""
    if set(cond) != set(uncond):
        return None
    out = {}
    for k in cond:
        a, b = _rows(cond[k], batch), _rows(uncond[k], batch)
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape:
            return None
        out[k] = torch.cat([a, b])
    return out


class ClassifierFree(_Wrapper):
    """``D_u + scale * (D_c - D_u)``.

    ``uncond`` gives the keyword arguments of the unconditional branch that replace the
    caller's (default ``{"class_labels": -1}``, the null class); for text pass the empty or
    negative prompt's ``context`` and ``context_mask``. Keys the caller passes and ``uncond``
    does not mention are shared by both branches.
    """

    def __init__(self, denoiser: Callable, scale: float, *, uncond: dict | None = None, interval=None,
                 batched: bool = True):
        self.inner = denoiser
        self.scale = _check_scale(scale)
        self.uncond = {"class_labels": torch.tensor(-1)} if uncond is None else dict(uncond)
        self.interval = _check_interval(interval)
        self.batched = batched

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        if self.scale == 1:
            return self.inner(x, sigma, **cond)
        uncond = {**cond, **self.uncond}
        if self.scale == 0:
            return self.inner(x, sigma, **uncond)
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma
        guided = _in_interval(sigma, self.interval)
        if guided is not None and not guided.any():
            return self.inner(x, sigma, **cond)
        b = x.shape[0]
        both = _stack_conditions(cond, uncond, b) if self.batched else None
        if both is not None:
            d_c, d_u = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).split(b)
        else:
            d_c, d_u = self.inner(x, sigma, **cond), self.inner(x, sigma, **uncond)
        return _mix(d_u, d_c, self.scale, guided)


class Autoguidance(_Wrapper):
    """``D_weak + scale * (D_main - D_weak)``, both called with the same conditioning."""

    def __init__(self, denoiser: Callable, weak: Callable, scale: float, *, interval=None):
        self.inner = denoiser
        self.weak = weak
        self.scale = _check_scale(scale)
        self.interval = _check_interval(interval)

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        if self.scale == 1:
            return self.inner(x, sigma, **cond)
        if self.scale == 0:
            return self.weak(x, sigma, **cond)
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma
        guided = _in_interval(sigma, self.interval)
        d_main = self.inner(x, sigma, **cond)
        if guided is not None and not guided.any():
            return d_main
        return _mix(self.weak(x, sigma, **cond), d_main, self.scale, guided)


class Experts(_Wrapper):
    """``D_high`` for noise levels above ``above``, ``D`` (the inner denoiser) at and below it;
    a batch with both is split row by row. The two must denoise the same task (same sample
    shape and conditioning); each is called only on its rows."""

    def __init__(self, denoiser: Callable, high: Callable, above: float):
        self.inner = denoiser
        self.high = high
        self.above = float(above)
        if not self.above > 0 or not torch.isfinite(torch.tensor(self.above)):
            raise ValueError(f"the expert hand-off noise level must be a positive number, got {above}")

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma
        high = sigma > self.above
        if high.all():
            return self.high(x, sigma, **cond)
        if not high.any():
            return self.inner(x, sigma, **cond)
        out = torch.empty_like(x)
        for rows, den in ((high, self.high), (~high, self.inner)):
            out[rows] = den(x[rows], sigma[rows], **{k: _rows_of(v, rows, len(x)) for k, v in cond.items()}).to(x.dtype)
        return out


def _rows_of(v, rows: Tensor, n: int):
    """A batch-aligned conditioning tensor's chosen rows (shared ones, with one row, as they are)."""
    return v[rows] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n else v


class ClassifierGuidance(_Wrapper):
    """``D + scale * sigma^2 * grad_x log p(y | x, sigma)``.

    ``log_prob(x, sigma, labels) -> (B,)`` is any differentiable noise-aware classifier in
    the rescaled space; ``labels`` are fixed at construction or passed per call as
    ``class_labels`` (which are then *not* forwarded to an unconditional denoiser).
    The gradient is taken with autograd even when the sampler runs under ``no_grad``.
    """

    def __init__(self, denoiser: Callable, log_prob: Callable, scale: float, *, labels: Tensor | None = None,
                 interval=None, forward_labels: bool = False):
        self.inner = denoiser
        self.log_prob = log_prob
        self.scale = _check_scale(scale)
        self.labels = labels
        self.interval = _check_interval(interval)
        self.forward_labels = forward_labels

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        labels = cond.get("class_labels", self.labels) if self.forward_labels else \
            cond.pop("class_labels", self.labels)
        if labels is None:
            raise ValueError("classifier guidance needs class labels (labels= or class_labels=)")
        d = self.inner(x, sigma, **cond)
        if self.scale == 0:
            return d
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        sigma = sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma
        guided = _in_interval(sigma, self.interval)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = self.log_prob(xg, sigma, _rows(torch.as_tensor(labels, device=x.device), x.shape[0]))
            (grad,) = torch.autograd.grad(lp.sum(), xg)
        step = self.scale * sigma.reshape((-1,) + (1,) * (x.dim() - 1)) ** 2 * grad.to(d.dtype)
        if guided is not None:
            step = step * guided.reshape((-1,) + (1,) * (x.dim() - 1))
        return d + step


def classifier_free(denoiser: Callable, scale: float, **kwargs) -> ClassifierFree:
    return ClassifierFree(denoiser, scale, **kwargs)


def autoguidance(denoiser: Callable, weak: Callable, scale: float, **kwargs) -> Autoguidance:
    return Autoguidance(denoiser, weak, scale, **kwargs)


def classifier_guidance(denoiser: Callable, log_prob: Callable, scale: float, **kwargs) -> ClassifierGuidance:
    return ClassifierGuidance(denoiser, log_prob, scale, **kwargs)
