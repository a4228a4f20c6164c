"""k-NN manifold metrics of sample fidelity and diversity.

Notation: real features X = {x_1..x_N}, generated ("fake") features Y = {y_1..y_M}, Euclidean
distance |.|, and NND_k(z) = the distance from a point z of a set to its k-th nearest
neighbour among the *other* points of the same set (the point itself, by index, is excluded; an
exact duplicate at another index counts as a neighbour at distance 0). B(z, r) is the closed
ball {u : |u - z| <= r}.

* Improved precision and recall -- Kynkaanniemi, Karras, Laine, Lehtinen & Aila 2019,
  "Improved Precision and Recall Metric for Assessing Generative Models" (NeurIPS 2019,
  arXiv:1904.06991), eq. (1)-(2). A point lies in the manifold of a set S when it is inside the
  k-NN ball of at least one member of S:

      f(u, S)   = 1  if  |u - s| <= NND_k(s)  for at least one s in S,  else 0
      precision = 1/M sum_j f(y_j, X)          recall = 1/N sum_i f(x_i, Y)

* Density and coverage -- Naeem, Oh, Uh, Choi & Yoo 2020, "Reliable Fidelity and Diversity
  Metrics for Generative Models" (ICML 2020, arXiv:2002.09797), section 3:

      density  = 1/(k M) sum_j sum_i 1[ y_j in B(x_i, NND_k(x_i)) ]
      coverage = 1/N     sum_i 1[ exists j : y_j in B(x_i, NND_k(x_i)) ]

  density is not bounded by 1: E[density] = 1 when Y and X come from the same distribution,
  and exactly 1 + 1/k when Y equals X (every y_j sits at the centre of its twin's ball and on
  the boundary of k more balls, absent distance ties).

Kynkaanniemi et al. write the membership test with ``<=``; this module uses that closed ball
for all four metrics. (The code released with Naeem et al. compares with a strict ``<``; the
two differ only on exact ties, e.g. a generated exact copy of a real point that is another real
point's k-th neighbour, which ``<=`` counts as inside.)

Computation: all distances are evaluated in tiles of at most ``batch_size x batch_size`` pairs,
so memory stays O(batch_size^2 + (N + M) k): a few batch_size^2 float64 arrays, ~34 MB each
at the default 2048, whatever N and M are.
A tile's squared distances come from one matrix product, |a|^2 + |b|^2 - 2 a.b, in float64.
Every comparison against a radius that this fast value cannot decide -- it lies within a
rigorous rounding-error bound of the radius -- is re-evaluated with the reference distance
sum_t (a_t - b_t)^2 summed in a fixed pairwise order. Radii are likewise reference distances
of the k nearest candidates. The reference distance is symmetric and reproducible bit-for-bit,
so ties are decided consistently: a copy of a real point's k-th neighbour is exactly on that
point's boundary, hence inside. The only residual approximation is *which* point is the k-th
neighbour when two candidates' distances agree to ~1e-13 relative.
"""
from __future__ import annotations

import numpy as np

from .kid import _check_pair, _feature_matrix, _positive_int

__all__ = ["prdc"]

# |fast - reference| squared distance <= _ERR_PER_DIM * (d + 4) * (|a|^2 + |b|^2): a safe
# multiple of the standard dot-product error bound gamma_d = d u / (1 - d u) (u = 2^-53)
_ERR_PER_DIM = 4.0 * np.finfo(np.float64).eps


def _reference_sqdist(a: np.ndarray, b: np.ndarray, chunk: int) -> np.ndarray:
    """Row-wise squared distance sum_t (a_t - b_t)^2 of equal-shape (P, d) arrays, summed by a
    fixed pairwise tree (zero-padded to a power of two). Only elementwise IEEE operations are
    used, so the value depends on the two vectors alone (not on batch, position or BLAS) and is
    symmetric in a and b."""
    n, d = a.shape
    width = 1 << (d - 1).bit_length()
    out = np.empty(n, dtype=np.float64)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        s = np.zeros((hi - lo, width), dtype=np.float64)
        diff = a[lo:hi] - b[lo:hi]
        s[:, :d] = diff * diff
        while s.shape[1] > 1:
            half = s.shape[1] // 2
            s = s[:, :half] + s[:, half:]
        out[lo:hi] = s[:, 0]
    return out


