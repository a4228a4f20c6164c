"""A U-Net for images (Ronneberger et al. 2015), in the form diffusion models use it
(Ho et al. 2020; Nichol & Dhariwal 2021; Dhariwal & Nichol 2021):

* residual blocks of GroupNorm -> SiLU -> 3x3 conv, twice, with the noise (and class)
  embedding entering each block as a per-channel scale and shift after the second norm
  ("adaptive group norm", Dhariwal & Nichol 2021, section 3);
* self-attention at chosen levels through ``scaled_dot_product_attention`` (flash or
  memory-efficient kernels where PyTorch has them);
* strided-conv down-sampling and nearest up-sampling to the skip's size, so odd and
  non-square sizes work;
* output layer and every residual branch's last layer initialised to zero, so the
  untrained network is the identity on its skips and outputs zero.

No diffusion maths lives here: ``forward(x, noise_label, class_labels=None)`` maps the
preconditioned input and the noise label to the raw output; ``precond.Denoiser`` does the rest.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ClassEmbedding, condition_embedding, noise_embedding, zero_

Tensor = torch.Tensor


@dataclass
class UNetConfig:
    in_channels: int = 1          # image channels in
    out_channels: int | None = None  # image channels out (default: in_channels)
    channels: int = 64            # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per level; len = number of levels
    num_res_blocks: int = 2       # residual blocks per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...] = (1, 2)  # levels (0 = full resolution) with self-attention
    head_channels: int = 32       # channels per attention head
    dropout: float = 0.0          # dropout inside residual blocks
    num_classes: int = 0          # > 0 adds a class embedding with a null class (index num_classes)
    embedding: str = "positional"  # noise-label embedding: positional | fourier
    emb_mult: int = 4             # embedding width = emb_mult * channels
    groups: int = 32              # GroupNorm groups (reduced to divide the channel count)

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        self.attention_levels = tuple(self.attention_levels)
        levels = len(self.channel_mult)
        if levels < 1 or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {self.channel_mult}")
        bad = [a for a in self.attention_levels if not 0 <= a < levels]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range; levels are 0..{levels - 1}")
        if self.channels < 1 or self.num_res_blocks < 1:
            raise ValueError("channels and num_res_blocks must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, heads, HW, head_dim) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, head_dim)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or UNetConfig(**kwargs)
        self.config = cfg
        ch0, g = cfg.channels, cfg.groups
        emb_dim = cfg.emb_mult * ch0
        self.noise_emb = noise_embedding(cfg.embedding, ch0)
        self.emb_mlp = nn.Sequential(nn.Linear(ch0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = ClassEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes > 0 else None

        self.stem = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [ch0], ch0
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                block = nn.ModuleList([ResBlock(ch, ch0 * mult, emb_dim, cfg.dropout, g)])
                ch = ch0 * mult
                if level in cfg.attention_levels:
                    block.append(Attention(ch, cfg.head_channels, g))
                self.down.append(block)
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout, g), Attention(ch, cfg.head_channels, g),
                                  ResBlock(ch, ch, emb_dim, cfg.dropout, g)])
        self.up = nn.ModuleList()
        self.up_levels: list[bool] = []  # whether an up-sampling precedes this block
        for level in reversed(range(len(cfg.channel_mult))):
            mult = cfg.channel_mult[level]
            for i in range(cfg.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(ch + skips.pop(), ch0 * mult, emb_dim, cfg.dropout, g)])
                ch = ch0 * mult
                if level in cfg.attention_levels:
                    block.append(Attention(ch, cfg.head_channels, g))
                self.up.append(block)
                self.up_levels.append(i == 0 and level < len(cfg.channel_mult) - 1)
        self.out_norm = _norm(ch, g)
        self.out = zero_(nn.Conv2d(ch, cfg.out_channels or cfg.in_channels, 3, padding=1))

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = condition_embedding(self, x, noise_label, class_labels)

        h = self.stem(x)
        hs = [h]
        for block in self.down:
            for layer in block:
                h = layer(h, emb)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for block, upsample in zip(self.up, self.up_levels):
            if upsample:
                h = F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest")
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in block:
                h = layer(h, emb)
        return self.out(F.silu(self.out_norm(h)))

    def config_dict(self) -> dict:
        return {"kind": "unet", **asdict(self.config)}
