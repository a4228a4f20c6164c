"""undiffuse: train, sample, steer and measure diffusion models in one convention.

Every process is ``x_t = alpha(t) (x0 + sigma(t) eps)``; every model is a denoiser
``D(x, sigma) -> x0``; every sampler is ``fn(denoiser, x, sigmas, ...)``.

The package is layered (README, "Architecture"); users import the public names below and
the public modules of :data:`PUBLIC_MODULES` by their short paths (``undiffuse.process``,
``from undiffuse.train import Trainer``), which stay put whatever the folders inside do.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from undiffuse import samplers
from undiffuse.core import analytic, precond, process, schedules
from undiffuse.core.noise import noise
from undiffuse.core.precond import Denoiser
from undiffuse.core.types import DenoiserLike
from undiffuse.samplers.driver import sample
from undiffuse.steering import degradations, guidance, inverse
from undiffuse.utils.version import __version__

# The short public path of a module -> where it lives. The README and users' scripts import
# these; the layout may move the module, never the public path.
PUBLIC_MODULES = {
    "analytic": "undiffuse.core.analytic",
    "autoencoder": "undiffuse.training.autoencoder",
    "calibrate": "undiffuse.fewstep.calibrate",
    "checkpoint": "undiffuse.io.checkpoint",
    "classifier": "undiffuse.training.classifier",
    "conditioning": "undiffuse.steering.conditioning",
    "degradations": "undiffuse.steering.degradations",
    "distill": "undiffuse.fewstep.distill",
    "export": "undiffuse.inference.export",
    "generate": "undiffuse.inference.generate",
    "guidance": "undiffuse.steering.guidance",
    "interop": "undiffuse.inference.interop",
    "inverse": "undiffuse.steering.inverse",
    "losses": "undiffuse.core.losses",
    "precond": "undiffuse.core.precond",
    "process": "undiffuse.core.process",
    "provenance": "undiffuse.io.provenance",
    "reflow": "undiffuse.fewstep.reflow",
    "schedules": "undiffuse.core.schedules",
    "text": "undiffuse.steering.text",
    "train": "undiffuse.training.trainer",
    "watermark": "undiffuse.io.watermark",
}


class _PublicPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import undiffuse.NAME`` for a name in :data:`PUBLIC_MODULES` gives the module where it
    lives (the same module object, so patching one patches the other)."""

    def find_spec(self, fullname, path=None, target=None):
        name = fullname.partition("undiffuse.")[2]
        if fullname.startswith("undiffuse.") and name in PUBLIC_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(PUBLIC_MODULES[spec.name.partition("undiffuse.")[2]])
        self._own_spec = module.__spec__  # the import system sets __spec__ to the alias's; put it back
        return module

    def exec_module(self, module):
        module.__spec__ = self._own_spec  # already executed where it lives


if not any(isinstance(f, _PublicPaths) for f in sys.meta_path):
    sys.meta_path.append(_PublicPaths())


def __getattr__(name: str):
    """``undiffuse.NAME`` (attribute access) for the public modules not imported above."""
    if name in PUBLIC_MODULES:
        return importlib.import_module(PUBLIC_MODULES[name])
    raise AttributeError(f"module 'undiffuse' has no attribute {name!r}")


__all__ = ["Denoiser", "DenoiserLike", "PUBLIC_MODULES", "analytic", "degradations", "guidance", "inverse", "noise",
           "precond", "process", "sample", "samplers", "schedules", "__version__"]
