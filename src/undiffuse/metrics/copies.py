"""Memorisation check: which generated samples are near-copies of training images?

Rule implemented by ``nearest_copies`` (all distances Euclidean, in the flattened pixel space):

* for a sample ``s``, ``j = argmin_i |s - x_i|`` is its nearest training image and
  ``d1 = |s - x_j|``;
* ``d_train(j) = min_{i: x_i != x_j} |x_j - x_i|`` is the real data's own spacing at ``x_j``:
  the distance from ``x_j`` to its nearest *distinct* training image (itself and exact
  duplicates of it are excluded -- with duplicates included, a duplicated image would have
  spacing 0 and even a pixel-exact copy of it could never be flagged);
* ``ratio = d1 / d_train(j)``; the sample is a near-copy when ``ratio < threshold`` (default 1/3).

Rationale: a raw distance threshold means different things in dense and sparse regions of the
data. Measuring ``d1`` in units of the local spacing of the training set asks "is the sample
much closer to one training image than real images are to each other there?" -- a fresh draw
from the data distribution typically lands at a distance comparable to that spacing, a copy
(up to small noise) lands at a small fraction of it.

Relation to the literature (stated so as not to over-claim): the 1/3 threshold comes from the
ratio test used in memorisation studies of diffusion models -- Yoon et al. 2023, "Diffusion
probabilistic models generalize when they fail to memorize" (ICML 2023 SPIGM workshop), and
Gu et al. 2023, "On memorization in diffusion models" (arXiv 2310.02664, TMLR 2025; their
released code computes this ratio on pixel L2 distances) -- which flag a sample when
``|s - NN1(s)| / |s - NN2(s)| < 1/3``, dividing by the distance to the sample's *second*
nearest training image. The denominator here differs: it is the matched training image's own
nearest-neighbour distance, a property of the training set alone, so the same training image
always has the same copy radius ``threshold * d_train(j)``. The two criteria are related but not
equivalent (by the triangle inequality, ``d1 < d_train/3`` implies ``d1/d2 < 1/2``, and
``d1/d2 < 1/3`` implies ``d1 < d_train/2``). Somepalli et al. 2023 ("Diffusion art or digital
forgery?") detect replication differently, with a similarity threshold on SSCD copy-detection
features, and are not the source of this rule.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["nearest_copies", "copy_pairs_grid"]


def _flat(x, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    if t.ndim < 1 or t.shape[0] < 1:
        raise ValueError(f"{name}: expected an array of shape (count, ...) with count >= 1, got shape {tuple(t.shape)}")
    t = t.to(torch.float64).reshape(t.shape[0], -1)
    if t.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one value per item, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contain non-finite values (nan or inf)")
    return t


def _nearest(a: torch.Tensor, b: torch.Tensor, batch_size: int, exclude_self: bool = False):
    """For each row of ``a``: the distance to and index of its nearest row of ``b`` (chunked cdist).
    With ``exclude_self`` (``a is b``), row i of ``a`` never matches row i of ``b``."""
    dist = torch.empty(len(a), dtype=torch.float64)
    idx = torch.empty(len(a), dtype=torch.int64)
    for i in range(0, len(a), batch_size):
        d = torch.cdist(a[i:i + batch_size], b)
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + i] = float("inf")
        j = d.argmin(dim=1)
        # recompute the winning distance directly: cdist's matrix-product path leaves ~1e-8
        # residues, the direct difference gives exactly 0 for pixel-exact copies
        dist[i:i + batch_size] = (a[i:i + batch_size] - b[j]).norm(dim=1)
        idx[i:i + batch_size] = j
    return dist, idx


def nearest_copies(samples, train, *, threshold: float = 1 / 3, batch_size: int = 1024) -> dict:
    """Near-copy test of ``samples`` (M, ...) against ``train`` (N, ...) in flattened pixel space.

    See the module docstring for the rule (``d1 < threshold * d_train``). Returns a dict:

    * ``copy_rate``: fraction of samples flagged; ``copies``: their number; ``count``: M;
      ``threshold``: the threshold used;
    * ``index_sample``: all M sample indices sorted by ratio ascending (ties by index), so the
      first ``copies`` entries are the flagged ones; ``index_train``: the nearest training row of
      each; ``ratio``: ``d1 / d_train`` of each; ``distance``: ``d1`` of each.

    Needs at least two distinct training images (otherwise the spacing is undefined).
    """
    s, t = _flat(samples, "samples"), _flat(train, "train")
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"samples and train must have the same number of values per item, "
                         f"got {s.shape[1]} (samples) and {t.shape[1]} (train)")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # spacing of the training set, over distinct images (exact duplicates merged)
    uniq, inverse = torch.unique(t, dim=0, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError(f"train needs at least 2 distinct images to define its spacing, got {len(uniq)}")
    d_uniq, _ = _nearest(uniq, uniq, batch_size, exclude_self=True)
    d_train = d_uniq[inverse]
    d1, j = _nearest(s, t, batch_size)
    ratio = d1 / d_train[j]
    order = np.lexsort((np.arange(len(s)), ratio.numpy()))  # by ratio, then by sample index
    copies = int((ratio < threshold).sum())
    return {
        "copy_rate": copies / len(s),
        "copies": copies,
        "count": len(s),
        "threshold": threshold,
        "index_sample": order,
        "index_train": j.numpy()[order],
        "ratio": ratio.numpy()[order],
        "distance": d1.numpy()[order],
    }


def _images(x, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(np.float64)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"{name}: expected images of shape (N, C, H, W) or (N, H, W), got {a.shape}")
    return a


def copy_pairs_grid(samples, train, result: dict, k: int = 16, ncol: int = 4) -> np.ndarray:
    """Image of the ``k`` lowest-ratio (sample | nearest training image) pairs from ``result``.

    ``samples`` (M, C, H, W) and ``train`` (N, C, H, W) in [0, 1] (values are clipped), ``result``
    from ``nearest_copies`` on the same arrays. Pairs are laid out ``ncol`` per row, in order of
    increasing ratio; within a pair the sample is on the left and the training image on the
    right, separated by a 1-pixel grey line; pairs are separated by 2-pixel white gaps.
    Returns float64 in [0, 1] of shape (rows, cols) for C = 1, else (rows, cols, C), ready for
    ``PIL.Image.fromarray((grid * 255).round().astype(np.uint8))``.
    """
    s, t = _images(samples, "samples"), _images(train, "train")
    if s.shape[1:] != t.shape[1:]:
        raise ValueError(f"samples and train images differ in shape: {s.shape[1:]} vs {t.shape[1:]}")
    k = min(int(k), len(result["index_sample"]))
    if k < 1:
        raise ValueError("k must be >= 1 and result must hold at least one sample")
    _, c, h, w = s.shape
    ncol = max(1, min(int(ncol), k))
    nrow = (k + ncol - 1) // ncol
    gap, pair_w = 2, 2 * w + 1
    grid = np.ones((c, gap + nrow * (h + gap), gap + ncol * (pair_w + gap)))
    for n in range(k):
        r, q = divmod(n, ncol)
        y0, x0 = gap + r * (h + gap), gap + q * (pair_w + gap)
        grid[:, y0:y0 + h, x0:x0 + w] = s[result["index_sample"][n]]
        grid[:, y0:y0 + h, x0 + w] = 0.5
        grid[:, y0:y0 + h, x0 + w + 1:x0 + pair_w] = t[result["index_train"][n]]
    grid = grid.clip(0, 1)
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)
