"""Measurement operators for inverse problems: ``y = A(x) + noise_std * z``.

Every operator is a differentiable torch function of ``x`` (autograd flows through it), so
posterior guidance can differentiate ``||y - A(D(x))||^2`` through the denoiser. Each offers

* ``__call__(x) -> y``: the forward map A;
* ``transpose(y) -> x``: the adjoint A^T, so that ``<A x, y> = <x, A^T y>``. By default it is
  computed with autograd (a vector-Jacobian product), which is exact for linear maps;
* ``pseudo_inverse(y) -> x``: the Moore-Penrose inverse A^+ where it is cheap and well
  conditioned (mask, down-sampling, identity; not blur);
* ``gram_scale(y)``: the constant c when ``A A^T = c I`` on the range of A, else None;
* ``measure(x, generator)``: a simulated noisy measurement;
* ``params()``: JSON-friendly metadata.

Spatial axes: a batch of vectors ``(B, D)`` has one spatial axis (D); anything with three or
more axes is ``(B, C, *spatial)``, e.g. images ``(B, C, H, W)`` have two (H, W).
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from undiffuse.core.noise import randn_like

Tensor = torch.Tensor

NAMES = ("mask", "downsample", "blur", "noise")
PADDINGS = ("reflect", "zeros")


def _spatial_axes(shape) -> tuple[int, ...]:
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"expected a batch (B, D) or (B, C, ...), got shape {tuple(shape)}")
    return (1,) if ndim == 2 else tuple(range(2, ndim))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _non_negative(name: str, value) -> float:
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class Operator:
    """Base class: a linear measurement map A with measurement noise of std ``noise_std``."""

    name = "operator"

    def __init__(self, noise_std: float = 0.0):
        self.noise_std = _non_negative("noise_std", noise_std)  # std of the additive Gaussian noise on y

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def input_shape(self, measurement_shape) -> tuple[int, ...]:
        """Shape of the x that produces a measurement of ``measurement_shape``."""
        return tuple(measurement_shape)

    def transpose(self, y: Tensor) -> Tensor:
        """A^T y as the vector-Jacobian product of A (exact because A is linear)."""
        with torch.enable_grad():
            x = torch.zeros(self.input_shape(y.shape), dtype=y.dtype, device=y.device, requires_grad=True)
            (out,) = torch.autograd.grad(self(x), x, grad_outputs=y, create_graph=y.requires_grad)
        return out

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError(f"operator {self.name!r} has no cheap pseudo-inverse")

    def gram_scale(self, y: Tensor) -> float | None:
        return None

    def measure(self, x: Tensor, generator=None) -> Tensor:
        """A(x) plus Gaussian noise of std ``noise_std`` (per-sample generators allowed)."""
        y = self(x)
        return y + self.noise_std * randn_like(y, generator) if self.noise_std > 0 else y

    def params(self) -> dict:
        return {"name": self.name, "noise_std": self.noise_std}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"


class Identity(Operator):
    """A = I: pure denoising of ``y = x + noise_std * z``."""

    name = "noise"

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def transpose(self, y: Tensor) -> Tensor:
        return y

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        return y

    def gram_scale(self, y: Tensor) -> float:
        return 1.0


class Mask(Operator):
    """Keep the observed entries (mask 1) and zero the rest: ``A x = mask * x``.

    ``mask`` holds only 0 and 1 (bool or numbers) and must broadcast to x without changing
    x's shape, e.g. ``(H, W)``, ``(1, H, W)`` or ``(B, C, H, W)`` for images. A is a diagonal
    projection, so A = A^T = A^+ and ``A A^T = I`` on the observed entries (the range of A).
    """

    name = "mask"

    def __init__(self, mask, noise_std: float = 0.0):
        super().__init__(noise_std)
        mask = torch.as_tensor(mask)
        if mask.dim() == 0 or mask.numel() == 0:
            raise ValueError(f"mask must be a non-empty tensor, got shape {tuple(mask.shape)}")
        values = mask.to(torch.float64)
        if not torch.isfinite(values).all() or not ((values == 0) | (values == 1)).all():
            bad = values[~((values == 0) | (values == 1))]
            raise ValueError(f"mask must contain only 0 (missing) and 1 (observed), got e.g. {float(bad[0])}")
        self.mask = mask.bool()

    def check(self, x: Tensor) -> None:
        """Raise ValueError unless the mask broadcasts to x's shape unchanged."""
        try:
            shape = torch.broadcast_shapes(self.mask.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise ValueError(f"mask of shape {tuple(self.mask.shape)} does not fit data of shape {tuple(x.shape)}: "
                             f"it must broadcast to the data's shape (same trailing sizes, or 1)")

    def __call__(self, x: Tensor) -> Tensor:
        self.check(x)
        return x * self.mask.to(device=x.device, dtype=x.dtype)

    def transpose(self, y: Tensor) -> Tensor:
        return self(y)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        return self(y)

    def gram_scale(self, y: Tensor) -> float:
        return 1.0

    def params(self) -> dict:
        return {**super().params(), "shape": list(self.mask.shape),
                "observed_fraction": float(self.mask.float().mean())}


class Downsample(Operator):
    """Average pooling by an integer ``factor`` along every spatial axis.

    The spatial sizes must be multiples of ``factor`` (no implicit resizing: a ValueError
    says which size does not divide). With k spatial axes, ``A A^T = I / factor^k``, so
    A^+ = factor^k A^T is nearest-neighbour up-sampling and A^T is that divided by factor^k.
    """

    name = "downsample"

    def __init__(self, factor: int, noise_std: float = 0.0):
        super().__init__(noise_std)
        if not _is_int(factor) or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)

    def __call__(self, x: Tensor) -> Tensor:
        f = self.factor
        for axis in _spatial_axes(x.shape):
            n = x.shape[axis]
            if n % f:
                raise ValueError(f"factor {f} does not divide size {n} of axis {axis} (data shape {tuple(x.shape)}); "
                                 f"crop or pad the data to a multiple of {f}")
            x = x.reshape(*x.shape[:axis], n // f, f, *x.shape[axis + 1:]).mean(axis + 1)
        return x

    def input_shape(self, measurement_shape) -> tuple[int, ...]:
        shape = list(measurement_shape)
        for axis in _spatial_axes(shape):
            shape[axis] *= self.factor
        return tuple(shape)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        for axis in _spatial_axes(y.shape):
            y = y.repeat_interleave(self.factor, dim=axis)
        return y

    def transpose(self, y: Tensor) -> Tensor:
        return self.pseudo_inverse(y) / self.factor ** len(_spatial_axes(y.shape))

    def gram_scale(self, y: Tensor) -> float:
        return 1.0 / self.factor ** len(_spatial_axes(y.shape))

    def params(self) -> dict:
        return {**super().params(), "factor": self.factor}


class GaussianBlur(Operator):
    """Same-size separable Gaussian blur of std ``sigma_px`` pixels along every spatial axis.

    ``size`` is the (odd) kernel width, by default ``2 * ceil(3 * sigma_px) + 1``; the kernel
    is normalised to sum to 1. ``padding="reflect"`` mirrors the border (a constant image stays
    constant; each spatial size must exceed size // 2), ``"zeros"`` pads with 0 (darkens the
    border, but A is then symmetric). A^T is the autograd adjoint; there is no pseudo-inverse
    (deblurring is ill-conditioned: use posterior sampling).
    """

    name = "blur"

    def __init__(self, sigma_px: float, size: int | None = None, padding: str = "reflect", noise_std: float = 0.0):
        super().__init__(noise_std)
        if not _is_real(sigma_px) or not math.isfinite(sigma_px) or sigma_px <= 0:
            raise ValueError(f"sigma_px must be a finite number > 0, got {sigma_px!r}")
        size = 2 * math.ceil(3 * sigma_px) + 1 if size is None else size
        if not _is_int(size) or size < 1 or size % 2 == 0:
            raise ValueError(f"size must be an odd positive integer, got {size!r}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        self.sigma_px, self.size, self.padding = float(sigma_px), int(size), padding
        offsets = torch.arange(size, dtype=torch.float64) - size // 2
        kernel = torch.exp(-0.5 * (offsets / self.sigma_px) ** 2)
        self.kernel = kernel / kernel.sum()  # (size,)

    def __call__(self, x: Tensor) -> Tensor:
        half = self.size // 2
        kernel = self.kernel.to(device=x.device, dtype=x.dtype).view(1, 1, -1)
        for axis in _spatial_axes(x.shape):
            n = x.shape[axis]
            if self.padding == "reflect" and half >= n:
                raise ValueError(f"reflect padding needs every spatial size > size // 2 = {half}, "
                                 f"got {n} on axis {axis} (data shape {tuple(x.shape)})")
            moved = x.movedim(axis, -1)
            flat = moved.reshape(-1, 1, n)  # (rows, 1, n)
            padded = F.pad(flat, (half, half), mode="reflect" if self.padding == "reflect" else "constant")
            x = F.conv1d(padded, kernel).reshape(moved.shape).movedim(-1, axis)
        return x

    def params(self) -> dict:
        return {**super().params(), "sigma_px": self.sigma_px, "size": self.size, "padding": self.padding}


_CLASSES = {"mask": Mask, "downsample": Downsample, "blur": GaussianBlur, "noise": Identity}


def names() -> list[str]:
    return list(NAMES)


def get(name: str, **params) -> Operator:
    """Build an operator by name: ``mask`` (mask=...), ``downsample`` (factor=...), ``blur``
    (sigma_px=..., size=..., padding=...), ``noise`` (identity; noise_std=...). Every operator
    also takes ``noise_std``."""
    if name not in _CLASSES:
        raise ValueError(f"unknown degradation {name!r}; allowed: {', '.join(NAMES)}")
    return _CLASSES[name](**params)
