"""Networks: plain ``nn.Module``s mapping (input, noise label, optional class) to a raw output.

``build(config)`` is the one place a config dict (``{"kind": "unet", ...}``) becomes a module.
"""
from __future__ import annotations

from torch import nn

from .dit import DiT, DiTConfig
from .mlp import MLP, MLPConfig
from .unet import UNet, UNetConfig

KINDS = {"unet": (UNet, UNetConfig), "mlp": (MLP, MLPConfig), "dit": (DiT, DiTConfig)}
IMAGE_KINDS = ("unet", "dit")


def build(config: dict) -> nn.Module:
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"unknown network kind {kind!r}; allowed: {', '.join(KINDS)}")
    cls, cfg_cls = KINDS[kind]
    allowed = set(cfg_cls.__dataclass_fields__)
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(f"network {kind!r} has no option(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return cls(cfg_cls(**cfg))


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = ["DiT", "DiTConfig", "MLP", "MLPConfig", "UNet", "UNetConfig", "build", "num_parameters", "KINDS",
           "IMAGE_KINDS"]
