"""diffusers interop: a ``UNet2DModel`` and its scheduler config, as saved by diffusers'
``save_pretrained``, become an undiffuse ``Denoiser`` that every sampler can run.

The scheduler config says how the network was trained, and maps onto undiffuse's terms:

===========================  ===============================================================
scheduler config             undiffuse
===========================  ===============================================================
num_train_timesteps          ``VPDiscrete(steps=...)``: the network's time label is the index
beta_schedule                linear, scaled_linear, sigmoid; squaredcos_cap_v2 is ``cosine``
                             (Nichol & Dhariwal 2021, the same table)
beta_start, beta_end         the same
rescale_betas_zero_snr       ``zero_terminal_snr``
prediction_type              epsilon -> ``eps``, v_prediction -> ``v``, sample -> ``x0``
timestep_spacing,            the sampling grid of :func:`scheduler_sigmas` (the scheduler's own
steps_offset                 timesteps, then 0)
===========================  ===============================================================

diffusers computes its table in float32; the process here keeps that table (converted to
float64), so the network sees exactly the ``x_t`` scale and time label it was trained with.
Clipping or thresholding the predicted sample (``clip_sample``, ``thresholding``) is a
sampler-side heuristic of diffusers that undiffuse's samplers do not apply; a config asking
for it gets a warning.

Needs the ``diffusers`` extra (``pip install 'undiffuse[diffusers]'``); weights are read
from safetensors files only.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from undiffuse.core.precond import Denoiser
from undiffuse.core.process import VPDiscrete
from undiffuse.core.schedules import timesteps
from undiffuse.samplers.driver import sample

Tensor = torch.Tensor

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine",
                  "sigmoid": "sigmoid"}


#: schedulers whose ``linspace`` timesteps are rounded to integers (Euler-type ones keep fractions)
ROUNDED_LINSPACE = ("DDPMScheduler", "DDIMScheduler")


def _allowed(mapping) -> str:
    return ", ".join(mapping)


def parameterization_of(config: dict) -> str:
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type {kind!r} is not supported; allowed: {_allowed(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[kind]


def process_of(config: dict) -> VPDiscrete:
    """The discrete VP process of a DDPM/DDIM-style scheduler config (a dict), on diffusers'
    own float32 table."""
    if config.get("trained_betas") is not None:
        raise ValueError("scheduler configs with trained_betas are not supported; give a beta_schedule "
                         f"({_allowed(BETA_SCHEDULES)})")
    name = config.get("beta_schedule", "linear")
    if name not in BETA_SCHEDULES:
        raise ValueError(f"scheduler beta_schedule {name!r} is not supported; allowed: {_allowed(BETA_SCHEDULES)}")
    proc = VPDiscrete(beta_schedule=BETA_SCHEDULES[name], steps=int(config.get("num_train_timesteps", 1000)),
                      beta_start=float(config.get("beta_start", 1e-4)), beta_end=float(config.get("beta_end", 0.02)),
                      zero_terminal_snr=bool(config.get("rescale_betas_zero_snr", False)))
    # diffusers' table: float32 betas and a float32 cumulative product
    abar = torch.cumprod(1 - proc.betas.float(), 0).double()
    proc.alphas_cumprod = abar
    proc.sigmas = ((1 - abar) / abar).sqrt()
    proc._log_sigmas = proc.sigmas.log()
    proc.sigma_min = float(proc.sigmas[0])
    proc.sigma_max = float(proc.sigmas[torch.isfinite(proc.sigmas)][-1])
    return proc


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` called as an undiffuse network: ``net(x_t, t, class_labels=None)``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.unet(x, noise_label, class_labels=class_labels).sample


@dataclass
class DiffusersModel:
    denoiser: Denoiser
    scheduler_config: dict
    shape: tuple  # per-sample (C, H, W)


def _find(folder: str, sub: str, name: str) -> str:
    for path in (os.path.join(folder, sub), folder):
        if os.path.isfile(os.path.join(path, name)):
            return path
    raise FileNotFoundError(f"{folder!r} has no {name} (looked in {sub}/ and the folder itself); give a folder "
                            f"written by save_pretrained")


def load_diffusers(folder: str, *, device: str = "cpu") -> DiffusersModel:
    """A ``UNet2DModel`` with its scheduler config from ``folder`` (a saved pipeline with
    ``unet/`` and ``scheduler/``, or one folder holding both configs and the weights)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"diffusers folder {folder!r} does not exist")
    with open(os.path.join(_find(folder, "scheduler", "scheduler_config.json"), "scheduler_config.json")) as f:
        sched = json.load(f)
    unet_dir = _find(folder, "unet", "config.json")
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ImportError("loading diffusers models needs the package 'diffusers': pip install "
                          "'undiffuse[diffusers]'") from None
    if sched.get("clip_sample") or sched.get("thresholding"):
        warnings.warn("the scheduler config asks for clip_sample/thresholding of the predicted sample; undiffuse's "
                      "samplers do not clip", stacklevel=2)
    unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True).to(device).eval().requires_grad_(False)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (unet.config.in_channels, *size)
    den = Denoiser(DiffusersUNet(unet), process_of(sched), parameterization_of(sched), sample_shape=shape)
    return DiffusersModel(den, sched, shape)


def scheduler_sigmas(model: DiffusersModel, steps: int) -> Tensor:
    """Noise levels at the scheduler's own ``steps`` inference timesteps (its timestep_spacing
    and steps_offset, as DDPM/DDIM schedulers place them), then 0."""
    c = model.scheduler_config
    spacing = c.get("timestep_spacing", "leading")
    t = timesteps(model.denoiser.process, steps, spacing, steps_offset=int(c.get("steps_offset", 0)))
    if spacing == "linspace" and c.get("_class_name", "DDPMScheduler") in ROUNDED_LINSPACE:
        t = t.round()
    table = model.denoiser.process.sigmas
    sig = table[t.round().long()] if torch.equal(t, t.round()) else model.denoiser.process.sigma(t)
    return torch.cat([sig, sig.new_zeros(1)])


def sample_diffusers(model: DiffusersModel, noise: Tensor, *, sampler: str = "ddim", steps: int = 50,
                     seed=None, sigmas=None, **options) -> Tensor:
    """Sample with any undiffuse sampler from diffusers-style starting noise: ``noise`` is
    ``x_T`` at the first timestep (standard normal, as diffusers' pipelines draw it). Returns
    samples in the model's space (images in [-1, 1], not clamped)."""
    sigmas = scheduler_sigmas(model, steps) if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64)
    s0 = sigmas[0]
    # x_T = alpha (x0 + sigma eps): in the rescaled space the start is x_T / alpha = x_T sqrt(1 + s0^2);
    # ``sample`` multiplies its noise by s0
    start = noise * ((1 + s0**2).sqrt() / s0).to(noise.dtype)
    return sample(model.denoiser, start, sampler=sampler, sigmas=sigmas, seed=seed, **options)
