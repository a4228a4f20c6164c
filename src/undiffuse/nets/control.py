"""Control adapters (ControlNet, Zhang et al. 2023, written here from the paper): a trainable
copy of a frozen U-Net's down path that also reads a control map, joined to the frozen
network through zero-initialised 1x1 convolutions, one per skip connection and one for the
middle. At initialisation every join outputs exactly zero, so the controlled network equals
the base network bit for bit; training moves only the adapter.

The control map comes at the image's resolution (for a latent run: the decoded image's);
a small hint encoder (3x3 convolutions, stride 2 per halving, SiLU) brings it to the
resolution of the base's stem output, and its last convolution, also zero-initialised, adds
it to the copy's stem output.

``ControlledNet`` is the network a denoiser calls: the frozen base plus any number of adapters
with their scales; the condition ``control`` holds their maps, concatenated along the channels.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from undiffuse.nets.layers import zero_
from undiffuse.nets.unet import UNet, UNetConfig

Tensor = torch.Tensor
HINT_CHANNELS = (16, 32, 64, 128)  # of the hint encoder, per resolution step


class ControlAdapter(nn.Module):
    """A control adapter for a U-Net built from ``unet_config`` (a ``UNetConfig`` or the
    config dict of ``UNet.config_dict``), reading ``control_channels``-channel maps of
    ``map_size`` pixels per side. ``sample_size``: the side of the samples the base denoises."""

    def __init__(self, unet_config, control_channels: int, map_size: int, sample_size: int):
        super().__init__()
        if isinstance(unet_config, dict):
            unet_config = UNetConfig(**{k: v for k, v in unet_config.items() if k != "kind"})
        self.config = {"unet": unet_config, "control_channels": control_channels, "map_size": map_size,
                       "sample_size": sample_size}
        enc = UNet(unet_config)
        del enc.up, enc.out, enc.out_norm  # the down path only
        self.encoder = enc
        stem_size = sample_size // unet_config.patch_size
        ratio = map_size / stem_size
        halvings = round(math.log2(ratio)) if ratio >= 1 else -1
        if halvings < 0 or 2 ** halvings * stem_size != map_size:
            raise ValueError(f"control maps of {map_size} px cannot be brought to the network's {stem_size} px "
                             f"by halvings; the map size must be the sample size times a power of 2")
        layers, cin = [], control_channels
        for i in range(halvings + 1):
            cout = HINT_CHANNELS[min(i, len(HINT_CHANNELS) - 1)]
            layers += [nn.Conv2d(cin, cout, 3, padding=1, stride=1 if i == 0 else 2), nn.SiLU()]
            cin = cout
        layers.append(zero_(nn.Conv2d(cin, unet_config.channels, 3, padding=1)))
        self.hint = nn.Sequential(*layers)
        self.joins = nn.ModuleList(zero_(nn.Conv2d(c, c, 1)) for c in enc.skip_channels())

    def load_base(self, base: UNet) -> None:
        """Start the copy from the base's weights (its down path, embeddings and stem)."""
        own = self.encoder.state_dict()
        self.encoder.load_state_dict({k: v for k, v in base.state_dict().items() if k in own})

    def forward(self, x: Tensor, noise_label: Tensor, control: Tensor, class_labels=None, context=None,
                context_mask=None, cond_image=None) -> list[Tensor]:
        hint = self.hint(control.to(x.dtype))
        hs, h, _, _ = self.encoder.encode(x, noise_label, class_labels, context, context_mask, cond_image,
                                          stem_add=hint)
        return [join(a) for join, a in zip(self.joins, [*hs, h])]


class ControlledNet(nn.Module):
    """The frozen ``base`` U-Net steered by ``adapters`` with ``scales``; called like the base
    with ``control``: the adapters' maps concatenated along the channels, in order (one
    tensor, so that batching, guidance and data parallelism treat it like any condition)."""

    def __init__(self, base: UNet, adapters: list[ControlAdapter], scales: list[float]):
        super().__init__()
        if len(adapters) != len(scales):
            raise ValueError(f"{len(adapters)} adapters but {len(scales)} scales")
        self.base, self.adapters, self.scales = base, nn.ModuleList(adapters), list(scales)

    def forward(self, x: Tensor, noise_label: Tensor, control: Tensor | None = None, **cond) -> Tensor:
        if control is None or not len(self.adapters):
            return self.base(x, noise_label, **cond)
        sizes = [a.config["control_channels"] for a in self.adapters]
        if control.shape[1] != sum(sizes):
            raise ValueError(f"control: {control.shape[1]} channels, the adapters read {' + '.join(map(str, sizes))}")
        total = None
        for adapter, scale, m in zip(self.adapters, self.scales, control.split(sizes, dim=1)):
            res = [scale * r for r in adapter(x, noise_label, m, **cond)]
            total = res if total is None else [t + r for t, r in zip(total, res)]
        return self.base(x, noise_label, control=total, **cond)


def build_controlled(config: dict) -> ControlledNet:
    """The network of a control run: ``{"kind": "controlled", "base": <the base U-Net's config
    dict>, "adapters": [{"extractor", "control_channels", "map_size", "sample_size"}, ...],
    "scales": [...]}`` (other keys are records for the run, not network options)."""
    base_cfg = dict(config["base"])
    kind = base_cfg.pop("kind", None)
    if kind != "unet":
        raise ValueError(f"control adapters are built for U-Net runs; the base network is {kind!r}")
    unet_cfg = UNetConfig(**base_cfg)
    adapters = [ControlAdapter(unet_cfg, a["control_channels"], a["map_size"], a["sample_size"])
                for a in config["adapters"]]
    scales = config.get("scales") or [1.0] * len(adapters)
    return ControlledNet(UNet(unet_cfg).requires_grad_(False), adapters, scales)
