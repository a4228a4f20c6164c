import pytest
import torch

import undiffuse
from undiffuse.core.analytic import GaussianMixture, ode_solution

SMIN, SMAX = 0.05, 20.0


def convergence_order(name: str, gm, x, steps=(12, 24, 48, 96)) -> tuple[float, list[float]]:
    """Sampler ``name``'s measured order on the exact mixture ``gm`` from ``x`` (at SMAX): the
    slope of log RMSE against log steps (log-SNR spacing) to the probability-flow ODE's solution
    at SMIN, and the errors."""
    import numpy as np

    from undiffuse import samplers
    from undiffuse.core import schedules
    ref, _ = ode_solution(gm, x, SMAX, SMIN, denoise=False)
    errs = []
    for n in steps:
        sig = schedules.get_sigmas("logsnr", n, sigma_min=SMIN, sigma_max=SMAX)
        cap = {}
        samplers.get(name)(gm, x, sig, callback=lambda s: cap.update(x=s["x"]) if s["sigma_next"] == 0 else None)
        errs.append(float(((cap["x"] - ref) ** 2).mean().sqrt()))
    return float(-np.polyfit(np.log(steps), np.log(errs), 1)[0]), errs


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Every test (and every process it starts) caches into one temporary folder per session,
    never into the user's ``~/.cache/undiffuse``: expensive caches (the digits feature network)
    are built once per session, and nothing outlives it. Tests may point ``UNDIFFUSE_CACHE``
    elsewhere themselves (monkeypatch)."""
    root = tmp_path_factory.mktemp("undiffuse_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNDIFFUSE_CACHE", str(root))
        yield root


@pytest.fixture(autouse=True)
def _restore_threads():
    """A test may change torch's intra-op thread count; the next test gets it back."""
    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny exact models (a few small matrix products), where starting a second
    thread costs more than it saves; the thread count comes back after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
