"""A U-Net for images, or with ``dims=1`` for signals such as waveforms (Ronneberger et al.
2015), in the form diffusion models use it (Ho et al. 2020; Nichol & Dhariwal 2021; Dhariwal &
Nichol 2021):

* residual blocks of GroupNorm -> SiLU -> 3x3 conv, twice, with the noise (and class)
  embedding entering each block as a per-channel scale and shift after the second norm
  ("adaptive group norm", Dhariwal & Nichol 2021, section 3);
* self-attention at chosen levels through ``scaled_dot_product_attention`` (flash or
  memory-efficient kernels where PyTorch has them);
* strided-conv down-sampling and nearest up-sampling to the skip's size, so odd and
  non-square sizes work;
* output layer and every residual branch's last layer initialised to zero, so the
  untrained network is the identity on its skips and outputs zero;
* optionally (``patch_size`` p > 1) the network works on p x p pixel patches: the input is
  rearranged space-to-depth (C*p^2 channels at 1/p the size) and the output back, which cuts
  the cost of every level by p^2 (as a DiT's patches do; for small images on a CPU);
* optionally (``dims=1`` with ``rows`` R) the network reads (C, R, T) inputs, a spectrogram's
  R frequency bands, as 1-D signals of C*R channels over time: every layer mixes the whole
  spectrum of a frame, at the cost of a 1-D network (as spectrogram decoders of speech
  synthesis do).

Conditioning, each optional:

* ``class_labels``: a class embedding added to the noise embedding (null class -1);
* ``context`` (B, L, context_dim) with ``context_mask`` (B, L) bool: token embeddings of a
  text encoder, read by cross-attention after each self-attention layer (Rombach et al.
  2022), and their masked mean added to the noise embedding (as Imagen does with a pooled
  text embedding; it lets a small network pick up the global content quickly);
* ``cond_image`` (B, cond_channels, H, W): an image at the input's size concatenated to the
  input channels (SR3, Saharia et al. 2022: the up-sampled low-resolution image).

No diffusion maths lives here: ``forward(x, noise_label, **conditioning)`` maps the
preconditioned input and the noise label to the raw output; ``precond.Denoiser`` does the rest.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    ClassEmbedding,
    check_levels,
    condition_embedding,
    context_inputs,
    image_input,
    noise_embedding,
    zero_,
)

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
    context_dim: int = 0          # > 0: cross-attention to (B, L, context_dim) token embeddings
    cond_channels: int = 0        # > 0: channels of an image condition concatenated to the input
    patch_size: int = 1           # > 1: work on p x p pixel patches (space-to-depth in, depth-to-space out)
    dims: int = 2                 # 2: images (C, H, W); 1: signals (C, T) such as waveforms
    rows: int = 0                 # > 0 (dims 1): read (C, rows, T) inputs as signals of C * rows channels

    def __post_init__(self):
        self.channel_mult, self.attention_levels = check_levels(self.channel_mult, self.attention_levels,
                                                                self.channels, self.num_res_blocks)
        if self.context_dim and not self.attention_levels:
            raise ValueError("context_dim > 0 needs at least one attention level for cross-attention")
        if self.context_dim < 0 or self.cond_channels < 0:
            raise ValueError("context_dim and cond_channels must be >= 0")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.dims not in (1, 2):
            raise ValueError(f"dims must be 1 (signals) or 2 (images), got {self.dims}")
        if self.rows < 0 or (self.rows and self.dims != 1):
            raise ValueError(f"rows (the rows of a 2-D input read as channels) needs dims 1 and must be >= 0, "
                             f"got rows {self.rows} with dims {self.dims}")


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, ch), ch, eps=1e-6)


def _conv(dims: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv1d if dims == 1 else nn.Conv2d)(*args, **kwargs)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int, dims: int = 2):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = _conv(dims, cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(_conv(dims, cout, cout, 3, padding=1))
        self.skip = _conv(dims, cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor, ctx=None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(emb)
        scale, shift = e.reshape(*e.shape, *[1] * (x.dim() - 2)).chunk(2, dim=1)  # (B, C, 1, ...) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, head_channels: int, groups: int, dims: int = 2):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = _norm(ch, groups)
        self.qkv = _conv(dims, ch, 3 * ch, 1)
        self.proj = zero_(_conv(dims, ch, ch, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None, ctx=None) -> Tensor:
        b, c = x.shape[:2]
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, -1)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, heads, positions, head_dim) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, positions, head_dim)
        out = out.transpose(-1, -2).reshape(x.shape)
        return x + self.proj(out)


class CrossAttention(nn.Module):
    """Queries from the image, keys and values from the context tokens; masked tokens
    (``mask`` False) are ignored."""

    def __init__(self, ch: int, context_dim: int, head_channels: int, groups: int, dims: int = 2):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = _norm(ch, groups)
        self.q = _conv(dims, ch, ch, 1)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj = zero_(_conv(dims, ch, ch, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None, ctx=None) -> Tensor:
        context, mask = ctx
        b, c = x.shape[:2]
        q = self.q(self.norm(x)).reshape(b, self.heads, c // self.heads, -1).transpose(-1, -2)
        k, v = self.kv(context).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return x + self.proj(out.transpose(-1, -2).reshape(x.shape))


class Downsample(nn.Module):
    def __init__(self, ch: int, dims: int = 2):
        super().__init__()
        self.conv = _conv(dims, ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None, ctx=None) -> Tensor:
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or UNetConfig(**kwargs)
        self.config = cfg
        ch0, g, nd = cfg.channels, cfg.groups, cfg.dims
        emb_dim = cfg.emb_mult * ch0
        self.noise_emb = noise_embedding(cfg.embedding, ch0)
        self.emb_mlp = nn.Sequential(nn.Linear(ch0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = ClassEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes > 0 else None
        self.context_pool = nn.Linear(cfg.context_dim, emb_dim) if cfg.context_dim else None

        def attention(ch: int) -> list[nn.Module]:
            layers = [Attention(ch, cfg.head_channels, g, nd)]
            if cfg.context_dim:
                layers.append(CrossAttention(ch, cfg.context_dim, cfg.head_channels, g, nd))
            return layers

        p2 = cfg.patch_size ** nd * max(cfg.rows, 1)  # values per patch and channel
        self.stem = _conv(nd, (cfg.in_channels + cfg.cond_channels) * p2, ch0, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [ch0], ch0
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                block = nn.ModuleList([ResBlock(ch, ch0 * mult, emb_dim, cfg.dropout, g, nd)])
                ch = ch0 * mult
                if level in cfg.attention_levels:
                    block.extend(attention(ch))
                self.down.append(block)
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch, nd)]))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout, g, nd), *attention(ch),
                                  ResBlock(ch, ch, emb_dim, cfg.dropout, g, nd)])
        self.up = nn.ModuleList()
        self.up_levels: list[bool] = []  # whether an up-sampling precedes this block
        for level in reversed(range(len(cfg.channel_mult))):
            mult = cfg.channel_mult[level]
            for i in range(cfg.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(ch + skips.pop(), ch0 * mult, emb_dim, cfg.dropout, g, nd)])
                ch = ch0 * mult
                if level in cfg.attention_levels:
                    block.extend(attention(ch))
                self.up.append(block)
                self.up_levels.append(i == 0 and level < len(cfg.channel_mult) - 1)
        self.out_norm = _norm(ch, g)
        self.out = zero_(_conv(nd, ch, (cfg.out_channels or cfg.in_channels) * p2, 3, padding=1))

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                cond_image: Tensor | None = None, control: list[Tensor] | None = None) -> Tensor:
        """``control``: residuals added to every skip connection and to the middle's output
        (a control adapter's, ``nets.control``), in the order :meth:`encode` returns them."""
        hs, h, emb, ctx = self.encode(x, noise_label, class_labels, context, context_mask, cond_image)
        if control is not None:
            if len(control) != len(hs) + 1:
                raise ValueError(f"control: {len(control)} residuals for {len(hs)} skips and the middle")
            hs = [a + r for a, r in zip(hs, control)]
            h = h + control[-1]
        return self.decode(hs, h, emb, ctx)

    def encode(self, x: Tensor, noise_label: Tensor, class_labels=None, context=None, context_mask=None,
               cond_image=None, stem_add: Tensor | None = None):
        """The down path: the skip activations, the middle's output, the embedding and the
        context. ``stem_add`` is added to the stem's output (a control adapter's hint)."""
        ctx, pooled = self._context(x, context, context_mask)
        emb = condition_embedding(self, x, noise_label, class_labels, pooled)
        h = self.stem(self._patches(self._with_image(x, cond_image)))
        if stem_add is not None:
            h = h + stem_add
        hs = [h]
        for block in self.down:
            for layer in block:
                h = layer(h, emb, ctx)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb, ctx)
        return hs, h, emb, ctx

    def decode(self, hs: list[Tensor], h: Tensor, emb: Tensor, ctx) -> Tensor:
        hs = list(hs)
        for block, upsample in zip(self.up, self.up_levels):
            if upsample:
                h = F.interpolate(h, size=hs[-1].shape[2:], mode="nearest")
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in block:
                h = layer(h, emb, ctx)
        out = self.out(F.silu(self.out_norm(h)))
        p, rows = self.config.patch_size, self.config.rows
        if p == 1:
            pass
        elif self.config.dims == 2:
            return F.pixel_shuffle(out, p)
        else:
            b, cp, n = out.shape  # (B, C * p, T / p) -> (B, C, T)
            out = out.reshape(b, cp // p, p, n).transpose(2, 3).reshape(b, cp // p, n * p)
        return out.reshape(out.shape[0], -1, rows, out.shape[-1]) if rows else out

    def skip_channels(self) -> list[int]:
        """Channels of each skip activation :meth:`encode` returns, then of the middle."""
        chans = [self.stem.out_channels]
        for block in self.down:
            chans.append(block[0].conv.out_channels if isinstance(block[0], Downsample) else block[0].conv2.out_channels)
        return chans + [self.mid[-1].conv2.out_channels]

    def _patches(self, x: Tensor) -> Tensor:
        p, rows = self.config.patch_size, self.config.rows
        if rows:
            if x.dim() != 4 or x.shape[2] != rows:
                raise ValueError(f"this network reads (C, {rows}, T) inputs (rows {rows}), got {tuple(x.shape[1:])}")
            x = x.reshape(x.shape[0], -1, x.shape[3])
        if p == 1:
            return x
        if any(n % p for n in x.shape[2:]):
            raise ValueError(f"patch_size {p} must divide the sample size {tuple(x.shape[2:])}")
        if self.config.dims == 2:
            return F.pixel_unshuffle(x, p)
        b, c, t = x.shape  # (B, C, T) -> (B, C * p, T / p), a patch's values in order
        return x.reshape(b, c, t // p, p).transpose(2, 3).reshape(b, c * p, t // p)

    def _context(self, x: Tensor, context, mask):
        return context_inputs(self, x, context, mask)

    def _with_image(self, x: Tensor, cond_image) -> Tensor:
        return image_input(self, x, cond_image)

    def config_dict(self) -> dict:
        return {"kind": "unet", **asdict(self.config)}

