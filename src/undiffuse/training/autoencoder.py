"""The first stage of latent diffusion: train a KL-regularised autoencoder
(``nets.autoencoder``) and save it as a folder that ``undiffuse.inference.codec`` loads.

Loss (Rombach et al. 2022, section 3.1 and appendix G, with mean instead of summed terms):
``mean((decode(z) - x)^2) + kl_weight * mean(KL(N(mean, exp(logvar)) || N(0, I)))`` with
``z = mean + exp(logvar / 2) * eps`` drawn from the posterior while training, so the decoder
learns to accept a neighbourhood of each latent. Images are in model space [-1, 1].
"""
from __future__ import annotations

import math

import torch

from undiffuse.config import OptimConfig, TrainConfig
from undiffuse.data.video import frames_of
from undiffuse.inference.codec import (  # noqa: F401 (public)
    FORMAT,
    AutoencoderError,
    LatentCodec,
    LatentDataset,
    load_autoencoder,
    save_autoencoder,
)
from undiffuse.nets.autoencoder import Autoencoder, AutoencoderConfig
from undiffuse.training.loop import LoopConfig, TrainingLoop, seeded

Tensor = torch.Tensor
HELD_OUT = 0.1  # share of the data kept out of training to measure the reconstruction error


# ----------------------------------------------------------------------------- training


FRAME_STRIDE = 4  # video data: the autoencoder trains on every 4th frame of each clip (neighbours are alike)

def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """Per-element KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


def split(n: int, seed: int, held_out: float = HELD_OUT) -> tuple[Tensor, Tensor]:
    """Training and held-out indices: a seeded permutation, the last ``held_out`` share held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, round(n * held_out)) if n > 1 else 0
    return perm[:n - k].sort().values, perm[n - k:].sort().values


def _images(dataset, index: Tensor) -> Tensor:
    return dataset.get(index)


@torch.no_grad()
def reconstruction_mse(net: Autoencoder, x: Tensor, batch_size: int = 256) -> float:
    """Mean squared error of ``decode(encode_mean(x))`` against ``x`` (model space)."""
    net.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(next(net.parameters()).device)
        total += float((net(xb) - xb).square().sum())
    return total / x.numel()


@torch.no_grad()
def latent_std(net: Autoencoder, x: Tensor, batch_size: int = 256) -> tuple[float, float]:
    """Mean and std over all elements of the posterior means of ``x``."""
    net.eval()
    device = next(net.parameters()).device
    z = torch.cat([net.encode(x[i:i + batch_size].to(device))[0].cpu() for i in range(0, len(x), batch_size)])
    z = z.double()
    return float(z.mean()), float(z.std())


class _ReconstructionKL:
    """The autoencoder's objective: per image, the mean squared reconstruction error of a
    posterior draw plus ``kl_weight`` times the mean KL term (see the module docstring)."""

    def __init__(self, net: Autoencoder, kl_weight: float):
        self.net, self.kl_weight = net, kl_weight
        self.last = (float("nan"), float("nan"))  # the last batch's reconstruction error and KL term

    def __call__(self, loop, x: Tensor, cond: dict) -> Tensor:
        mean, logvar = self.net.encode(x)
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=loop.gen).to(x.device)
        rec = (self.net.decode(z) - x).square().flatten(1).mean(1)
        kl = kl_divergence(mean, logvar).flatten(1).mean(1)
        self.last = (rec.mean().item(), kl.mean().item())
        return rec + self.kl_weight * kl


def train_autoencoder(dataset, out: str, *, max_steps: int | None = 2000, time_budget: float | None = None,
                      kl_weight: float = 1e-4, lr: float = 2e-3, batch_size: int = 32, seed: int = 0,
                      net_config: dict | None = None, device: str = "cpu", log=print) -> LatentCodec:
    """Train an autoencoder on the images of ``dataset`` (an ``undiffuse.data.Dataset``) and write
    it to the folder ``out``. Stops after ``max_steps`` or ``time_budget`` seconds, whichever
    comes first (at least one must be given), on ``device``. 10% of the images (seeded) are held out for the
    reported reconstruction error; the scale factor comes from the training part.

    AdamW with a 50-step linear warm-up and a cosine decay over the run (by steps, or by time
    under a budget, whichever is further along), gradients clipped to norm 1, through the
    shared ``training.loop`` (a step with a non-finite loss is skipped). Everything random
    comes from ``seed``; the caller's global random state is left as it was.
    """
    if dataset.kind == "video":  # a codec of frames: trained on every FRAME_STRIDE-th frame of every clip
        dataset = frames_of(dataset, FRAME_STRIDE)
    if dataset.kind != "image" or len(dataset.shape) != 3:
        raise ValueError(f"an autoencoder needs image (or video) data; {dataset.name!r} holds {dataset.kind}s")
    if max_steps is None and time_budget is None:
        raise ValueError("give max_steps or time_budget")
    if not kl_weight >= 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    cfg = AutoencoderConfig(in_channels=dataset.shape[0], **(net_config or {}))
    with seeded(seed):  # the initialisation (and any dropout); the caller's global generator is left alone
        net = Autoencoder(cfg).to(device)
        latent_shape = net.latent_shape(dataset.shape)  # raises on sizes the factor does not divide
        train_idx, held_idx = split(len(dataset), seed)
        loop_cfg = LoopConfig(optim=OptimConfig(lr=lr, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=50,
                                                schedule="cosine", min_lr_ratio=0.0, grad_clip=1.0,
                                                batch_size=batch_size),
                              train=TrainConfig(max_steps=max_steps, time_budget=time_budget, seed=seed))
        gen = torch.Generator().manual_seed(seed)  # batches, then the posterior draws
        objective = _ReconstructionKL(net, kl_weight)

        def batches() -> tuple[Tensor, Tensor, dict]:
            index = train_idx[torch.randint(len(train_idx), (batch_size,), generator=gen)]
            return index, _images(dataset, index).to(device), {}

        loop = TrainingLoop(loop_cfg, net, objective, gen=gen, batches=batches, log=log, schedule_by="larger")
        recent = []

        def report(loss: float | None) -> None:
            recent.append(objective.last)
            if loop.step % 200 == 0:
                r, k = (sum(v) / len(recent) for v in zip(*recent))
                log(f"autoencoder step {loop.step}: reconstruction mse {r:.5f}, kl {k:.3f} ({loop.elapsed:.0f} s)")
                recent.clear()

        loop.train_until_done(report)
    step, elapsed = loop.step, loop.elapsed
    train_x, held_x = _images(dataset, train_idx), _images(dataset, held_idx)
    mu, std = latent_std(net, train_x)
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"the trained autoencoder's latents are degenerate (std {std}); lower the learning rate")
    meta = {"format": FORMAT, "config": net.config_dict(), "scale_factor": 1.0 / std,
            "latent_mean": mu, "latent_std": std,
            "image_shape": list(dataset.shape), "latent_shape": list(latent_shape),
            "data": {"name": dataset.name, "size": len(dataset), "train": len(train_idx), "held_out": len(held_idx),
                     "split_seed": seed},
            "training": {"steps": step, "seconds": elapsed, "kl_weight": kl_weight, "lr": lr,
                         "batch_size": batch_size, "seed": seed},
            "reconstruction_mse": {"held_out": reconstruction_mse(net, held_x),
                                   "train": reconstruction_mse(net, train_x),
                                   "space": "model space [-1, 1]"}}
    save_autoencoder(out, net.cpu(), meta)
    with torch.random.fork_rng(devices=[]):  # loading builds a network: initial weights drawn, then replaced
        return load_autoencoder(out)


