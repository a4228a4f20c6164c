"""``.npy`` / ``.npz`` files of images or vectors (never unpickled)."""
from __future__ import annotations

import numpy as np
import torch

from undiffuse.data.base import DataError, Dataset, _match_channels, _resize_crop

ARRAY_KEYS = ("x", "images", "samples", "data")
LABEL_KEYS = ("y", "labels")


def npz_keys(keys: list[str], preferred: tuple[str, ...], where: str, what: str = "data") -> tuple[str, str | None]:
    """The data array's key in an ``.npz`` with ``keys`` (the first of ``preferred`` present, else
    its single non-label array) and its labels' key (or None); a ``DataError`` naming ``where``
    when neither is found."""
    key = next((k for k in preferred if k in keys), None)
    others = [k for k in keys if k not in LABEL_KEYS]
    if key is None and len(others) == 1:
        key = others[0]
    if key is None:
        raise DataError(f"{where}: no {what} array found; expected one of {preferred} or a single array, found "
                        f"keys {keys}")
    return key, next((k for k in LABEL_KEYS if k in keys), None)




def _array_file(spec: str, path: str, ext: str, size, channels) -> Dataset:
    """Load a ``.npy`` / ``.npz`` file (never unpickling anything)."""
    labels = None
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
            key = ""
        else:
            with np.load(path, allow_pickle=False) as z:
                key, label_key = npz_keys(list(z.files), ARRAY_KEYS, spec)
                arr = z[key]
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


