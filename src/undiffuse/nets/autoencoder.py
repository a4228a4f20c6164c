"""A convolutional autoencoder with a Gaussian posterior over its latents: the first stage of
latent diffusion (Rombach et al. 2022, section 3.1: a "KL-reg" autoencoder, trained with a
reconstruction loss plus a small KL term towards N(0, I); the KL term keeps the latent space
smooth and of moderate scale, it is not meant to make a generative VAE).

Encoder: 3x3 stem, then per level ``num_res_blocks`` residual blocks (GroupNorm -> SiLU -> 3x3
conv, twice) and a stride-2 conv between levels, a middle block, GroupNorm -> SiLU -> 3x3 conv
to ``2 * latent_channels``: the posterior mean and log-variance. The latent side is the image
side divided by ``2 ** (len(channel_mult) - 1)`` (the *down-sampling factor*; it must divide the
image size). The decoder mirrors it with nearest up-sampling followed by a 3x3 conv.

No training maths here: ``encode(x) -> (mean, logvar)``, ``decode(z) -> x``; the loss, the
scale factor and the file format live in ``undiffuse.training.autoencoder``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import check_levels, zero_

Tensor = torch.Tensor


@dataclass
class AutoencoderConfig:
    in_channels: int = 1          # image channels
    latent_channels: int = 4      # channels of the latent
    channels: int = 16            # width of the first (full-resolution) level (CPU-sized)
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per level; factor = 2 ** (levels - 1)
    num_res_blocks: int = 1       # residual blocks per level (each way)
    groups: int = 32              # GroupNorm groups (reduced to divide the channel count)
    logvar_min: float = -30.0     # posterior log-variance clamp (numerical safety only)
    logvar_max: float = 20.0

    def __post_init__(self):
        self.channel_mult, _ = check_levels(self.channel_mult, (), self.channels, self.num_res_blocks)
        if self.in_channels < 1 or self.latent_channels < 1:
            raise ValueError("in_channels and latent_channels must be >= 1")

    @property
    def factor(self) -> int:
        """Down-sampling factor from image side to latent side."""
        return 2 ** (len(self.channel_mult) - 1)


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a (1x1 when the width changes) skip; the second
    conv starts at zero so every block starts as its skip."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(_norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  _norm(cout, groups), nn.SiLU(), zero_(nn.Conv2d(cout, cout, 3, padding=1)))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Autoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig | None = None, **kwargs):
        super().__init__()
        cfg = self.config = config or AutoencoderConfig(**kwargs)
        widths = [cfg.channels * m for m in cfg.channel_mult]
        g = cfg.groups
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for level, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                enc.append(ResBlock(ch, w, g))
                ch = w
            if level < len(widths) - 1:
                enc.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        enc += [ResBlock(ch, ch, g), _norm(ch, g), nn.SiLU(), nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1), ResBlock(ch, ch, g)]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                dec.append(ResBlock(ch, widths[level], g))
                ch = widths[level]
            if level > 0:
                dec.append(Upsample(ch))
        dec += [_norm(ch, g), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def latent_shape(self, image_shape) -> tuple[int, int, int]:
        """(C, H, W) of the latent of an image of shape (C, H, W); the factor must divide H and W."""
        c, h, w = image_shape
        f = self.config.factor
        if c != self.config.in_channels or h % f or w % f:
            raise ValueError(f"this autoencoder takes {self.config.in_channels}-channel images whose sides are "
                             f"multiples of {f}; got shape {tuple(image_shape)}")
        return self.config.latent_channels, h // f, w // f

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W) in [-1, 1] -> posterior mean and log-variance, (B, latent, H/f, W/f) each."""
        self.latent_shape(x.shape[1:])
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, latent, h, w) -> images (B, C, h*f, w*f) in model space (not clamped)."""
        if z.dim() != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"latents must have shape (B, {self.config.latent_channels}, h, w), got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)[0])

    def config_dict(self) -> dict:
        return asdict(self.config)
