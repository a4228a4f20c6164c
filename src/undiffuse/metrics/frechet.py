"""Frechet distance between Gaussians (Dowson & Landau 1982; the FID formula of Heusel et al. 2017):

    FD = |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2})

The trace of the matrix square root is computed as tr((S1 C2 S1)^{1/2}) with S1 = C1^{1/2},
a symmetric positive semi-definite form whose eigenvalues are real: stable when a covariance
is singular (constant pixels), where a general ``sqrtm(C1 @ C2)`` warns or turns complex.
"""
from __future__ import annotations

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (n, d) feature array."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors, got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(w.clip(min=0))) @ v.T


def frechet_distance(mu1, c1, mu2, c2) -> float:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    c1, c2 = np.atleast_2d(np.asarray(c1, np.float64)), np.atleast_2d(np.asarray(c2, np.float64))
    if mu1.shape != mu2.shape or c1.shape != c2.shape or c1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes differ: means {mu1.shape} vs {mu2.shape}, covariances {c1.shape} vs {c2.shape}")
    s1 = _psd_sqrt(c1)
    middle = s1 @ c2 @ s1
    tr_sqrt = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt)
