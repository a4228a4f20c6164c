"""Evaluation feature space for 28x28 greyscale digits (the built-in ``mnist5k``).

The same idea as ``features`` (the 8x8 digits space) one size up: a small classifier trained
here, on all 5,000 ``mnist5k`` images, whose penultimate activations stand in for Inception's
in a Frechet distance (``fd_mnist``). Nothing is downloaded; the weights are trained once
(about 30-60 s on one thread) and cached under ``$UNDIFFUSE_CACHE`` in a safetensors file
named by a sha256 over the pixels, labels, recipe version and hyperparameters.

Network (``MnistNet``): input (N, 1, 28, 28) in [0, 1] (0 = background)
-> conv 3x3, 32 ch, ReLU -> 2x2 max-pool -> conv 3x3, 64 ch, ReLU -> 2x2 max-pool (64 x 7 x 7)
-> linear 3136 -> 64, ReLU = **the features** (64-D) -> linear 64 -> 10 logits.

Training recipe (``HPARAMS``): cross-entropy, AdamW (lr 2e-3, weight decay 1e-4), one-cycle
schedule, 12 epochs of batches of 64; each batch image shifted by a random integer offset in
{-2..2} per axis and given N(0, 0.05^2) pixel noise (clipped), so the features do not key on
exact training pixels. Deterministic: He-normal initialisation from one seeded generator, one
thread, deterministic algorithms; the caller's torch state is restored afterwards.

Held-out accuracy of the recipe (``holdout_accuracy()``: train on a random 80%, test once on
the other 1,000 images) and the feature space's reference points (``calibration_scores()``)
are recorded in BENCHMARKS.md where they are used. ``fd_mnist`` compares equal-sized sets
by convention: the Frechet distance is biased upwards for small sets.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from undiffuse import data as _data
from undiffuse.utils.cache import cache_dir

from .frechet import frechet_distance, gaussian_stats
from . import trained
from .trained import cached_network, deterministic, train_classifier

__all__ = ["MnistNet", "mnist_features", "fd_mnist", "mnist_data", "calibration_scores", "holdout_accuracy"]

RECIPE = "undiffuse-mnist-features-v1"
HPARAMS = {"channels": 32, "features": 64, "epochs": 12, "batch": 64, "lr": 2e-3, "weight_decay": 1e-4,
           "shift": 2, "pixel_noise": 0.05, "seed": 0, "threads": 1}
SIDE = 28

_MEMO: dict = {}


class MnistNet(nn.Module):
    """Small CNN for 28x28 digits; ``features`` gives the penultimate (64-D, post-ReLU) activations."""

    def __init__(self, channels: int = 32, features: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc = nn.Linear(2 * channels * (SIDE // 4) ** 2, features)
        self.head = nn.Linear(features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, SIDE, SIDE).to(self.conv1.weight.dtype)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def mnist_data() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 ``mnist5k`` images as float32 (5000, 1, 28, 28) in [0, 1], and their labels."""
    ds = _data.load("mnist5k")
    return ds.storage.numpy().astype(np.float32) / np.float32(ds.max_value), ds.labels.numpy().astype(np.int64)


@functools.lru_cache(maxsize=None)
def _content_hash() -> str:
    x, y = mnist_data()
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x * 255.0, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    h.update(RECIPE.encode())
    h.update(json.dumps(HPARAMS, sort_keys=True).encode())
    return h.hexdigest()


def weights_path() -> str:
    return os.path.join(cache_dir(), f"mnist_features_{_content_hash()[:20]}.safetensors")


def _train(images: np.ndarray, labels: np.ndarray, hp: dict = HPARAMS) -> MnistNet:
    """``MnistNet`` trained with the module's recipe (``trained.train_classifier``); deterministic;
    the global torch state is restored."""
    with deterministic(hp["threads"]):
        net = MnistNet(hp["channels"], hp["features"])
        return train_classifier(net, torch.as_tensor(images, dtype=torch.float32),
                                torch.as_tensor(labels, dtype=torch.int64), hp)


def holdout_accuracy(seed: int = 0) -> float:
    """Test accuracy of the recipe: train on a random 80% of mnist5k, evaluate once on the rest."""
    return trained.holdout_accuracy(*mnist_data(), _train, seed)


def _extractor() -> MnistNet:
    """The trained net in float64: memoised, else loaded from the cache file, else trained and cached."""
    entry = cached_network(_MEMO, weights_path(), lambda: MnistNet(HPARAMS["channels"], HPARAMS["features"]),
                           lambda: _train(*mnist_data()), {"recipe": RECIPE, "hparams": HPARAMS}, "mnist feature")
    if "net64" not in entry:
        entry["net64"] = copy.deepcopy(entry["net"]).double().eval()
    return entry["net64"]


def _as_images(images, name: str) -> torch.Tensor:
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 4 or arr.shape[1:] != (1, SIDE, SIDE) or len(arr) < 1:
        raise ValueError(f"{name}: the mnist feature space needs images of shape (N, 1, 28, 28), got {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain non-finite values")
    if arr.min() < -0.01 or arr.max() > 1.01:
        raise ValueError(f"{name} must be in [0, 1] (0 = background), got [{arr.min():.4g}, {arr.max():.4g}]")
    return torch.from_numpy(arr)


def mnist_features(images, *, batch_size: int = 500) -> np.ndarray:
    """Penultimate features (float64, (N, 64)) of images (N, 1, 28, 28) in [0, 1]."""
    x, net = _as_images(images, "images"), _extractor()
    with torch.no_grad():
        return torch.cat([net.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def fd_mnist(samples, reference) -> float:
    """Frechet distance between Gaussian fits of the ``mnist_features`` of two image sets."""
    fs, fr = mnist_features(samples), mnist_features(reference)
    if len(fs) < 2 or len(fr) < 2:
        raise ValueError(f"need at least 2 images in each set, got {len(fs)} and {len(fr)}")
    return frechet_distance(*gaussian_stats(fs), *gaussian_stats(fr))


def calibration_scores(seed: int = 0) -> dict:
    """Reference points (numpy ``default_rng(seed)``): ``halves``, two random halves of mnist5k
    (2,500 each), one against the other; ``noisy_real``, one half + N(0, 0.15^2) pixel noise
    (clipped) against the other; ``noise``, 2,500 uniform noise images against the second half."""
    x, _ = mnist_data()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    a, b = x[perm[:len(x) // 2]], x[perm[len(x) // 2:]]
    return {"halves": fd_mnist(a, b), "noisy_real": fd_mnist(np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1), b),
            "noise": fd_mnist(rng.random(a.shape), b)}
