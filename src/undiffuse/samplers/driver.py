"""The sampling driver: ``undiffuse.sample(denoiser, noise, ...)`` picks the sigmas, checks the
input and runs one sampler from the registry."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from undiffuse import samplers as _samplers
from undiffuse.core import schedules as _schedules
from undiffuse.core.noise import SeededNoise, seeds_for
from undiffuse.core.types import denoiser_info

Tensor = torch.Tensor


def sample(denoiser: Callable, noise: Tensor, sampler: str = "dpmpp_2m", steps: int = 10,
           schedule: str | Sequence[float] | Tensor = "karras", sigma_min: float | None = None,
           sigma_max: float | None = None, seed: int | Sequence[int] | None = None, *,
           sigmas: Tensor | Sequence[float] | None = None, callback: Callable | None = None,
           progress: bool = False, extra: dict | None = None, schedule_options: dict | None = None,
           **options) -> Tensor:
    """Draw samples from any denoiser.

    ``noise`` is standard normal in the output's shape ``(batch, ...)``; it is scaled to the
    first sigma of the schedule here. ``denoiser(x, sigma)`` takes a batch and a per-sample
    sigma tensor and returns the x0 estimate. ``sigma_min``/``sigma_max`` default to the
    denoiser's own (a ``DenoiserLike``: ``Denoiser`` carries its process's range); a plain
    callable needs them passed. ``seed`` gives the fresh noise of stochastic samplers one
    stream per sample (seeded from ``seed + i``, see ``core.noise.SeededNoise``), so sample i is
    the same whatever the batch size. ``sigmas`` (or a list as ``schedule``) bypasses the named
    schedules. Remaining keyword ``options`` go to the sampler (see ``samplers.options``).
    """
    info = _samplers.info(sampler)
    if not isinstance(noise, Tensor) or not noise.is_floating_point():
        raise ValueError(f"noise must be a floating-point torch.Tensor, got {type(noise).__name__}"
                         + (f" of dtype {noise.dtype}" if isinstance(noise, Tensor) else ""))
    if noise.dim() < 2:
        raise ValueError(f"noise must have shape (batch, ...) with at least 2 dimensions, got {tuple(noise.shape)}")
    expected = denoiser_info(denoiser).sample_shape
    if expected is not None and tuple(noise.shape[1:]) != expected:
        raise ValueError(f"noise has per-sample shape {tuple(noise.shape[1:])} but the denoiser expects {expected}")
    unknown = set(options) - set(_samplers.options(sampler))
    if unknown:
        raise ValueError(f"sampler {sampler!r} has no option(s) {sorted(unknown)}; "
                         f"allowed: {', '.join(_samplers.options(sampler)) or 'none'}")
    if sigmas is None:
        sigmas = schedule_of(denoiser, schedule, steps, sigma_min, sigma_max, schedule_options, caller="sample")
    else:
        sigmas = _schedules.validate(torch.as_tensor(sigmas, dtype=torch.float64))
    sigmas = sigmas.to(noise.device)
    generator = None
    if seed is not None:  # sample i's fresh noise from seed i alone, drawn a block of steps at a time
        generator = SeededNoise(seeds_for(seed, noise.shape[0]), draws=len(sigmas) - 1, device=noise.device.type)
    bar = None
    if progress:
        bar = tqdm(total=len(sigmas) - 1, desc=sampler, unit="step")
    user_callback = callback

    def _callback(state):
        if bar is not None:
            bar.update(1)
        if user_callback is not None:
            user_callback(state)

    try:
        with torch.no_grad():
            x = noise * sigmas[0].to(noise.dtype)
            return info.fn(denoiser, x, sigmas, generator=generator, callback=_callback, extra=extra, **options)
    finally:
        if bar is not None:
            bar.close()


def schedule_of(denoiser: Callable, schedule: str | Sequence[float] | Tensor, steps: int,
                sigma_min: float | None = None, sigma_max: float | None = None, schedule_options: dict | None = None,
                *, caller: str = "sample") -> Tensor:
    """The sigma grid :func:`sample` runs for these arguments (the denoiser's range and process
    fill what is not given); a named schedule that needs a range the denoiser does not carry
    is a ValueError naming ``caller``'s ``sigma_min``/``sigma_max`` arguments."""
    info = denoiser_info(denoiser, sigma_min=sigma_min, sigma_max=sigma_max)
    if (isinstance(schedule, str) and schedule in _schedules.names() and schedule != "custom"
            and schedule not in _schedules._NEEDS_PROCESS and info.process is None):
        info.sigma_range(caller)
    return _schedules.get_sigmas(schedule, steps, sigma_min=info.sigma_min, sigma_max=info.sigma_max,
                                 process=info.process, **(schedule_options or {}))
