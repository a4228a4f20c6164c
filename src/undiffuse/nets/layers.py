"""Building blocks shared by the networks: noise-level embeddings and the class embedding."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar noise label (Vaswani et al. 2017, used by DDPM).

    ``max_period`` sets the slowest frequency: labels in [0, 1000] (DDPM timesteps) suit the
    default 10,000; labels in roughly [-2, 2] (EDM's log(sigma)/4) suit a ``scale`` of ~250
    applied by the caller or a Fourier embedding.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, label: Tensor) -> Tensor:  # (B,) -> (B, dim)
        arg = label.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise label (Tancik et al. 2020; Song et al. 2021 use
    them for log(sigma)). The frequencies are a fixed buffer saved with the weights."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale * 2 * math.pi)

    def forward(self, label: Tensor) -> Tensor:
        arg = label.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


def noise_embedding(kind: str, dim: int) -> nn.Module:
    if kind == "positional":
        return PositionalEmbedding(dim)
    if kind == "fourier":
        return FourierEmbedding(dim)
    raise ValueError(f"unknown noise embedding {kind!r}; allowed: positional, fourier")


class ClassEmbedding(nn.Module):
    """Embedding of class labels with one extra *null* class (index ``num_classes``).

    A label of -1 or ``None`` selects the null class, which is what classifier-free guidance
    samples as "unconditional" and what condition dropout trains.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, labels: Tensor | None, batch: int, device) -> Tensor:
        if labels is None:
            labels = torch.full((batch,), -1, dtype=torch.long, device=device)
        labels = torch.as_tensor(labels, device=device).long().reshape(-1)
        if labels.shape[0] == 1 and batch > 1:
            labels = labels.expand(batch)
        if labels.shape[0] != batch:
            raise ValueError(f"class_labels has {labels.shape[0]} entries for a batch of {batch}")
        if ((labels < -1) | (labels >= self.num_classes)).any():
            bad = labels[(labels < -1) | (labels >= self.num_classes)][0].item()
            raise ValueError(f"class label {bad} out of range; allowed 0..{self.num_classes - 1} or -1 (unconditional)")
        return self.table(torch.where(labels < 0, self.num_classes, labels))


def check_levels(channel_mult, attention_levels, channels: int, num_res_blocks: int) -> tuple[tuple, tuple]:
    """Validate a multi-level (U-Net-like) layout; returns both lists as tuples."""
    channel_mult, attention_levels = tuple(channel_mult), tuple(attention_levels)
    levels = len(channel_mult)
    if levels < 1 or any(m < 1 for m in channel_mult):
        raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {channel_mult}")
    bad = [a for a in attention_levels if not 0 <= a < levels]
    if bad:
        raise ValueError(f"attention_levels {bad} out of range; levels are 0..{levels - 1}")
    if channels < 1 or num_res_blocks < 1:
        raise ValueError("channels and num_res_blocks must be >= 1")
    return channel_mult, attention_levels


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def condition_embedding(net: nn.Module, x: Tensor, noise_label, class_labels, extra: Tensor | None = None) -> Tensor:
    """The per-sample conditioning vector of a network with ``noise_emb``, ``emb_mlp`` and an
    optional ``class_emb``: SiLU(MLP(embed(noise label)) + class embedding [+ extra]), shape
    (B, width). ``extra`` is any other per-sample embedding (e.g. a pooled text embedding)."""
    noise_label = torch.as_tensor(noise_label, device=x.device)
    if noise_label.dim() == 0:
        noise_label = noise_label.expand(x.shape[0])
    emb = net.emb_mlp(net.noise_emb(noise_label).to(x.dtype))
    if net.class_emb is not None:
        emb = emb + net.class_emb(class_labels, x.shape[0], x.device)
    elif class_labels is not None:
        raise ValueError("this network was built without classes (num_classes=0) but got class_labels")
    if extra is not None:
        emb = emb + extra
    return F.silu(emb)


def _rows(t: Tensor, batch: int) -> Tensor:
    """A single conditioning row broadcast over the batch."""
    return t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 and batch > 1 else t


def context_inputs(net: nn.Module, x: Tensor, context, mask):
    """Checked text context of a network with ``config.context_dim`` and ``context_pool``:
    ``((context, mask), pooled embedding)``, or ``(None, None)`` without text conditioning."""
    dim = net.config.context_dim
    if not dim:
        if context is not None:
            raise ValueError("this network was built without text conditioning (context_dim=0) but got a context")
        return None, None
    if context is None:
        raise ValueError(f"this network needs a context of token embeddings (B, L, {dim}); none was given")
    context = _rows(context.to(x.dtype), x.shape[0])
    if context.dim() != 3 or context.shape[-1] != dim:
        raise ValueError(f"context must have shape ({x.shape[0]}, L, {dim}), got {tuple(context.shape)}")
    mask = torch.ones(context.shape[:2], dtype=torch.bool, device=x.device) if mask is None \
        else _rows(mask.to(device=x.device, dtype=torch.bool), x.shape[0])
    weights = mask.to(x.dtype)[..., None]
    pooled = (context * weights).sum(1) / weights.sum(1).clamp(min=1)
    return (context, mask), net.context_pool(pooled)


def image_input(net: nn.Module, x: Tensor, cond_image) -> Tensor:
    """``x`` with the image condition of a network with ``config.cond_channels`` concatenated."""
    c = net.config.cond_channels
    if not c:
        if cond_image is not None:
            raise ValueError("this network was built without an image condition (cond_channels=0) but got cond_image")
        return x
    if cond_image is None:
        raise ValueError(f"this network needs cond_image with {c} channels at the input's size; none was given")
    cond_image = _rows(cond_image.to(x.dtype), x.shape[0])
    if cond_image.shape != (x.shape[0], c, *x.shape[2:]):
        raise ValueError(f"cond_image must have shape {(x.shape[0], c, *x.shape[2:])}, got {tuple(cond_image.shape)}")
    return torch.cat([x, cond_image], dim=1)
