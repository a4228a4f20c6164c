"""The first stage of latent diffusion: train, save and load a KL-regularised autoencoder
(``nets.autoencoder``), and turn an image dataset into a dataset of scaled latents.

Loss (Rombach et al. 2022, section 3.1 and appendix G, with mean instead of summed terms):
``mean((decode(z) - x)^2) + kl_weight * mean(KL(N(mean, exp(logvar)) || N(0, I)))`` with
``z = mean + exp(logvar / 2) * eps`` drawn from the posterior while training, so the decoder
learns to accept a neighbourhood of each latent. Images are in model space [-1, 1].

At use the posterior *mean* is the latent (deterministic), multiplied by the **scale factor**
``1 / std`` of the training set's latents (all elements together), so that the diffusion model
sees data of unit standard deviation (Rombach et al. 2022, section 4.3.2); ``decode`` divides
it out again.

An autoencoder folder holds::

    DIR/autoencoder.safetensors   the network's weights
    DIR/autoencoder.json          format tag, network config, scale factor, image and latent
                                  shapes, data, training settings, held-out reconstruction error,
                                  SHA-256 of the weights file

both written atomically (the JSON last, so a folder with a JSON is complete).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import torch

from . import checkpoint as ckpt
from ._io import write_json
from .nets.autoencoder import Autoencoder, AutoencoderConfig

Tensor = torch.Tensor
FORMAT = "undiffuse-autoencoder"
WEIGHTS = "autoencoder.safetensors"
META = "autoencoder.json"
HELD_OUT = 0.1  # share of the data kept out of training to measure the reconstruction error


class AutoencoderError(ValueError):
    """A folder that is not a usable autoencoder; the message names the path and the reason."""


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class LatentCodec:
    """A loaded autoencoder with its scale factor: ``encode`` images -> scaled latents,
    ``decode`` scaled latents -> images (model space). No gradients, evaluation mode."""

    def __init__(self, net: Autoencoder, meta: dict, path: str | None = None):
        self.net = net.eval().requires_grad_(False)
        self.meta = meta
        self.path = path
        self.scale_factor = float(meta["scale_factor"])
        self.image_shape = tuple(meta["image_shape"])
        self.latent_shape = tuple(meta["latent_shape"])
        self.sha256 = meta.get("sha256")

    @torch.no_grad()
    def encode(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] -> posterior means times the scale factor."""
        dev = next(self.net.parameters()).device
        out = [self.net.encode(x[i:i + batch_size].to(dev, torch.float32))[0] for i in range(0, len(x), batch_size)]
        return torch.cat(out) * self.scale_factor

    @torch.no_grad()
    def decode(self, z: Tensor, batch_size: int = 256) -> Tensor:
        """Scaled latents -> images in model space (about [-1, 1], not clamped)."""
        dev = next(self.net.parameters()).device
        out = [self.net.decode(z[i:i + batch_size].to(dev, torch.float32) / self.scale_factor)
               for i in range(0, len(z), batch_size)]
        return torch.cat(out)


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


# ----------------------------------------------------------------------------- files


def save_autoencoder(out: str, net: Autoencoder, meta: dict) -> None:
    """Weights, then the JSON with their SHA-256 (written last, atomically)."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, WEIGHTS)
    ckpt.save_tensors(path, net.state_dict(), metadata={"format": FORMAT})
    write_json(os.path.join(out, META), {**meta, "sha256": file_sha256(path)})


def load_autoencoder(path: str, device: str = "cpu", *, expect_sha256: str | None = None) -> LatentCodec:
    """Load an autoencoder folder written by :func:`train_autoencoder`. Raises
    ``AutoencoderError`` for a missing folder, a folder that is not an autoencoder, weights
    whose checksum differs from the one recorded (or from ``expect_sha256``)."""
    if not os.path.isdir(path):
        raise AutoencoderError(f"autoencoder {path!r} does not exist (or is not a folder); train one with "
                               f"`undiffuse train-autoencoder --data NAME --out DIR`")
    meta_path, weights = os.path.join(path, META), os.path.join(path, WEIGHTS)
    if not (os.path.isfile(meta_path) and os.path.isfile(weights)):
        raise AutoencoderError(f"{path!r} is not an autoencoder folder: it needs {META} and {WEIGHTS} "
                               f"(made by `undiffuse train-autoencoder`)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AutoencoderError(f"{meta_path} is not readable JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AutoencoderError(f"{meta_path} is not an autoencoder description (format tag {FORMAT!r} missing)")
    digest = file_sha256(weights)
    for want, what in ((meta.get("sha256"), f"the checksum recorded in {META}"),
                       (expect_sha256, "the checksum recorded by the latent run")):
        if want is not None and want != digest:
            raise AutoencoderError(f"{weights} has changed: its SHA-256 is {digest[:16]}..., {what} is "
                                   f"{want[:16]}...; use the autoencoder the run was trained with")
    try:
        net = Autoencoder(AutoencoderConfig(**meta["config"]))
        net.load_state_dict(ckpt.load_tensors(weights, device))
    except (KeyError, TypeError, RuntimeError, ckpt.CheckpointError) as e:
        raise AutoencoderError(f"{path!r}: cannot build the autoencoder from its files: {e}") from None
    return LatentCodec(net.to(device), meta, os.path.abspath(path))


# ----------------------------------------------------------------------------- latent data


class LatentDataset:
    """The images of ``dataset`` encoded once by ``codec``; to the trainer it looks like an image
    ``Dataset`` of shape ``codec.latent_shape`` (``get`` returns the scaled latents). ``pixels``
    is the image dataset, against which evaluations score decoded samples; ``to_unit`` decodes."""

    kind = "image"

    def __init__(self, dataset, codec: LatentCodec):
        if tuple(dataset.shape) != codec.image_shape:
            raise ValueError(f"the autoencoder {codec.path or ''} was trained on images of shape {codec.image_shape} "
                             f"({codec.meta.get('data', {}).get('name')}), but the data {dataset.name!r} has images "
                             f"of shape {tuple(dataset.shape)}; its latents would not match: train an autoencoder "
                             f"on this data")
        self.pixels, self.codec = dataset, codec
        self.name, self.labels, self.class_names = dataset.name, dataset.labels, list(dataset.class_names)
        self.shape = codec.latent_shape
        self.source = f"{dataset.source}; encoded by the autoencoder {codec.path} (scale {codec.scale_factor:.4g})"
        self.storage = codec.encode(dataset.get(torch.arange(len(dataset)))).contiguous()  # (N, *latent_shape)
        if not torch.isfinite(self.storage).all():
            raise ValueError(f"the autoencoder {codec.path} gives non-finite latents for {dataset.name!r}")

    def __len__(self) -> int:
        return int(self.storage.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def get(self, index) -> Tensor:
        return self.storage[_as_index(index)]

    def flipped(self, index) -> Tensor:
        """The latents of the horizontally flipped images (``data.hflip``: flipping a latent is
        not encoding the flipped image). Encoded once, on first use."""
        if getattr(self, "_flipped", None) is None:
            self._flipped = self.codec.encode(self.pixels.get(torch.arange(len(self))).flip(-1)).contiguous()
        return self._flipped[_as_index(index)]

    def labels_of(self, index):
        return None if self.labels is None else self.labels[_as_index(index)]

    def to_unit(self, z: Tensor) -> Tensor:
        """Scaled latents -> decoded images in [0, 1] (clamped)."""
        return ((self.codec.decode(z).cpu() + 1) / 2).clamp(0, 1)


def _as_index(index):
    return index if isinstance(index, (Tensor, int, slice)) else torch.as_tensor(index, dtype=torch.long)
