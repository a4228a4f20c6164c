"""Control maps: the structure a control adapter is steered by, computed from an image by a
named extractor (as ControlNet front-ends run their preprocessor on the user's picture).

Every extractor takes images ``(N, C, H, W)`` (or one ``(C, H, W)``) in [0, 1] as a tensor
or an array and returns maps ``(N, K, H, W)`` float32 in [0, 1] at the same size:

- ``edges``: Canny edges of the luminance (scikit-image's ``feature.canny``, Gaussian
  ``sigma`` 1, hysteresis thresholds 0.1 / 0.2 of the gradient magnitude); one channel, 0 or 1.
- ``sketch``: a coarse line drawing: Canny edges at ``sigma`` 2, joined by one pixel of
  dilation and thinned back to one-pixel strokes (``morphology.skeletonize``); one channel.
- ``mask``: the foreground: the alpha channel when the image has one (4 channels), else the
  pixels that differ from the background colour (the median of the border pixels) by more
  than 0.1 in any channel, holes filled; one channel, 0 or 1.
- ``layout``: a coarse colour map: the mean colour of each of ``cells`` x ``cells`` blocks,
  shown at full size; C channels.
- ``lowres``: the image averaged down by ``factor`` and brought back up bilinearly; C channels.

``control_f1`` (``metrics``) scores how well a sample follows an edge map by running the same
``edges`` extractor on it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage import feature, morphology

Tensor = torch.Tensor


def _batch(images) -> Tensor:
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images).float()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"a control extractor takes images (N, C, H, W) or (C, H, W); got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3, 4):
        raise ValueError(f"images must have 1, 3 or 4 channels (grey, RGB, RGBA); got {x.shape[1]}")
    return x.clamp(0, 1)


def luminance(x: Tensor) -> Tensor:
    """(N, H, W): Rec. 601 luma of RGB(A), or the grey channel."""
    if x.shape[1] == 1:
        return x[:, 0]
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def _per_image(fn, planes: Tensor) -> Tensor:
    out = np.stack([fn(p) for p in planes.double().numpy()])
    return torch.from_numpy(out.astype(np.float32))[:, None]


def edges(images, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> Tensor:
    x = _batch(images)
    return _per_image(lambda p: feature.canny(p, sigma=sigma, low_threshold=low, high_threshold=high), luminance(x))


def sketch(images, sigma: float = 2.0) -> Tensor:
    x = _batch(images)

    def one(p):
        e = feature.canny(p, sigma=sigma, low_threshold=0.05, high_threshold=0.1)
        return morphology.skeletonize(ndimage.binary_dilation(e))

    return _per_image(one, luminance(x))


def mask(images, threshold: float = 0.1) -> Tensor:
    x = _batch(images)
    if x.shape[1] == 4:
        return (x[:, 3:] > 0.5).float()
    rgb = x.double().numpy()
    out = []
    for img in rgb:
        border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], axis=1)  # (C, 2H + 2W)
        bg = np.median(border, axis=1)[:, None, None]
        out.append(ndimage.binary_fill_holes(np.abs(img - bg).max(0) > threshold))
    return torch.from_numpy(np.stack(out).astype(np.float32))[:, None]


def layout(images, cells: int = 4) -> Tensor:
    x = _batch(images)[:, :3]
    small = F.adaptive_avg_pool2d(x, cells)
    return F.interpolate(small, size=x.shape[-2:], mode="nearest")


def lowres(images, factor: int = 4) -> Tensor:
    x = _batch(images)[:, :3]
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, h // factor), max(1, w // factor)), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


EXTRACTORS = {"edges": edges, "sketch": sketch, "mask": mask, "layout": layout, "lowres": lowres}


def channels(name: str, image_channels: int) -> int:
    """The number of channels extractor ``name`` gives for images of ``image_channels``."""
    check(name)
    return 1 if name in ("edges", "sketch", "mask") else min(image_channels, 3)


def check(name: str) -> None:
    if name not in EXTRACTORS:
        raise ValueError(f"unknown control extractor {name!r}; allowed: {', '.join(EXTRACTORS)}")


def to_grid(maps: Tensor, side: int) -> Tensor:
    """Maps at the image's size brought to a network's ``side`` (a latent grid) without loss:
    each block of pixels becomes channels (space to depth); unchanged at the same size."""
    f = maps.shape[-1] // side
    if f * side != maps.shape[-1]:
        raise ValueError(f"control maps of {maps.shape[-1]} px do not tile a {side} px grid")
    return maps if f == 1 else F.pixel_unshuffle(maps, f)


def extract(name: str, images) -> Tensor:
    """The ``name`` map of ``images`` (see the module docstring)."""
    check(name)
    return EXTRACTORS[name](images)
