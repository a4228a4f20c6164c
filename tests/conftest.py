import pytest
import torch

import undiffuse
from undiffuse.core.analytic import GaussianMixture, ode_solution

SMIN, SMAX = 0.05, 20.0


@pytest.fixture(scope="session")
def gmm8():
    """A smooth 8-D mixture for convergence-order measurements."""
    return GaussianMixture.random(dim=8, components=3, seed=3, scale_range=(0.3, 1.0))


@pytest.fixture(scope="session")
def ode_case(gmm8):
    """Start points at SMAX and the exact probability-flow ODE state at SMIN (no final jump)."""
    x = undiffuse.noise((16, 8), seed=0, dtype=torch.float64) * SMAX
    ref, _ = ode_solution(gmm8, x, SMAX, SMIN, denoise=False)
    return x, ref
