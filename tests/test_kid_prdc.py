"""KID (Binkowski et al. 2018) and precision/recall/density/coverage (Kynkaanniemi et al. 2019,
Naeem et al. 2020) against plain-loop reimplementations and planted cases with known answers."""
import math

import numpy as np
import pytest
import torch

from undiffuse.metrics.kid import kid, mmd2_unbiased
from undiffuse.metrics.prdc import prdc

# ----------------------------------------------------------------------------------------- KID

def _mmd2_loops(a, b):
    """MMD^2_u with k(x, y) = (x.y/d + 1)^3, written as the paper's sums over pairs."""
    a, b = a.tolist(), b.tolist()
    d = len(a[0])

    def kern(x, y):
        return (sum(xi * yi for xi, yi in zip(x, y)) / d + 1.0) ** 3

    m, n = len(a), len(b)
    s_aa = sum(kern(a[i], a[j]) for i in range(m) for j in range(m) if i != j)
    s_bb = sum(kern(b[i], b[j]) for i in range(n) for j in range(n) if i != j)
    s_ab = sum(kern(a[i], b[j]) for i in range(m) for j in range(n))
    return s_aa / (m * (m - 1)) + s_bb / (n * (n - 1)) - 2 * s_ab / (m * n)


def test_mmd2_unbiased_matches_double_loop():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 5))
    b = rng.normal(size=(25, 5)) * 1.3 + 0.4
    assert mmd2_unbiased(a, b) == pytest.approx(_mmd2_loops(a, b), rel=1e-12, abs=1e-14)
    assert mmd2_unbiased(a, a[:20]) == pytest.approx(_mmd2_loops(a, a[:20]), rel=1e-12, abs=1e-14)
    # torch tensors and lists are accepted
    assert mmd2_unbiased(torch.from_numpy(a), b.tolist()) == pytest.approx(mmd2_unbiased(a, b), rel=1e-14)


def test_mmd2_unbiased_is_unbiased_so_scatters_around_zero():
    vals = [mmd2_unbiased(np.random.default_rng(s).normal(size=(40, 4)),
                          np.random.default_rng(1000 + s).normal(size=(40, 4))) for s in range(30)]
    assert min(vals) < 0 < max(vals)
    assert abs(np.mean(vals)) < 3 * np.std(vals) / math.sqrt(len(vals))


def test_kid_near_zero_for_same_distribution_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(600, 8))
    same = kid(a, rng.normal(size=(600, 8)), subsets=20, subset_size=300)
    kids = [kid(a, rng.normal(size=(600, 8)) + shift, subsets=20, subset_size=300)["kid"]
            for shift in (0.25, 0.5, 1.0)]
    # same distribution: |KID| at the noise level (over seeds 0..5 it stays below 0.025, while
    # the smallest shift gives ~0.2); the shifted ones grow monotonically
    assert abs(same["kid"]) < 0.03
    assert same["kid_std"] > 0
    assert kids[0] > 0.1 and kids[0] > 5 * abs(same["kid"])
    assert kids[0] < kids[1] < kids[2]


def test_kid_deterministic_given_seed_and_subset_size_clipped():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(80, 6)), rng.normal(size=(50, 6)) + 0.3
    r1 = kid(a, b, subsets=10, subset_size=20, seed=7)
    assert r1 == kid(a, b, subsets=10, subset_size=20, seed=7)
    assert r1["kid"] != kid(a, b, subsets=10, subset_size=20, seed=8)["kid"]
    assert r1["subsets"] == 10 and r1["subset_size"] == 20

    # subset_size larger than both sets: clipped to the smaller set (50 rows)
    r2 = kid(a, b, subsets=5, subset_size=1000)
    assert r2["subset_size"] == 50 and r2["subsets"] == 5
    # clipped to both full sets: every subset is the whole data, same value each time
    r3 = kid(a[:50], b, subsets=4, subset_size=1000)
    assert r3["subset_size"] == 50
    assert r3["kid"] == pytest.approx(mmd2_unbiased(a[:50], b), rel=1e-10)
    assert r3["kid_std"] == pytest.approx(0.0, abs=1e-12)


def test_kid_rejects_bad_inputs():
    a = np.zeros((5, 3))
    with pytest.raises(ValueError, match=r"features_a.*2-D.*\(5,\)"):
        kid(np.zeros(5), a)
    with pytest.raises(ValueError, match=r"features_b.*at least 2 rows, got 1"):
        kid(a, np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"feature dimensions differ.*features_a has 3.*features_b has 4"):
        kid(a, np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"features_b.*non-finite"):
        kid(a, np.full((5, 3), np.nan))
    with pytest.raises(ValueError, match=r"subsets.*>= 1.*0"):
        kid(a, a, subsets=0)
    with pytest.raises(ValueError, match=r"subset_size.*>= 2.*1"):
        kid(a, a, subset_size=1)
    with pytest.raises(ValueError, match=r"^a: .*2-D"):
        mmd2_unbiased(np.zeros((2, 2, 2)), a)
    with pytest.raises(ValueError, match=r"^b: .*at least 2 rows"):
        mmd2_unbiased(a, np.zeros((1, 3)))


# ---------------------------------------------------------------------------------------- PRDC

