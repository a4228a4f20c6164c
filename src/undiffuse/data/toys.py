"""The built-in 2-D toy distributions (vectors, centred, overall std 1)."""
from __future__ import annotations

import numpy as np
import torch

TOYS = ("moons", "swiss_roll", "checkerboard", "eight_gaussians", "spirals")

from undiffuse.data.base import DataError, Dataset


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


