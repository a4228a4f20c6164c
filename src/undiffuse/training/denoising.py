"""The diffusion loss as a training objective (the trainer's default, ``objective.kind
denoising``): per sample a noise level drawn as ``diffusion.noise_sampling`` says and
standard normal noise, then the weighted loss of ``core.losses.denoising_loss``.

A dataset that pairs every item with its own noise (:class:`PairedNoise`: reflow's
couplings, ``fewstep.reflow.PairedDataset``) gives that noise instead of a fresh draw.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from undiffuse.config import DiffusionConfig
from undiffuse.core.losses import denoising_loss, sample_sigma
from undiffuse.utils import acceleration as accel

Tensor = torch.Tensor


@runtime_checkable
class PairedNoise(Protocol):
    def noise_of(self, index) -> Tensor:
        """The noise paired with the items ``index`` (rows shaped like the items)."""


class DenoisingObjective:
    """Per-sample denoising loss for the trainer (``objective(trainer, x0, cond) -> (B,)``).

    ``settings``: the run's ``diffusion`` group. ``loss`` and ``noise_levels``: the per-sample
    loss and the noise-level draw, with the signatures of ``core.losses.denoising_loss`` and
    ``core.losses.sample_sigma`` (these by default).

    Draws, in this order, from ``trainer.gen`` for the whole micro-batch (this process keeps
    its rows): the noise levels, then the noise (none for paired data).
    """

    def __init__(self, settings: DiffusionConfig, *, loss=denoising_loss, noise_levels=sample_sigma):
        self.s, self.loss, self.noise_levels = settings, loss, noise_levels

    def __call__(self, trainer, x0: Tensor, cond: dict) -> Tensor:
        s, batch, device = self.s, trainer.batch, trainer.device
        sigma = batch.rows_of(self.noise_levels(s.noise_sampling, batch.size, trainer.denoiser.process, trainer.gen,
                                                p_mean=s.p_mean, p_std=s.p_std, u_a=s.u_a)).to(device)
        if isinstance(trainer.data, PairedNoise):  # e.g. reflow couplings: no draw
            eps = trainer.data.noise_of(batch.rows_of(batch.index)).to(device=device, dtype=x0.dtype)
        else:
            eps = accel.to_device(batch.rows_of(torch.randn((batch.size, *x0.shape[1:]), generator=trainer.gen)),
                                  device)
        return self.loss(trainer.denoiser, x0, sigma, eps, weighting=s.weighting, min_snr_gamma=s.min_snr_gamma,
                         distance=s.distance, huber_c=s.huber_c, **cond)