def _prdc_loops(real, fake, k):
    """The four definitions written with plain loops, math.dist and sorted neighbour lists."""
    real, fake = real.tolist(), fake.tolist()

    def radii(pts):
        return [sorted(math.dist(p, q) for j, q in enumerate(pts) if j != i)[k - 1] for i, p in enumerate(pts)]

    r_real, r_fake = radii(real), radii(fake)
    n, m = len(real), len(fake)
    precision = sum(any(math.dist(y, x) <= r_real[i] for i, x in enumerate(real)) for y in fake) / m
    recall = sum(any(math.dist(x, y) <= r_fake[j] for j, y in enumerate(fake)) for x in real) / n
    density = sum(math.dist(y, x) <= r_real[i] for y in fake for i, x in enumerate(real)) / (k * m)
    coverage = sum(any(math.dist(y, x) <= r_real[i] for y in fake) for i, x in enumerate(real)) / n
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage, "k": k}


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("batch_size", [7, 2048])
def test_prdc_matches_brute_force_exactly(k, batch_size):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(40, 3))
    fake = rng.normal(size=(33, 3)) * 1.2 + 0.3
    assert prdc(real, fake, k=k, batch_size=batch_size) == _prdc_loops(real, fake, k)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_prdc_matches_brute_force_with_exact_ties(k):
    # copies of real points (including copies of real points' k-th neighbours, which sit exactly
    # on a ball's boundary), duplicates inside each set, and an offset that makes the
    # matrix-product distances inexact: boundary decisions must still agree with the loops
    rng = np.random.default_rng(10 + k)
    base = rng.normal(size=(30, 4)) * 0.1 + 50.0
    real = np.concatenate([base, base[:5]])
    fake = np.concatenate([base[::2], base[:3], rng.normal(size=(10, 4)) * 0.1 + 50.0])
    expected = _prdc_loops(real, fake, k)
    for bs in (1, 6, 2048):
        assert prdc(real, fake, k=k, batch_size=bs) == expected


def test_prdc_identical_sets():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 6)) + 1e3  # large offset: boundary ties must still be exact
    for k in (1, 3, 5):
        r = prdc(x, x.copy(), k=k)
        assert (r["precision"], r["recall"], r["coverage"], r["k"]) == (1.0, 1.0, 1.0, k)
        # each y_j is the centre of its twin's ball and on the boundary of exactly k others
        assert r["density"] == pytest.approx(1 + 1 / k, rel=1e-15)


def test_prdc_far_apart_disjoint_sets_score_zero():
    rng = np.random.default_rng(4)
    r = prdc(rng.normal(size=(100, 5)), rng.normal(size=(80, 5)) + 100.0, k=5)
    assert r == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0, "k": 5}


def test_prdc_planted_half_copies_half_far():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(60, 3))
    fake = np.concatenate([real[:30], rng.normal(size=(30, 3)) + 1e3])
    r = prdc(real, fake, k=3, batch_size=16)
    assert r["precision"] == 0.5


def test_prdc_hand_computed_tiny_example():
    # 1-D, k = 1. Real radii (nearest other real): all 1. Fake radii: 0 -> 0.5, 0.5 -> 0.5,
    # 10 -> 0.2, 10.2 -> 0.2.
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.0], [0.5], [10.0], [10.2]])
    r = prdc(real, fake, k=1)
    # precision: fake 0 and 0.5 lie within 1 of real 0; 10 and 10.2 are 7+ from real 3 -> 2/4
    assert r["precision"] == 0.5
    # recall: real 0 is in fake 0's ball, real 1 on the boundary of fake 0.5's ball (|1-0.5| =
    # 0.5 <= 0.5); real 2 and 3 are 1.5+ from 0.5 and 7+ from 10 -> 2/4
    assert r["recall"] == 0.5
    # density: fake 0 is in the balls of real 0 and real 1 (boundary), fake 0.5 in those of real
    # 0 and real 1; the far ones in none -> (2 + 2) / (k M) = 4 / 4
    assert r["density"] == 1.0
    # coverage: balls of real 0 and 1 hold a fake point; real 2's nearest fake is 1.5 > 1 away
    assert r["coverage"] == 0.5
    assert r == _prdc_loops(real, fake, 1)


def test_prdc_same_distribution_density_near_one():
    rng = np.random.default_rng(6)
    r = prdc(rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4)), k=5, batch_size=1024)
    assert r["density"] == pytest.approx(1.0, abs=0.06)
    assert r["precision"] > 0.9 and r["recall"] > 0.9 and r["coverage"] > 0.9


def test_prdc_batch_size_does_not_change_results():
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(70, 5)), rng.normal(size=(50, 5)) + 0.5
    ref = prdc(real, fake, k=4, batch_size=2048)
    for bs in (1, 3, 16, 49):
        assert prdc(real, fake, k=4, batch_size=bs) == ref
    assert prdc(torch.from_numpy(real).float(), fake.astype(np.float32), k=4) == \
        prdc(real.astype(np.float32), fake.astype(np.float32), k=4)


def test_prdc_rejects_bad_inputs():
    x = np.zeros((6, 2))
    with pytest.raises(ValueError, match=r"k: expected an integer >= 1, got 0"):
        prdc(x, x, k=0)
    with pytest.raises(ValueError, match=r"k=6 .*real_features.*got 6 rows"):
        prdc(x, np.zeros((10, 2)), k=6)
    with pytest.raises(ValueError, match=r"k=5 .*fake_features.*got 5 rows"):
        prdc(x, np.zeros((5, 2)), k=5)
    with pytest.raises(ValueError, match=r"feature dimensions differ.*real_features has 2.*fake_features has 3"):
        prdc(x, np.zeros((6, 3)), k=2)
    bad = x.copy()
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"fake_features.*non-finite"):
        prdc(x, bad, k=2)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"real_features.*non-finite"):
        prdc(bad, x, k=2)
    with pytest.raises(ValueError, match=r"real_features.*2-D.*\(6,\)"):
        prdc(np.zeros(6), x, k=2)
    with pytest.raises(ValueError, match=r"batch_size.*>= 1.*0"):
        prdc(x, x, k=2, batch_size=0)
    with pytest.raises(ValueError, match=r"k: expected an integer"):
        prdc(x, x, k=2.5)
