"""A residual MLP for vector data (2-D toys, tabular rows).

``forward(x, noise_label, class_labels=None)``: x is (B, D). Each block is
LayerNorm -> Linear -> SiLU -> Linear with the noise embedding added after the first
linear layer; the last layer of each block and the output start at zero.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ClassEmbedding, condition_embedding, noise_embedding, zero_

Tensor = torch.Tensor


@dataclass
class MLPConfig:
    dim: int = 2              # data dimension D
    width: int = 256          # hidden width
    depth: int = 4            # residual blocks
    dropout: float = 0.0
    num_classes: int = 0      # > 0 adds a class embedding with a null class
    embedding: str = "positional"

    def __post_init__(self):
        if self.dim < 1 or self.width < 2 or self.depth < 1:
            raise ValueError(f"MLP needs dim >= 1, width >= 2, depth >= 1; got {self.dim}, {self.width}, {self.depth}")


class _Block(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        self.fc2 = zero_(nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(self.drop(F.silu(self.fc1(self.norm(h)) + self.emb(emb))))


class MLP(nn.Module):
    def __init__(self, config: MLPConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or MLPConfig(**kwargs)
        self.config = cfg
        w = cfg.width
        self.noise_emb = noise_embedding(cfg.embedding, w)
        self.emb_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.class_emb = ClassEmbedding(cfg.num_classes, w) if cfg.num_classes > 0 else None
        self.inp = nn.Linear(cfg.dim, w)
        self.blocks = nn.ModuleList(_Block(w, cfg.dropout) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(w)
        self.out = zero_(nn.Linear(w, cfg.dim))

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"MLP expects (batch, {self.config.dim}) input, got {tuple(x.shape)}")
        emb = condition_embedding(self, x, noise_label, class_labels)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))

    def config_dict(self) -> dict:
        return {"kind": "mlp", **asdict(self.config)}
