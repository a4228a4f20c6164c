"""The sampling driver: ``undiffuse.sample(denoiser, noise, ...)`` picks the sigmas, checks the
input and runs one sampler from the registry."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from undiffuse import samplers as _samplers
from undiffuse.core import schedules as _schedules
from undiffuse.core.noise import per_sample_generators, seeds_for

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
    denoiser's own (``Denoiser`` and analytic models carry them). ``seed`` gives the fresh
    noise of stochastic samplers one generator per sample (``seed + i``), so sample i is the
    same whatever the batch size. ``sigmas`` (or a list as ``schedule``) bypasses the named
    schedules. Remaining keyword ``options`` go to the sampler (see ``samplers.options``).
    """
    info = _samplers.info(sampler)
    if not isinstance(noise, Tensor) or not noise.is_floating_point():
        raise ValueError(f"noise must be a floating-point torch.Tensor, got {type(noise).__name__}"
                         + (f" of dtype {noise.dtype}" if isinstance(noise, Tensor) else ""))
    if noise.dim() < 2:
        raise ValueError(f"noise must have shape (batch, ...) with at least 2 dimensions, got {tuple(noise.shape)}")
    expected = getattr(denoiser, "sample_shape", None)
    if expected is not None and tuple(noise.shape[1:]) != tuple(expected):
        raise ValueError(f"noise has per-sample shape {tuple(noise.shape[1:])} but the denoiser expects {tuple(expected)}")
    unknown = set(options) - set(_samplers.options(sampler))
    if unknown:
        raise ValueError(f"sampler {sampler!r} has no option(s) {sorted(unknown)}; "
                         f"allowed: {', '.join(_samplers.options(sampler)) or 'none'}")
    if sigmas is None:
        if isinstance(schedule, str):
            sigma_min = getattr(denoiser, "sigma_min", None) if sigma_min is None else sigma_min
            sigma_max = getattr(denoiser, "sigma_max", None) if sigma_max is None else sigma_max
        sigmas = _schedules.get_sigmas(schedule, steps, sigma_min=sigma_min, sigma_max=sigma_max,
                                       process=getattr(denoiser, "process", None), **(schedule_options or {}))
    else:
        sigmas = _schedules.validate(torch.as_tensor(sigmas, dtype=torch.float64))
    sigmas = sigmas.to(noise.device)
    generator = None
    if seed is not None:
        generator = per_sample_generators(seeds_for(seed, noise.shape[0]), device=noise.device.type)
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
