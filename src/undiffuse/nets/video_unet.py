"""A factorised space-time U-Net for videos ``(B, T, C, H, W)`` (Video Diffusion Models, Ho et
al. 2022): the image U-Net's layers run on every frame (the frames folded into the batch), and
after each of them temporal layers mix the frames at every pixel:

* a temporal convolution (kernel 3 over time, 1x1 in space) after every residual block;
* temporal self-attention at ``temporal_attention_levels``, over the frames of each pixel,
  with a sinusoidal frame-position embedding added to its queries and keys.

Both temporal layers are residual branches whose last layer starts at zero, so at
initialisation every frame goes through the image U-Net alone (the network is a per-frame
image denoiser; tested).

Given frames (MCVD's masked conditioning, Voleti et al. 2022): with ``frame_cond`` each frame
also reads ``cond_frames * frame_mask`` and the mask itself as extra input channels; a frame
whose mask is on is known (the past for prediction, both ends for interpolation), the others
are generated. Which frames are given is chosen per sample at training time, so one network
generates, predicts and interpolates. ``cond_frames`` left out means no frame is given.

Conditioning as the image U-Net: ``class_labels``, ``context`` / ``context_mask``, one per
clip. No diffusion maths lives here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ClassEmbedding, check_levels, condition_embedding, context_inputs, noise_embedding, zero_
from .unet import Attention, CrossAttention, Downsample, ResBlock, _norm

Tensor = torch.Tensor


@dataclass
class VideoUNetConfig:
    in_channels: int = 1          # channels of a frame
    out_channels: int | None = None  # default: in_channels
    channels: int = 32            # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1       # residual blocks per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...] = (2,)  # levels with spatial self-attention (per frame)
    temporal_attention_levels: tuple[int, ...] = (1, 2)  # levels with attention across frames
    head_channels: int = 32
    dropout: float = 0.0
    num_classes: int = 0
    embedding: str = "positional"
    emb_mult: int = 4
    groups: int = 32
    context_dim: int = 0
    frame_cond: bool = True       # read given frames and their mask (prediction, interpolation)
    max_frames: int = 32          # longest clip (the frame-position embedding's range)
    patch_size: int = 1           # > 1: each frame on p x p pixel patches

    def __post_init__(self):
        self.channel_mult, self.attention_levels = check_levels(self.channel_mult, self.attention_levels,
                                                                self.channels, self.num_res_blocks)
        self.temporal_attention_levels = tuple(self.temporal_attention_levels)
        if any(not 0 <= lv < len(self.channel_mult) for lv in self.temporal_attention_levels):
            raise ValueError(f"temporal_attention_levels {list(self.temporal_attention_levels)} must name levels "
                             f"0..{len(self.channel_mult) - 1}")
        if self.context_dim and not self.attention_levels:
            raise ValueError("context_dim > 0 needs at least one attention level for cross-attention")
        if self.max_frames < 1 or self.patch_size < 1:
            raise ValueError(f"max_frames and patch_size must be >= 1, got {self.max_frames}, {self.patch_size}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class TemporalConv(nn.Module):
    """Residual GroupNorm -> SiLU -> conv over time (kernel 3, zero-initialised)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = _norm(ch, groups)
        self.conv = zero_(nn.Conv3d(ch, ch, (3, 1, 1), padding=(1, 0, 0)))

    def forward(self, h: Tensor, frames: int) -> Tensor:
        bt, c, hh, ww = h.shape
        y = F.silu(self.norm(h)).reshape(bt // frames, frames, c, hh, ww).transpose(1, 2)  # (B, C, T, H, W)
        y = self.conv(y).transpose(1, 2).reshape(bt, c, hh, ww)
        return h + y


class TemporalAttention(nn.Module):
    """Self-attention over the frames at each pixel, positions from a fixed sinusoid."""

    def __init__(self, ch: int, head_channels: int, groups: int, max_frames: int):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = _norm(ch, groups)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = zero_(nn.Linear(ch, ch))
        self.register_buffer("position", _sinusoid(max_frames, ch), persistent=False)

    def forward(self, h: Tensor, frames: int) -> Tensor:
        bt, c, hh, ww = h.shape
        b = bt // frames
        tok = self.norm(h).reshape(b, frames, c, hh * ww).permute(0, 3, 1, 2).reshape(b * hh * ww, frames, c)
        q, k, v = self.qkv(tok).chunk(3, dim=-1)
        pos = self.position[:frames].to(tok.dtype)
        q, k = q + pos, k + pos
        split = lambda t: t.reshape(len(t), frames, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(-1, frames, c)
        out = self.proj(out).reshape(b, hh * ww, frames, c).permute(0, 2, 3, 1).reshape(bt, c, hh, ww)
        return h + out


def _sinusoid(n: int, dim: int) -> Tensor:
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10_000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    out = torch.zeros(n, dim, dtype=torch.float64)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out.to(torch.float32)


TEMPORAL = (TemporalConv, TemporalAttention)


class VideoUNet(nn.Module):
    def __init__(self, config: VideoUNetConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or VideoUNetConfig(**kwargs)
        self.config = cfg
        ch0, g = cfg.channels, cfg.groups
        emb_dim = cfg.emb_mult * ch0
        self.noise_emb = noise_embedding(cfg.embedding, ch0)
        self.emb_mlp = nn.Sequential(nn.Linear(ch0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = ClassEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes > 0 else None
        self.context_pool = nn.Linear(cfg.context_dim, emb_dim) if cfg.context_dim else None

        def block(cin: int, cout: int, level: int) -> nn.ModuleList:
            layers = [ResBlock(cin, cout, emb_dim, cfg.dropout, g), TemporalConv(cout, g)]
            if level in cfg.attention_levels:
                layers.append(Attention(cout, cfg.head_channels, g))
                if cfg.context_dim:
                    layers.append(CrossAttention(cout, cfg.context_dim, cfg.head_channels, g))
            if level in cfg.temporal_attention_levels:
                layers.append(TemporalAttention(cout, cfg.head_channels, g, cfg.max_frames))
            return nn.ModuleList(layers)

        c_in = cfg.in_channels * (2 if cfg.frame_cond else 1) + (1 if cfg.frame_cond else 0)
        self.stem = nn.Conv2d(c_in * cfg.patch_size ** 2, ch0, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [ch0], ch0
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(block(ch, ch0 * mult, level))
                ch = ch0 * mult
                skips.append(ch)
            if level < last:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        self.mid = block(ch, ch, last)
        self.mid.append(ResBlock(ch, ch, emb_dim, cfg.dropout, g))
        self.up = nn.ModuleList()
        self.up_levels: list[bool] = []
        for level in reversed(range(len(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), ch0 * cfg.channel_mult[level], level))
                ch = ch0 * cfg.channel_mult[level]
                self.up_levels.append(i == 0 and level < last)
        self.out_norm = _norm(ch, g)
        self.out = zero_(nn.Conv2d(ch, (cfg.out_channels or cfg.in_channels) * cfg.patch_size ** 2, 3, padding=1))

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                cond_frames: Tensor | None = None, frame_mask: Tensor | None = None) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"a video network reads (B, T, C, H, W) clips, got shape {tuple(x.shape)}")
        b, t, c, hh, ww = x.shape
        if t > self.config.max_frames:
            raise ValueError(f"clips of {t} frames are longer than this network's max_frames "
                             f"({self.config.max_frames})")
        ctx, pooled = context_inputs(self, x, context, context_mask)
        emb = condition_embedding(self, x, noise_label, class_labels, pooled)
        emb = emb.repeat_interleave(t, dim=0)  # one row per frame
        if ctx is not None:
            ctx = (ctx[0].repeat_interleave(t, dim=0), ctx[1].repeat_interleave(t, dim=0))
        h = self._input(x, cond_frames, frame_mask).reshape(b * t, -1, hh, ww)
        p = self.config.patch_size
        if p > 1:
            if hh % p or ww % p:
                raise ValueError(f"patch_size {p} must divide the frame size {(hh, ww)}")
            h = F.pixel_unshuffle(h, p)
        h = self.stem(h)
        hs = [h]
        for blk in self.down:
            h = self._run(blk, h, emb, ctx, t)
            hs.append(h)
        h = self._run(self.mid, h, emb, ctx, t)
        for blk, upsample in zip(self.up, self.up_levels):
            if upsample:
                h = F.interpolate(h, size=hs[-1].shape[2:], mode="nearest")
            h = self._run(blk, torch.cat([h, hs.pop()], dim=1), emb, ctx, t)
        out = self.out(F.silu(self.out_norm(h)))
        if p > 1:
            out = F.pixel_shuffle(out, p)
        return out.reshape(b, t, -1, hh, ww)

    def _input(self, x: Tensor, cond_frames, frame_mask) -> Tensor:
        if not self.config.frame_cond:
            if cond_frames is not None or frame_mask is not None:
                raise ValueError("this network was built without given frames (frame_cond false) but got cond_frames")
            return x
        if cond_frames is None:  # nothing given: plain generation
            cond_frames = torch.zeros_like(x)
            frame_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        if frame_mask is None:
            raise ValueError("cond_frames needs frame_mask (B, T): which frames are given")
        cond_frames = _batch_rows(cond_frames.to(x.dtype), len(x))
        frame_mask = _batch_rows(frame_mask.to(device=x.device), len(x))
        if cond_frames.shape != x.shape or frame_mask.shape != x.shape[:2]:
            raise ValueError(f"cond_frames must have shape {tuple(x.shape)} and frame_mask {tuple(x.shape[:2])}, got "
                             f"{tuple(cond_frames.shape)} and {tuple(frame_mask.shape)}")
        m = frame_mask.to(x.dtype)[:, :, None, None, None].expand(*x.shape[:2], 1, *x.shape[3:])
        return torch.cat([x, cond_frames * m, m], dim=2)

    @staticmethod
    def _run(blk: nn.ModuleList, h: Tensor, emb: Tensor, ctx, frames: int) -> Tensor:
        for layer in blk:
            h = layer(h, frames) if isinstance(layer, TEMPORAL) else layer(h, emb, ctx)
        return h

    def config_dict(self) -> dict:
        return {"kind": "video_unet", **asdict(self.config)}


def _batch_rows(t: Tensor, batch: int) -> Tensor:
    return t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 and batch > 1 else t
