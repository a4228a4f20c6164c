"""The exact Gaussian-mixture denoiser, checked against independent formulas."""
import pytest
import torch

from undiffuse.core.analytic import GaussianMixture


@pytest.fixture(scope="module")
def gm():
    return GaussianMixture.random(dim=6, components=3, seed=1, scale_range=(0.2, 1.0))


def _batch(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64) * 2


@pytest.mark.parametrize("sigma", [0.02, 0.7, 5.0, 80.0])
def test_denoiser_is_tweedies_posterior_mean(gm, sigma):
    # D(x, s) = x + s^2 grad log p_s(x), with the score from autograd on the mixture's log-density
    x = _batch().requires_grad_()
    score, = torch.autograd.grad(gm.log_prob(x, sigma).sum(), x)
    expected = x.detach() + sigma**2 * score
    shared = gm(x.detach(), torch.tensor(sigma, dtype=torch.float64).expand(40))
    per_sample = gm(x.detach(), torch.full((40,), sigma, dtype=torch.float64).requires_grad_())
    assert torch.allclose(shared, expected, rtol=1e-9, atol=1e-9 * (1 + sigma))
    assert torch.allclose(per_sample, expected, rtol=1e-9, atol=1e-9 * (1 + sigma))


def test_single_gaussian_closed_form():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov, mean = a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64), torch.randn(1, 5, generator=g, dtype=torch.float64)
    one = GaussianMixture(mean, cov.unsqueeze(0))
    x, sigma = torch.randn(7, 5, generator=g, dtype=torch.float64), 1.3
    expected = mean + (x - mean) @ torch.linalg.solve(cov + sigma**2 * torch.eye(5, dtype=torch.float64), cov)
    assert torch.allclose(one(x, sigma), expected, atol=1e-12)


def test_shared_and_per_sample_levels_agree_in_values_and_gradients(gm):
    x = _batch()
    levels = torch.linspace(0.05, 20.0, 40, dtype=torch.float64)
    mixed = gm(x, levels)  # levels differ: the general path
    for i in (0, 17, 39):
        alone = gm(x[i:i + 1], levels[i].expand(1))
        assert torch.allclose(mixed[i:i + 1], alone, rtol=1e-12, atol=1e-12)
    # a level expanded from one value (as the samplers pass it) gets the whole batch's gradient
    s = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    g_shared, = torch.autograd.grad(gm(x, s.expand(40)).pow(2).sum(), s)
    leaves = torch.full((40,), 0.9, dtype=torch.float64, requires_grad=True)
    g_each, = torch.autograd.grad(gm(x, leaves).pow(2).sum(), leaves)
    assert torch.allclose(g_shared, g_each.sum(), rtol=1e-10)
    # equal per-sample levels that are separate leaves keep separate gradients
    assert g_each.abs().min() > 0 and g_each.std() > 0


def test_an_expanded_float32_level_takes_the_shared_path(gm, monkeypatch):
    # float32 samplers pass sigma cast to float32 and expanded: still one level for the batch
    x = _batch().float()
    s = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    expected = gm(x, s.expand(40))
    monkeypatch.setattr(type(gm), "_denoise_per_sample", lambda *a: pytest.fail("took the per-sample path"))
    out = gm(x, s.float().expand(40))
    assert out.dtype == torch.float32 and torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    g, = torch.autograd.grad(out.pow(2).sum(), s)
    assert torch.isfinite(g) and g != 0
