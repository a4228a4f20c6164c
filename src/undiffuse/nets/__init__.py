"""Networks: plain ``nn.Module``s mapping (input, noise label, optional class) to a raw output.

``build(config)`` is the one place a config dict (``{"kind": "unet", ...}``) becomes a module.
"""
from __future__ import annotations

from torch import nn

from .control import ControlAdapter, ControlledNet, build_controlled
from .dit import DiT, DiTConfig
from .mlp import MLP, MLPConfig
from .unet import UNet, UNetConfig
from .video_unet import VideoUNet, VideoUNetConfig

KINDS = {"unet": (UNet, UNetConfig), "mlp": (MLP, MLPConfig), "dit": (DiT, DiTConfig),
         "video_unet": (VideoUNet, VideoUNetConfig)}
IMAGE_KINDS = ("unet", "dit", "controlled")
VIDEO_KINDS = ("video_unet",)


def build(config: dict) -> nn.Module:
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind == "controlled":  # a frozen U-Net with control adapters (nets.control)
        return build_controlled(config)
    if kind not in KINDS:
        raise ValueError(f"unknown network kind {kind!r}; allowed: {', '.join(KINDS)}")
    cls, cfg_cls = KINDS[kind]
    allowed = set(cfg_cls.__dataclass_fields__)
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(f"network {kind!r} has no option(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return cls(cfg_cls(**cfg))


def image_channels(config: dict) -> int:
    """The channels of the samples an image network's config makes (a control run: its base's)."""
    return config["base"]["in_channels"] if config.get("kind") == "controlled" else config["in_channels"]


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = ["ControlAdapter", "ControlledNet", "DiT", "DiTConfig", "image_channels", "MLP", "MLPConfig", "UNet", "UNetConfig", "VideoUNet", "VideoUNetConfig", "build", "num_parameters", "KINDS",
           "IMAGE_KINDS", "VIDEO_KINDS"]
