"""Kernel Inception Distance (KID): Binkowski, Sutherland, Arbel & Gretton 2018, "Demystifying
MMD GANs" (ICLR 2018, arXiv:1801.01401), section 2.3 / appendix.

KID is the squared maximum mean discrepancy between two feature distributions under the cubic
polynomial kernel

    k(x, y) = (x . y / d + 1)^3,        d = feature dimension,

estimated with the *unbiased* U-statistic estimator (Gretton et al. 2012, "A kernel two-sample
test", JMLR, Lemma 6) for samples X = {x_1..x_m}, Y = {y_1..y_n}:

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j)
            + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
            - 2/(m n)    sum_{i, j}   k(x_i, y_j)

Being unbiased, its expectation is exactly 0 when both samples come from the same distribution,
so single estimates scatter around 0 and can be negative. As in the paper (and the common
practice that followed it), ``kid`` averages the estimator over ``subsets`` random subsets of
``subset_size`` rows of each set and also reports the spread of those estimates.
"""
from __future__ import annotations

import numpy as np

__all__ = ["kid", "mmd2_unbiased"]


def _feature_matrix(x, name: str, min_rows: int = 2) -> np.ndarray:
    """``x`` as a C-contiguous float64 (n, d) array; ValueError naming ``name`` otherwise."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected a numeric array of shape (n, d), got {type(x).__name__} ({e})") from None
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (n, d), got shape {a.shape}")
    if a.shape[1] < 1:
        raise ValueError(f"{name}: expected at least 1 feature per row, got shape {a.shape}")
    if a.shape[0] < min_rows:
        raise ValueError(f"{name}: expected at least {min_rows} rows, got {a.shape[0]} (shape {a.shape})")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains non-finite values (nan or inf)")
    return np.ascontiguousarray(a)


def _check_pair(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {name_a} has {a.shape[1]} (shape {a.shape}), "
                         f"{name_b} has {b.shape[1]} (shape {b.shape})")


def _positive_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """The estimator of the module docstring on validated float64 arrays (matrix products)."""
    m, n, d = a.shape[0], b.shape[0], a.shape[1]
    k_aa = (a @ a.T / d + 1.0) ** 3
    k_bb = (b @ b.T / d + 1.0) ** 3
    k_ab = (a @ b.T / d + 1.0) ** 3
    sum_aa = k_aa.sum() - np.trace(k_aa)  # sum over i != j
    sum_bb = k_bb.sum() - np.trace(k_bb)
    return float(sum_aa / (m * (m - 1)) + sum_bb / (n * (n - 1)) - 2.0 * k_ab.sum() / (m * n))


def mmd2_unbiased(a, b) -> float:
    """Unbiased MMD^2 between the full sets ``a`` (m, d) and ``b`` (n, d), m, n >= 2, with the KID
    kernel k(x, y) = (x . y / d + 1)^3 (Binkowski et al. 2018):

        MMD^2_u = 1/(m(m-1)) sum_{i!=j} k(a_i, a_j) + 1/(n(n-1)) sum_{i!=j} k(b_i, b_j)
                  - 2/(mn) sum_{i,j} k(a_i, b_j)

    Computed in float64 with three Gram-matrix products (memory O(m^2 + n^2 + mn)).
    Accepts numpy arrays, array-likes or torch tensors.
    """
    a = _feature_matrix(a, "a")
    b = _feature_matrix(b, "b")
    _check_pair(a, b, "a", "b")
    return _mmd2_unbiased(a, b)


def kid(features_a, features_b, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """Kernel Inception Distance (Binkowski et al. 2018) between two (n, d) feature sets.

    For each of ``subsets`` rounds, ``s = min(subset_size, len(features_a), len(features_b))``
    rows are drawn *without replacement* from each set (independently for the two sets and
    from round to round) with ``numpy.random.default_rng(seed)``, and the unbiased estimator

        MMD^2_u = 1/(s(s-1)) sum_{i!=j} k(a_i, a_j) + 1/(s(s-1)) sum_{i!=j} k(b_i, b_j)
                  - 2/s^2 sum_{i,j} k(a_i, b_j),      k(x, y) = (x . y / d + 1)^3,

    is evaluated on the drawn rows. Returns a dict:

    * ``kid``: the mean of the ``subsets`` estimates (can be slightly negative: unbiased);
    * ``kid_std``: their standard deviation (population form, ``ddof=0``, as in the reference
      implementations; 0 when every subset is the full sets);
    * ``subsets``: the number of rounds; ``subset_size``: ``s``, the size actually used.

    The result is a deterministic function of the inputs and ``seed``. Features are used as
    given (the paper uses 2048-D Inception pool features; any fixed embedding works).
    """
    a = _feature_matrix(features_a, "features_a")
    b = _feature_matrix(features_b, "features_b")
    _check_pair(a, b, "features_a", "features_b")
    subsets = _positive_int(subsets, "subsets", 1)
    subset_size = _positive_int(subset_size, "subset_size", 2)
    s = min(subset_size, a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(subsets, dtype=np.float64)
    for t in range(subsets):
        ia = rng.choice(a.shape[0], size=s, replace=False)
        ib = rng.choice(b.shape[0], size=s, replace=False)
        values[t] = _mmd2_unbiased(a[ia], b[ib])
    return {"kid": float(values.mean()), "kid_std": float(values.std()), "subsets": subsets, "subset_size": s}
