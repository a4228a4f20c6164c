"""The first stage of latent diffusion: train a KL-regularised autoencoder
(``nets.autoencoder``) and save it as a folder that ``undiffuse.inference.codec`` loads.

Loss (Rombach et al. 2022, section 3.1 and appendix G, with mean instead of summed terms):
``mean((decode(z) - x)^2) + kl_weight * mean(KL(N(mean, exp(logvar)) || N(0, I)))`` with
``z = mean + exp(logvar / 2) * eps`` drawn from the posterior while training, so the decoder
learns to accept a neighbourhood of each latent. Images are in model space [-1, 1].
"""
from __future__ import annotations

import math
import time

import torch

from undiffuse.inference.codec import (  # noqa: F401 (public)
    FORMAT,
    AutoencoderError,
    LatentCodec,
    LatentDataset,
    load_autoencoder,
    save_autoencoder,
)
from undiffuse.nets.autoencoder import Autoencoder, AutoencoderConfig

Tensor = torch.Tensor
HELD_OUT = 0.1  # share of the data kept out of training to measure the reconstruction error


# ----------------------------------------------------------------------------- training


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


def train_autoencoder(dataset, out: str, *, max_steps: int | None = 2000, time_budget: float | None = None,
                      kl_weight: float = 1e-4, lr: float = 2e-3, batch_size: int = 32, seed: int = 0,
                      net_config: dict | None = None, device: str = "cpu", log=print) -> LatentCodec:
    """Train an autoencoder on the images of ``dataset`` (an ``undiffuse.data.Dataset``) and write
    it to the folder ``out``. Stops after ``max_steps`` or ``time_budget`` seconds, whichever
    comes first (at least one must be given), on ``device``. 10% of the images (seeded) are held out for the
    reported reconstruction error; the scale factor comes from the training part.

    AdamW with a 50-step linear warm-up and a cosine decay over the run (by steps, or by time
    under a budget); gradients clipped to norm 1. Everything random comes from ``seed``.
    """
    if dataset.kind != "image" or len(dataset.shape) != 3:
        raise ValueError(f"an autoencoder needs image data; {dataset.name!r} holds {dataset.kind}s")
    if max_steps is None and time_budget is None:
        raise ValueError("give max_steps or time_budget")
    if not kl_weight >= 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    torch.manual_seed(seed)
    cfg = AutoencoderConfig(in_channels=dataset.shape[0], **(net_config or {}))
    net = Autoencoder(cfg).to(device)
    latent_shape = net.latent_shape(dataset.shape)  # raises on sizes the factor does not divide
    train_idx, held_idx = split(len(dataset), seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    step, elapsed, recent = 0, 0.0, []
    warmup = 50
    while (max_steps is None or step < max_steps) and (time_budget is None or elapsed < time_budget):
        t0 = time.perf_counter()
        progress = step / max_steps if max_steps is not None else elapsed / time_budget
        if max_steps is not None and time_budget is not None:
            progress = max(progress, elapsed / time_budget)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        net.train()
        x = _images(dataset, train_idx[torch.randint(len(train_idx), (batch_size,), generator=gen)]).to(device)
        mean, logvar = net.encode(x)
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=gen).to(device)
        rec = (net.decode(z) - x).square().mean()
        kl = kl_divergence(mean, logvar).mean()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed += time.perf_counter() - t0
        recent.append((rec.item(), kl.item()))
        if step % 200 == 0:
            r, k = (sum(v) / len(recent) for v in zip(*recent))
            log(f"autoencoder step {step}: reconstruction mse {r:.5f}, kl {k:.3f} ({elapsed:.0f} s)")
            recent = []
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
    return load_autoencoder(out)


