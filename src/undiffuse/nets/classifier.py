"""A noise-aware image classifier ``p(y | x, sigma)`` for classifier guidance
(Dhariwal & Nichol 2021, section 4 and appendix: "the downsampling trunk of the UNet model
with an attention pool at the 8x8 layer").

Architecture: the down-sampling half of ``unet.UNet`` built from the same blocks
(``ResBlock`` with the noise embedding entering through adaptive group norm, optional
``Attention`` at chosen levels, strided-conv ``Downsample``), then a middle block
(ResBlock, optional attention, ResBlock) at the lowest resolution, then
GroupNorm -> SiLU -> pooling -> linear head to ``num_classes`` logits.

Pooling:

* ``mean``: global average over positions (works for any image size);
* ``attention``: one query per image, made from the mean feature, attends over all positions
  and the mean token itself (multi-head, ``scaled_dot_product_attention``). Dhariwal & Nichol
  add a learned position embedding, which fixes the image size; this version has none and
  relies on the convolutions' zero padding for position, so it works for any size too.

Images only: ``forward(x, noise_label)`` takes ``(B, C, H, W)``. No diffusion maths lives
here; ``undiffuse.training.classifier.ClassifierGuide`` applies the input scaling and the noise label.
Unlike the denoiser networks nothing is zero-initialised at the output: a zero head would
make the untrained classifier's input gradient exactly zero.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import check_levels, condition_embedding, noise_embedding
from .unet import Attention, Downsample, ResBlock, _norm

Tensor = torch.Tensor

POOLING = ("mean", "attention")


@dataclass
class ClassifierConfig:
    in_channels: int = 1          # image channels in
    num_classes: int = 10         # number of logits out
    channels: int = 32            # width of the first level
    channel_mult: tuple[int, ...] = (1, 2)  # width multiplier per level; len = number of levels
    num_res_blocks: int = 1       # residual blocks per level
    attention_levels: tuple[int, ...] = ()  # levels (0 = full resolution) with self-attention
    mid_attention: bool = True    # self-attention between the two middle residual blocks
    head_channels: int = 32       # channels per attention head (blocks and attention pooling)
    dropout: float = 0.0          # dropout inside residual blocks
    pool: str = "mean"            # mean | attention (see module docstring)
    embedding: str = "positional"  # noise-label embedding: positional | fourier
    emb_mult: int = 4             # embedding width = emb_mult * channels
    groups: int = 32              # GroupNorm groups (reduced to divide the channel count)

    def __post_init__(self):
        self.channel_mult, self.attention_levels = check_levels(self.channel_mult, self.attention_levels,
                                                                self.channels, self.num_res_blocks)
        if self.num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {self.num_classes}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pool not in POOLING:
            raise ValueError(f"unknown pooling {self.pool!r}; allowed: {', '.join(POOLING)}")


class AttentionPool(nn.Module):
    """Multi-head attention from the mean feature to every position (and to itself)."""

    def __init__(self, ch: int, head_channels: int):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        if ch % self.heads:
            raise ValueError(f"attention pooling: {ch} channels do not split into {self.heads} heads")
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(ch, 2 * ch)
        self.proj = nn.Linear(ch, ch)

    def forward(self, h: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C)
        b, c = h.shape[:2]
        tokens = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        mean = tokens.mean(1, keepdim=True)  # (B, 1, C)
        tokens = torch.cat([mean, tokens], dim=1)  # (B, 1 + HW, C)
        d = c // self.heads
        q = self.q(mean).reshape(b, 1, self.heads, d).transpose(1, 2)  # (B, heads, 1, d)
        k, v = self.kv(tokens).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # (B, heads, 1+HW, d) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, d)
        return self.proj(out.transpose(1, 2).reshape(b, c))


class NoiseClassifier(nn.Module):
    """``forward(x, noise_label) -> logits (B, num_classes)`` for images ``(B, C, H, W)``."""

    def __init__(self, config: ClassifierConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or ClassifierConfig(**kwargs)
        self.config = cfg
        ch0, g = cfg.channels, cfg.groups
        emb_dim = cfg.emb_mult * ch0
        self.noise_emb = noise_embedding(cfg.embedding, ch0)
        self.emb_mlp = nn.Sequential(nn.Linear(ch0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = None  # read by layers.condition_embedding: the classifier sees no labels

        self.stem = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)
        self.down = nn.ModuleList()
        ch = ch0
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                block = nn.ModuleList([ResBlock(ch, ch0 * mult, emb_dim, cfg.dropout, g)])
                ch = ch0 * mult
                if level in cfg.attention_levels:
                    block.append(Attention(ch, cfg.head_channels, g))
                self.down.append(block)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
        mid = [ResBlock(ch, ch, emb_dim, cfg.dropout, g)]
        if cfg.mid_attention:
            mid.append(Attention(ch, cfg.head_channels, g))
        mid.append(ResBlock(ch, ch, emb_dim, cfg.dropout, g))
        self.mid = nn.ModuleList(mid)
        self.out_norm = _norm(ch, g)
        self.pool = AttentionPool(ch, cfg.head_channels) if cfg.pool == "attention" else None
        self.head = nn.Linear(ch, cfg.num_classes)

    def forward(self, x: Tensor, noise_label: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"NoiseClassifier takes images (B, C, H, W), got shape {tuple(x.shape)}")
        emb = condition_embedding(self, x, noise_label, None)  # (B, emb_dim)
        h = self.stem(x)
        for block in self.down:
            for layer in block:
                h = layer(h, emb)
        for layer in self.mid:
            h = layer(h, emb)
        h = F.silu(self.out_norm(h))  # (B, C, h, w)
        pooled = h.mean((2, 3)) if self.pool is None else self.pool(h)  # (B, C)
        return self.head(pooled)  # (B, num_classes)

    def config_dict(self) -> dict:
        return {"kind": "classifier", **asdict(self.config)}
