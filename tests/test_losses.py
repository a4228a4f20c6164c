import pytest
import torch

from undiffuse.core import process
from undiffuse.core.losses import denoising_loss, sample_sigma
from undiffuse.core.precond import Denoiser, coefficients

CASES = [("eps", "vp"), ("x0", "vp"), ("v", "vp"), ("v", "vp_continuous"), ("edm", "edm"), ("eps", "ve"),
         ("flow", "flow")]


class Oracle(torch.nn.Module):
    """Returns the exact raw output for known x0, eps and sigma: (x0 - c_skip x) / c_out."""

    def __init__(self, c_skip, c_out, x0, eps, sigma):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        col = lambda v: v.reshape(-1, 1).to(x0.dtype)  # noqa: E731
        self.out = (x0 - col(c_skip) * (x0 + col(sigma) * eps)) / col(c_out)

    def forward(self, x_in, label):
        return self.out + 0 * self.w


class Const(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, label):
        return torch.full_like(x, self.value)


@pytest.mark.parametrize("param,proc", CASES)
def test_exact_network_has_zero_loss_and_target_is_the_textbook_one(param, proc):
    p = process.get(proc)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=g, dtype=torch.float64)
    sigma = sample_sigma("uniform_t", 64, p, g)
    c_skip, c_out, _, _ = coefficients(param, sigma, p, 0.5)
    den = Denoiser(Oracle(c_skip, c_out, x0, eps, sigma), p, param, sigma_data=0.5)
    for w in ("uniform", "min_snr", "edm"):
        loss = denoising_loss(den, x0, sigma, eps, weighting=w)
        assert loss.shape == (64,)
        assert loss.abs().max() < 1e-12 * (1 + sigma.max() ** 2)
    # the plain loss of a zero network is the mean square of the textbook target
    den.net = Const(0.0)
    s = sigma[:, None]
    target = {"eps": eps, "x0": x0, "v": (eps - s * x0) / (1 + s**2).sqrt(), "flow": eps - x0,
              "edm": None}[param]
    if target is not None:
        torch.testing.assert_close(denoising_loss(den, x0, sigma, eps), target.pow(2).mean(1))


def test_weightings_relative_to_eps():
    p = process.get("vp")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(32, 4, generator=g, dtype=torch.float64), torch.randn(32, 4, generator=g, dtype=torch.float64)
    sigma = sample_sigma("uniform_t", 32, p, g)
    den = Denoiser(Const(1.0), p, "eps")
    plain = denoising_loss(den, x0, sigma, eps)
    snr = sigma.pow(-2)
    torch.testing.assert_close(denoising_loss(den, x0, sigma, eps, weighting="min_snr", min_snr_gamma=5.0),
                               plain * snr.clamp(max=5.0) / snr)
    torch.testing.assert_close(denoising_loss(den, x0, sigma, eps, weighting="edm"),
                               plain * (sigma**2 + 0.25) / 0.25)


def test_sigma_sampling():
    g = torch.Generator().manual_seed(0)
    vp = process.get("vp")
    s = sample_sigma("uniform_t", 20000, vp, g)
    assert set(s.unique().tolist()) <= set(vp.sigmas.tolist())
    assert len(s.unique()) > 990  # integer timesteps, all of them hit
    edm = process.get("edm")
    ln = sample_sigma("lognormal", 20000, edm, g, p_mean=-1.2, p_std=1.2).log()
    assert abs(ln.mean() + 1.2) < 0.03 and abs(ln.std() - 1.2) < 0.03
    flow = process.get("flow")
    t = flow.t(sample_sigma("uniform_t", 20000, flow, g))
    assert abs(t.mean() - 0.5) < 0.01 and t.min() >= flow.t_min - 1e-12
    with pytest.raises(ValueError, match="allowed: uniform_t, lognormal"):
        sample_sigma("beta", 3, edm, g)
