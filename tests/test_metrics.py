import numpy as np
import pytest
from scipy import linalg

from undiffuse.metrics import frechet_distance, gaussian_stats


def test_frechet_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 3.0])
    c1, c2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # tr(C1 + C2 - 2 sqrt(C1 C2)) = (1 + 9 - 2*3) + (4 + 1 - 2*2)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(1 + 4 + 4 + 1)


def test_frechet_matches_direct_scipy_on_random_features():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 6)), rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 0.5
    m1, c1 = gaussian_stats(a)
    m2, c2 = gaussian_stats(b)
    direct = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(direct, rel=1e-8)
    assert frechet_distance(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_handles_singular_covariance_and_bad_shapes():
    c = np.diag([1.0, 0.0])
    assert frechet_distance(np.zeros(2), c, np.zeros(2), c) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
