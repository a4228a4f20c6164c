"""A diffusion transformer (DiT; Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"), an alternative to the U-Net with the same ``forward`` signature:

* patchify: a conv with kernel = stride = ``patch_size`` turns (B, C, H, W) into
  (H/p * W/p) tokens of ``width`` channels (section 3.2, "Patchify");
* a fixed 2-D sine-cosine position embedding computed for the actual token grid (the
  paper's frequency-based embedding), so any height and width divisible by the patch work
  with the same weights;
* ``depth`` transformer blocks with adaLN-Zero conditioning (section 3.2, "DiT block
  design"): the noise (and class) embedding regresses a shift, scale and gate for the
  attention and for the MLP of every block; the regressing layers start at zero, so every
  gate is zero and every block is the identity at initialisation;
* a final adaptive LayerNorm and a zero-initialised linear layer to ``p * p * out_channels``
  pixels per token, then unpatchify; the untrained network outputs zero.

Conditioning mirrors the U-Net (``nets.unet``), each optional:

* ``class_labels`` (B,): class embedding added to the noise embedding (null class -1);
* ``context`` (B, L, context_dim) with ``context_mask`` (B, L) bool: token embeddings read by
  a cross-attention layer in every block, between self-attention and MLP (as PixArt-alpha,
  Chen et al. 2023, adds text to DiT), plus their masked mean added to the noise embedding;
* ``cond_image`` (B, cond_channels, H, W): concatenated to the input channels before patchify.

No diffusion maths lives here; ``precond.Denoiser`` turns the raw output into a denoiser.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ClassEmbedding, condition_embedding, context_inputs, image_input, noise_embedding, zero_

Tensor = torch.Tensor

EMBEDDINGS = ("positional", "fourier")


@dataclass
class DiTConfig:
    in_channels: int = 1          # image channels in
    out_channels: int | None = None  # image channels out (default: in_channels)
    patch_size: int = 2           # side of the square patch that becomes one token, in pixels
    width: int = 128              # token channels (the paper's hidden size); divisible by 4 and by heads
    depth: int = 6                # transformer blocks
    heads: int = 4                # attention heads (head dim = width / heads)
    mlp_ratio: float = 4.0        # MLP hidden width = mlp_ratio * width
    dropout: float = 0.0          # dropout in the MLP of each block
    num_classes: int = 0          # > 0 adds a class embedding with a null class (index num_classes)
    embedding: str = "positional"  # noise-label embedding: positional | fourier
    context_dim: int = 0          # > 0: cross-attention to (B, L, context_dim) token embeddings
    cond_channels: int = 0        # > 0: channels of an image condition concatenated to the input

    def __post_init__(self):
        positive = {"in_channels": self.in_channels, "patch_size": self.patch_size, "width": self.width,
                    "depth": self.depth, "heads": self.heads}
        for key, value in positive.items():
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"DiT {key} must be an int >= 1, got {value!r}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"DiT out_channels must be None or >= 1, got {self.out_channels}")
        if self.width % self.heads:
            raise ValueError(f"DiT width {self.width} must be divisible by heads {self.heads}")
        if self.width % 4:
            raise ValueError(f"DiT width must be divisible by 4 (2-D sine-cosine position embedding), got {self.width}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"DiT mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"DiT dropout must be in [0, 1), got {self.dropout}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"DiT embedding {self.embedding!r} is not allowed; allowed: {', '.join(EMBEDDINGS)}")
        if self.num_classes < 0 or self.context_dim < 0 or self.cond_channels < 0:
            raise ValueError("DiT num_classes, context_dim and cond_channels must be >= 0")


def sincos_2d(grid_h: int, grid_w: int, dim: int, device=None, dtype=torch.float32) -> Tensor:
    """Fixed 2-D position embedding, (grid_h * grid_w, dim), tokens in row-major order: half the
    channels encode the row and half the column, each with the 1-D sine-cosine code of
    Vaswani et al. (2017) at frequencies 10000^(-k / (dim/4)), k = 0..dim/4-1."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows = torch.arange(grid_h, dtype=torch.float64, device=device)[:, None] * freqs  # (gh, dim/4)
    cols = torch.arange(grid_w, dtype=torch.float64, device=device)[:, None] * freqs  # (gw, dim/4)
    rows = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(grid_h, grid_w, 2 * quarter)
    cols = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(grid_h, grid_w, 2 * quarter)
    return torch.cat([rows, cols], dim=-1).reshape(grid_h * grid_w, dim).to(dtype)


