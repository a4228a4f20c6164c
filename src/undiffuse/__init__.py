"""undiffuse: train, sample, steer and measure diffusion models in one convention.

Every process is ``x_t = alpha(t) (x0 + sigma(t) eps)``; every model is a denoiser
``D(x, sigma) -> x0``; every sampler is ``fn(denoiser, x, sigmas, ...)``.
"""
from . import analytic, degradations, guidance, inverse, precond, process, samplers, schedules
from .precond import Denoiser
from .sampling import noise, sample

__version__ = "0.1.0"

__all__ = ["Denoiser", "analytic", "degradations", "guidance", "inverse", "noise", "precond", "process", "sample",
           "samplers", "schedules", "__version__"]
