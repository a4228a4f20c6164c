"""Pixels as files: [0, 1] images to 8 bits, sample grids, 2-D point pictures, and PNG with
text chunks (in memory, or written atomically).

These are the image formats :func:`undiffuse.io.writers.write_samples` and the trainer's
sample grids use; nothing here knows about models or provenance.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from undiffuse.utils.atomic import write_atomic


def to_uint8(x01) -> np.ndarray:
    """(N, C, H, W) in [0, 1] (tensor or array) -> (N, H, W, C) uint8, rounded."""
    a = x01.detach().cpu().numpy() if isinstance(x01, torch.Tensor) else np.asarray(x01)
    if a.ndim != 4:
        raise ValueError(f"to_uint8 takes (N, C, H, W) images, got shape {tuple(a.shape)}")
    return (a.transpose(0, 2, 3, 1) * 255).round().clip(0, 255).astype(np.uint8)


def grid(images_u8: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (rows*(H+pad)+pad, ...) image on white."""
    n, h, w, c = images_u8.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = (n + nrow - 1) // nrow
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images_u8):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return out


def captioned_grid(images_u8: np.ndarray, captions: list[str], *, nrow: int = 4, scale: int = 4,
                   line_chars: int = 18) -> np.ndarray:
    """(N, H, W, C) uint8 images, each upscaled ``scale`` times (nearest) with its caption
    written under it (wrapped at ``line_chars``, two lines at most), tiled ``nrow`` per row
    on white; returns (rows, cols, 3) uint8."""
    if len(captions) != len(images_u8):
        raise ValueError(f"{len(captions)} captions for {len(images_u8)} images; give one per image")
    n, h, w, c = images_u8.shape
    font = ImageFont.load_default()
    tile_w, text_h = max(w * scale, 6 * line_chars + 8), 26
    rows = (n + nrow - 1) // nrow
    sheet = Image.new("RGB", (nrow * tile_w, rows * (h * scale + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, caption) in enumerate(zip(images_u8, captions)):
        r, col = divmod(i, nrow)
        x0, y0 = col * tile_w, r * (h * scale + text_h)
        tile = Image.fromarray(upscale(img if c == 3 else img.repeat(3, axis=2), scale))
        sheet.paste(tile, (x0 + (tile_w - w * scale) // 2, y0))
        words, lines = caption.split(), [""]
        for word in words:
            if len(lines[-1]) + len(word) + 1 > line_chars and lines[-1]:
                lines.append("")
            lines[-1] = f"{lines[-1]} {word}".strip()
        text = "\n".join(lines[:2]) + ("..." if len(lines) > 2 else "")
        draw.multiline_text((x0 + 4, y0 + h * scale + 1), text, fill=(0, 0, 0), font=font, spacing=1)
    return np.asarray(sheet)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, C) -> (factor H, factor W, C), each pixel a ``factor`` x ``factor`` block (nearest)."""
    return np.repeat(np.repeat(image, factor, 0), factor, 1)


def scatter(points: np.ndarray, size: int = 256, extent: float | None = None) -> np.ndarray:
    """A 2-D point set as an (size, size, 1) uint8 density picture (dark = many points)."""
    p = np.asarray(points, np.float64)[:, :2]
    lim = extent or float(np.abs(p).max() * 1.05 + 1e-9)
    hist, _, _ = np.histogram2d(p[:, 1], p[:, 0], bins=size, range=[[-lim, lim], [-lim, lim]])
    dens = np.log1p(hist[::-1]) / max(np.log1p(hist.max()), 1e-9)
    return (255 * (1 - dens)).round().astype(np.uint8)[..., None]


def png_bytes(arr: np.ndarray, text: dict[str, str] | None = None, *, scale: int = 1) -> bytes:
    """An (H, W, C) uint8 array as PNG bytes with ``text`` chunks in their order (deterministic
    for equal input); ``scale`` > 1 enlarges it by nearest-neighbour first."""
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_bytes(path: str, data: bytes, suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    def _write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    write_atomic(path, _write, suffix=suffix)


def save_png(path: str, arr: np.ndarray, *, text: dict[str, str] | None = None, scale: int = 1) -> None:
    """Write an (H, W, C) uint8 array as PNG, atomically, with optional text chunks."""
    write_bytes(path, png_bytes(arr, text, scale=scale), suffix=".png")