def _modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: a per-sample affine map after a parameter-free LayerNorm; (B, T, D), (B, 1, D)."""
    return h * (1 + scale) + shift


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(h).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, heads, T, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class CrossAttention(nn.Module):
    """Image tokens attend to context tokens; tokens with ``mask`` False are ignored. A row
    with no token left contributes nothing. The output projection starts at zero."""

    def __init__(self, width: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_dim, 2 * width)
        self.proj = zero_(nn.Linear(width, width))

    def forward(self, h: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        b, t, d = h.shape
        hd = d // self.heads
        q = self.q(self.norm(h)).reshape(b, t, self.heads, hd).transpose(1, 2)  # (B, heads, T, hd)
        k, v = self.kv(context).reshape(b, -1, 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # (B, heads, L, hd)
        any_token = mask.any(dim=1)  # (B,)
        safe = mask | ~any_token[:, None]  # an all-masked row would give NaN; its output is zeroed below
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None, None, :])
        out = out.transpose(1, 2).reshape(b, t, d) * any_token[:, None, None].to(h.dtype)
        return self.proj(out)


class DiTBlock(nn.Module):
    """adaLN-Zero block: h + gate1 * Attn(adaLN(h)) [+ CrossAttn(h)] + gate2 * MLP(adaLN(h))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, context_dim: int):
        super().__init__()
        hidden = int(round(mlp_ratio * width))
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width, heads)
        self.cross = CrossAttention(width, context_dim, heads) if context_dim else None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(hidden, width))
        for m in self.modules():  # the paper's initialisation of the transformer layers
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cross is not None:
            zero_(self.cross.proj)
        self.ada = zero_(nn.Linear(width, 6 * width))  # adaLN-Zero: all gates start at 0

    def forward(self, h: Tensor, emb: Tensor, ctx=None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(emb)[:, None, :].chunk(6, dim=-1)  # (B, 1, D) each
        h = h + gate1 * self.attn(_modulate(self.norm1(h), shift1, scale1))
        if self.cross is not None:
            h = h + self.cross(h, *ctx)
        return h + gate2 * self.mlp(_modulate(self.norm2(h), shift2, scale2))


class DiT(nn.Module):
    def __init__(self, config: DiTConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or DiTConfig(**kwargs)
        self.config = cfg
        w, p = cfg.width, cfg.patch_size
        self.out_channels = cfg.out_channels or cfg.in_channels
        self.noise_emb = noise_embedding(cfg.embedding, w)
        self.emb_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.class_emb = ClassEmbedding(cfg.num_classes, w) if cfg.num_classes > 0 else None
        self.context_pool = nn.Linear(cfg.context_dim, w) if cfg.context_dim else None
        self.patch = nn.Conv2d(cfg.in_channels + cfg.cond_channels, w, p, stride=p)
        nn.init.xavier_uniform_(self.patch.weight.view(w, -1))  # as a linear map of the flattened patch
        nn.init.zeros_(self.patch.bias)
        self.blocks = nn.ModuleList(DiTBlock(w, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.context_dim)
                                    for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.out_ada = zero_(nn.Linear(w, 2 * w))  # final adaLN shift and scale
        self.out = zero_(nn.Linear(w, p * p * self.out_channels))

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                cond_image: Tensor | None = None) -> Tensor:
        p, c = self.config.patch_size, self.config.in_channels
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"DiT expects (batch, {c}, H, W) input, got {tuple(x.shape)}")
        b, _, height, width = x.shape
        if height % p or width % p:
            raise ValueError(f"DiT with patch_size {p} needs image height and width divisible by {p}; "
                             f"got {height}x{width}")
        ctx, pooled = self._context(x, context, context_mask)
        emb = condition_embedding(self, x, noise_label, class_labels, pooled)  # (B, D)
        h = self.patch(self._with_image(x, cond_image))  # (B, D, H/p, W/p)
        gh, gw = h.shape[-2:]
        h = h.flatten(2).transpose(1, 2)  # (B, T, D), row-major tokens
        h = h + sincos_2d(gh, gw, self.config.width, device=h.device, dtype=h.dtype)
        for block in self.blocks:
            h = block(h, emb, ctx)
        shift, scale = self.out_ada(emb)[:, None, :].chunk(2, dim=-1)  # (B, 1, D) each
        h = self.out(_modulate(self.out_norm(h), shift, scale))  # (B, T, p * p * C_out)
        h = h.reshape(b, gh, gw, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
        return h.reshape(b, self.out_channels, height, width)

    # Context validation and pooling, and the image concatenation, are exactly the U-Net's:
    # they read only ``config.context_dim``, ``config.cond_channels`` and ``context_pool``.
    def _context(self, x: Tensor, context, mask):
        return context_inputs(self, x, context, mask)

    def _with_image(self, x: Tensor, cond_image) -> Tensor:
        return image_input(self, x, cond_image)

    def config_dict(self) -> dict:
        return {"kind": "dit", **asdict(self.config)}