def _fast_sqdist(a: np.ndarray, b: np.ndarray, na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared distances via one matrix product (float64), clipped at 0."""
    sq = a @ b.T
    sq *= -2.0
    sq += na[:, None]
    sq += nb[None, :]
    np.maximum(sq, 0.0, out=sq)
    return sq


class _Tiler:
    """Squared distances between two row sets, tile by tile, with radius tests that are exact
    with respect to ``_reference_sqdist``."""

    def __init__(self, a: np.ndarray, b: np.ndarray, batch_size: int):
        self.a, self.b, self.bs = a, b, batch_size
        self.na = np.einsum("ij,ij->i", a, a)
        self.nb = np.einsum("ij,ij->i", b, b)
        self.err = _ERR_PER_DIM * (a.shape[1] + 4)
        # rows per reference-distance batch: keep its (rows, width) scratch near bs^2 values
        self.ref_chunk = max(1, (batch_size * batch_size) // (1 << (a.shape[1] - 1).bit_length()))

    def tiles(self):
        for i in range(0, len(self.a), self.bs):
            for j in range(0, len(self.b), self.bs):
                ai, bj = slice(i, i + self.bs), slice(j, j + self.bs)
                yield i, j, _fast_sqdist(self.a[ai], self.b[bj], self.na[ai], self.nb[bj])

    def within(self, sq: np.ndarray, i: int, j: int, r2: np.ndarray) -> np.ndarray:
        """Boolean tile: reference squared distance <= ``r2`` (broadcast against the tile),
        deciding from the fast ``sq`` where it is unambiguous and recomputing elsewhere."""
        # per-row bound (the largest |b|^2 of the tile): slightly wider than per pair, no tile array
        tol = self.err * (self.na[i:i + sq.shape[0]] + self.nb[j:j + sq.shape[1]].max())
        inside = sq <= r2
        gap = sq - r2
        np.abs(gap, out=gap)
        rows, cols = np.nonzero(gap <= tol[:, None])
        del gap
        if rows.size:
            ref = _reference_sqdist(self.a[i + rows], self.b[j + cols], self.ref_chunk)
            inside[rows, cols] = ref <= np.broadcast_to(r2, sq.shape)[rows, cols]
        return inside


def _knn_radii_sq(x: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    """Squared NND_k of every row of ``x``: k-th smallest reference distance to the other rows
    (self excluded by index). Candidates come from the fast tiles, a running top-k per row."""
    n = len(x)
    tiler = _Tiler(x, x, batch_size)
    best_val = np.full((n, k), np.inf)
    best_idx = np.zeros((n, k), dtype=np.int64)
    for i, j, sq in tiler.tiles():
        rows = np.arange(sq.shape[0])
        diag = rows + i - j  # column of each row's own index, when inside this tile
        ok = (diag >= 0) & (diag < sq.shape[1])
        sq[rows[ok], diag[ok]] = np.inf
        cand = np.broadcast_to(np.arange(j, j + sq.shape[1]), sq.shape)
        if sq.shape[1] > k:  # the tile's own k smallest first, then merge with the running best
            part = np.argpartition(sq, k - 1, axis=1)[:, :k]
            sq, cand = np.take_along_axis(sq, part, axis=1), part + j
        vals = np.concatenate([best_val[i:i + sq.shape[0]], sq], axis=1)
        idx = np.concatenate([best_idx[i:i + sq.shape[0]], cand], axis=1)
        keep = np.argpartition(vals, k - 1, axis=1)[:, :k]
        best_val[i:i + sq.shape[0]] = np.take_along_axis(vals, keep, axis=1)
        best_idx[i:i + sq.shape[0]] = np.take_along_axis(idx, keep, axis=1)
    # k >= 1 and k < n guarantee k finite candidates per row; the radius is the largest
    # reference distance among them (row blocks keep the (rows * k, d) copies bounded)
    radii_sq = np.empty(n, dtype=np.float64)
    rows_per_block = max(1, tiler.ref_chunk // k)
    for lo in range(0, n, rows_per_block):
        hi = min(n, lo + rows_per_block)
        ref = _reference_sqdist(np.repeat(x[lo:hi], k, axis=0), x[best_idx[lo:hi].ravel()], tiler.ref_chunk)
        radii_sq[lo:hi] = ref.reshape(hi - lo, k).max(axis=1)
    return radii_sq


def prdc(real_features, fake_features, *, k: int = 5, batch_size: int = 2048) -> dict:
    """Improved precision/recall (Kynkaanniemi et al. 2019) and density/coverage (Naeem et al.
    2020) of ``fake_features`` (M, d) against ``real_features`` (N, d); see the module docstring
    for the exact formulas:

        precision = 1/M sum_j 1[ exists i: |y_j - x_i| <= NND_k(x_i) ]
        recall    = 1/N sum_i 1[ exists j: |x_i - y_j| <= NND_k(y_j) ]
        density   = 1/(kM) sum_j sum_i 1[ |y_j - x_i| <= NND_k(x_i) ]
        coverage  = 1/N sum_i 1[ exists j: |y_j - x_i| <= NND_k(x_i) ]

    with NND_k the k-th nearest-neighbour distance within the point's own set, the point itself
    excluded. Requires 1 <= k < N and k < M, the same feature dimension d, finite values.
    ``batch_size`` bounds the tile of distances held at once (memory ~ batch_size^2 floats).
    Returns ``{"precision", "recall", "density", "coverage", "k"}`` as Python floats (k int).
    Naeem et al. recommend k = 5 (the default); Kynkaanniemi et al. used k = 3.
    """
    x = _feature_matrix(real_features, "real_features", min_rows=1)
    y = _feature_matrix(fake_features, "fake_features", min_rows=1)
    _check_pair(x, y, "real_features", "fake_features")
    k = _positive_int(k, "k", 1)
    batch_size = _positive_int(batch_size, "batch_size", 1)
    for name, f in (("real_features", x), ("fake_features", y)):
        if k >= len(f):
            raise ValueError(f"k={k} needs more than k rows in {name} (the k-th neighbour excludes "
                             f"the point itself), got {len(f)} rows; use k < {len(f)} or more data")
    n, m = len(x), len(y)
    r2_real = _knn_radii_sq(x, k, batch_size)
    r2_fake = _knn_radii_sq(y, k, batch_size)

    in_manifold = np.zeros(m, dtype=bool)        # y_j inside some real ball   -> precision
    ball_count = np.zeros(m, dtype=np.int64)     # number of real balls containing y_j -> density
    covered = np.zeros(n, dtype=bool)            # real ball of x_i contains some y_j  -> coverage
    recalled = np.zeros(n, dtype=bool)           # x_i inside some fake ball   -> recall
    tiler = _Tiler(x, y, batch_size)             # tiles: real rows x fake columns
    for i, j, sq in tiler.tiles():
        ri, cj = slice(i, i + sq.shape[0]), slice(j, j + sq.shape[1])
        in_real_ball = tiler.within(sq, i, j, r2_real[ri, None])
        in_manifold[cj] |= in_real_ball.any(axis=0)
        ball_count[cj] += in_real_ball.sum(axis=0)
        covered[ri] |= in_real_ball.any(axis=1)
        recalled[ri] |= tiler.within(sq, i, j, r2_fake[None, cj]).any(axis=1)
    return {"precision": float(in_manifold.mean()), "recall": float(recalled.mean()),
            "density": float(ball_count.sum() / (k * m)), "coverage": float(covered.mean()), "k": k}
