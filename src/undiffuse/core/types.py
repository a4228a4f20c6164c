"""What a denoiser carries, as types: the protocols samplers, schedules and metrics read.

A denoiser is any callable ``D(x, sigma, **cond) -> x0`` in the rescaled space
``x = x0 + sigma * eps`` (``sigma`` is the noise standard deviation in data units). Besides
being callable it may carry what the code around it needs to know:

* its sigma range (:class:`HasSigmaRange`), the default ends of a sampling schedule;
* its noise process (:class:`HasProcess`), for schedules uniform in the process's time and
  for the process-space likelihood;
* its per-sample shape (:class:`HasSampleShape`), checked against the noise ``sample`` gets;
* a consistency boundary (:class:`HasBoundary`), the level at which it is the identity;
* its data scale (:class:`HasSigmaData`), the prior variance posterior guidance assumes.

:class:`DenoiserLike` is the first three together with the call, the contract every denoiser
class of the package (``precond.Denoiser``, ``analytic.GaussianMixture``, the guidance and
inverse-problem wrappers) meets; ``None`` says "not known", never "absent". A plain function
``lambda x, sigma: ...`` carries none of them and is still a denoiser: the callers then take
the sigma range from their ``sigma_min=`` / ``sigma_max=`` arguments. :func:`denoiser_info` is
the one place that reads these attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .process import NoiseProcess

Tensor = torch.Tensor


@runtime_checkable
class HasSigmaRange(Protocol):
    """The noise levels the denoiser was trained for, both ends or neither."""

    #: the smallest noise level (std of the noise in the rescaled space, data units), > 0; None: not known
    sigma_min: float | None
    #: the largest noise level (same units), where sampling starts by default; None: not known
    sigma_max: float | None


@runtime_checkable
class HasProcess(Protocol):
    """The noise process the denoiser was trained with (``x_t = alpha(t) (x0 + sigma(t) eps)``)."""

    #: the process mapping its time t to sigma and alpha; None: not tied to a process
    process: NoiseProcess | None


@runtime_checkable
class HasSampleShape(Protocol):
    """The shape of one sample, without the batch axis."""

    #: e.g. (C, H, W) for images or (dim,) for vectors; None: any shape
    sample_shape: tuple[int, ...] | None


@runtime_checkable
class DenoiserLike(HasSigmaRange, HasProcess, HasSampleShape, Protocol):
    """A denoiser with its sigma range, process and sample shape (each may be None).

    ``undiffuse.Denoiser`` (a network with its preconditioning) is the one users build; an
    analytic Gaussian mixture and every guidance wrapper are others. ``isinstance(obj,
    DenoiserLike)`` checks that the attributes exist, not their types.
    """

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        """The x0 estimate for a batch ``x`` (B, ...) at per-sample noise levels ``sigma`` (B,)
        (or a scalar); ``cond`` are batch-aligned conditioning tensors (``class_labels``,
        ``context``, ...) for the models that take them."""
        ...


@runtime_checkable
class HasBoundary(Protocol):
    """A consistency model's boundary: ``D(x, sigma) = x`` for every ``sigma <= boundary_sigma``."""

    #: the boundary noise level (rescaled-space std, data units); None: an ordinary denoiser
    boundary_sigma: float | None


@runtime_checkable
class HasSigmaData(Protocol):
    """The standard deviation of the data per entry (EDM's sigma_data)."""

    #: data units (0.5 for images in [-1, 1]); None: not known
    sigma_data: float | None


class WrapsDenoiser:
    """Mixin for a denoiser that wraps another one, ``self.inner``: its sigma range, process and
    sample shape are the inner denoiser's, None where that one has none (so the wrapper is a
    ``DenoiserLike`` whenever it is called like one)."""

    inner: object

    @property
    def sigma_min(self) -> float | None:
        return self.inner.sigma_min if isinstance(self.inner, HasSigmaRange) else None

    @property
    def sigma_max(self) -> float | None:
        return self.inner.sigma_max if isinstance(self.inner, HasSigmaRange) else None

    @property
    def process(self) -> NoiseProcess | None:
        return self.inner.process if isinstance(self.inner, HasProcess) else None

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        return self.inner.sample_shape if isinstance(self.inner, HasSampleShape) else None


@dataclass(frozen=True)
class DenoiserInfo:
    """What :func:`denoiser_info` read: the denoiser's attributes, explicit arguments first."""

    kind: str  # the denoiser's type name, for messages
    sigma_min: float | None = None
    sigma_max: float | None = None
    process: NoiseProcess | None = None
    sample_shape: tuple[int, ...] | None = None
    boundary_sigma: float | None = None
    sigma_data: float | None = None

    def sigma_range(self, caller: str) -> tuple[float, float]:
        """``(sigma_min, sigma_max)``, or a ValueError naming the arguments ``caller`` takes."""
        if self.sigma_min is None or self.sigma_max is None:
            raise ValueError(f"{caller} needs sigma_min and sigma_max: the denoiser ({self.kind}) carries no sigma "
                             f"range; pass sigma_min=... and sigma_max=... to {caller}()")
        return self.sigma_min, self.sigma_max


def denoiser_info(denoiser, *, sigma_min: float | None = None, sigma_max: float | None = None) -> DenoiserInfo:
    """What ``denoiser`` carries by the protocols above; ``sigma_min``/``sigma_max`` given here
    win over the denoiser's own. A plain callable carries nothing, so its range is the arguments."""
    own_min, own_max = (denoiser.sigma_min, denoiser.sigma_max) if isinstance(denoiser, HasSigmaRange) else (None, None)
    shape = denoiser.sample_shape if isinstance(denoiser, HasSampleShape) else None
    return DenoiserInfo(
        kind=type(denoiser).__name__,
        sigma_min=own_min if sigma_min is None else sigma_min,
        sigma_max=own_max if sigma_max is None else sigma_max,
        process=denoiser.process if isinstance(denoiser, HasProcess) else None,
        sample_shape=None if shape is None else tuple(shape),
        boundary_sigma=denoiser.boundary_sigma if isinstance(denoiser, HasBoundary) else None,
        sigma_data=denoiser.sigma_data if isinstance(denoiser, HasSigmaData) else None,
    )
