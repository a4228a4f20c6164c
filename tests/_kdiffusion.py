"""k-diffusion's ``sampling.py`` as a test-only reference, loaded by file path.

k-diffusion 0.1.1.post1 pulls torchvision, CLIP, wandb and more when imported as a package, so
the project installs it without its dependencies (``pip install --no-deps``; see the Makefile)
and reads only ``k_diffusion/sampling.py``. That file imports three things this needs none of:
``torchdiffeq`` (its log-likelihood), ``torchsde`` (its Brownian-tree noise, replaced here by
a matched ``noise_sampler``) and the package's own ``utils`` (of which the samplers use only
``append_dims``). Those are stand-ins while the file is executed, then removed from
``sys.modules`` again, so nothing else sees them.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import sys
import types

VERSION = "0.1.1.post1"  # the version the cross-checks were written against (Makefile installs it)
_PACKAGE = "_kdiffusion_reference"  # a private name: never the real (unimportable) k_diffusion


def _unavailable(name: str):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{name} is a stand-in in the k-diffusion cross-check; pass a noise_sampler")
    return fail


def _append_dims(x, target_dims: int):
    """What k-diffusion's utils.append_dims does: trailing singleton dimensions up to target_dims."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


@functools.lru_cache(maxsize=1)
def sampling() -> types.ModuleType | None:
    """k-diffusion's sampling module, or None when k-diffusion is not installed."""
    try:
        dist = importlib.metadata.distribution("k-diffusion")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = dist.locate_file("k_diffusion/sampling.py")
    package = types.ModuleType(_PACKAGE)
    package.__path__ = []
    utils = types.ModuleType(f"{_PACKAGE}.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    torchdiffeq = types.ModuleType("torchdiffeq")
    torchdiffeq.odeint = _unavailable("torchdiffeq.odeint")
    torchsde = types.ModuleType("torchsde")
    torchsde.BrownianTree = _unavailable("torchsde.BrownianTree")
    stand_ins = {_PACKAGE: package, f"{_PACKAGE}.utils": utils, "torchdiffeq": torchdiffeq, "torchsde": torchsde}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.sampling", path)
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules.update(stand_ins)
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module


def version() -> str | None:
    try:
        return importlib.metadata.version("k-diffusion")
    except importlib.metadata.PackageNotFoundError:
        return None
