"""What every dataset is: a :class:`Dataset` of stored items with labels, the errors and
warnings loaders raise, and the tensor helpers the image loaders share (resize and crop,
channel matching)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

SUPPORTED = ("a folder of .png/.jpg/.jpeg/.webp images, of .wav/.flac/.ogg sounds or of .gif/.mp4/.webm videos, "
             "a .npy file or a .npz file")


class DataError(ValueError):
    """A dataset cannot be loaded (unknown spec, bad file in strict mode, empty or invalid data)."""


class DataWarning(UserWarning):
    """A file was skipped or a layout was interpreted in a possibly surprising way."""


@dataclass(eq=False)
class Dataset:
    """An in-memory dataset; ``get`` converts a batch of stored items to model space."""

    name: str
    kind: str  # "image", "vector", "audio" (data.audio: info["audio"] says which representation)
    #            or "video" (data.video: (T, C, H, W) clips stored uint8, info["video"] frames and fps)
    shape: tuple[int, ...]
    labels: torch.Tensor | None
    class_names: list[str]
    source: str
    storage: torch.Tensor = field(repr=False, default=None)  # (N, *shape)
    max_value: float | None = None  # images and videos: stored value that maps to +1 (0 maps to -1)
    captions: list[list[str]] | None = field(repr=False, default=None)  # per item: its caption wordings (text-to-image data)
    info: dict = field(repr=False, default_factory=dict)  # licence, attribution and other facts a run records

    def __len__(self) -> int:
        return int(self.storage.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def get(self, index) -> torch.Tensor:
        """Float32 batch ``(B, *shape)``: images and videos in ``[-1, 1]``, waveforms in ``[-1, 1)``, the rest as stored."""
        x = self.storage[_as_index(index)].to(torch.float32)
        if self.kind in ("image", "video"):
            x = x / self.max_value * 2 - 1
        elif self.max_value is not None:  # 16-bit PCM waveforms
            x = x / self.max_value
        return x

    def labels_of(self, index) -> torch.Tensor | None:
        """Labels for ``index`` (int64), or None for an unlabelled dataset."""
        return None if self.labels is None else self.labels[_as_index(index)]

    def to_unit(self, x):
        """Images and videos: model space ``[-1, 1]`` to ``[0, 1]`` (clamped). Vectors: ``x`` unchanged."""
        if self.kind not in ("image", "video"):
            return x
        return ((x + 1) / 2).clamp(0, 1)


def _as_index(index):
    return index if isinstance(index, (torch.Tensor, int, slice)) else torch.as_tensor(index, dtype=torch.long)


def _parse_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise DataError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    return size




def _resize_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of float ``(N, C, h, w)`` to cover ``size``, then centre-crop."""
    h, w = x.shape[-2:]
    H, W = size
    scale = max(H / h, W / w)
    nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - H) // 2, (nw - W) // 2
    return x[..., top:top + H, left:left + W]


def _match_channels(x: torch.Tensor, channels: int | None, name: str) -> torch.Tensor:
    """Float ``(N, C, H, W)``: drop alpha (4 -> 3), grey to RGB by repeating, RGB to grey by luma."""
    c = x.shape[1]
    if channels is None or channels == c:
        return x
    if c == 4:
        x, c = x[:, :3], 3
    if channels == 3 and c == 1:
        return x.repeat(1, 3, 1, 1)
    if channels == 1 and c == 3:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * luma).sum(1, keepdim=True)
    if channels == c:
        return x
    raise DataError(f"{name}: cannot convert {c} channels to {channels}")


