"""Each parameterization: a network that outputs its exact target yields D = x0 exactly, and
sees the input and noise label it was trained with."""
import pytest
import torch

from undiffuse.core.precond import PARAMETERIZATIONS, Denoiser, coefficients
from undiffuse.core.process import EDM, VE, RectifiedFlow, VPContinuous, VPDiscrete


def _target(param, x0, eps, s, sd):
    s = s.reshape(-1, 1)
    if param == "eps":
        return eps
    if param == "x0":
        return x0
    if param == "v":
        return (eps - s * x0) / (1 + s**2).sqrt()
    if param == "flow":
        return eps - x0
    c_skip, c_out, _, _ = coefficients("edm", s, None, sd)
    return (x0 - c_skip * (x0 + s * eps)) / c_out


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
@pytest.mark.parametrize("proc", [VPDiscrete(), VPContinuous(), VE(), EDM(), RectifiedFlow()], ids=lambda p: p.name)
def test_oracle_network_gives_exact_x0(param, proc):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 4, generator=g, dtype=torch.float64)
    s = torch.tensor([0.02, 0.1, 0.5, 1.0, 3.0, 9.0], dtype=torch.float64).clamp(proc.sigma_min, proc.sigma_max)
    seen = {}

    def net(x_in, c_noise):
        seen["x_in"], seen["c_noise"] = x_in, c_noise
        return _target(param, x0, eps, s, 0.5)

    den = Denoiser(net, proc, param)
    x = x0 + s.reshape(-1, 1) * eps
    assert torch.allclose(den(x, s), x0, atol=1e-10)
    if param == "edm":
        assert torch.allclose(seen["c_noise"], s.log() / 4)
    elif param == "flow":
        t = s / (1 + s)
        assert torch.allclose(seen["x_in"], (1 - t).reshape(-1, 1) * x0 + t.reshape(-1, 1) * eps)
    else:  # the network sees x_t exactly as the process noises training data, and its time
        assert torch.allclose(seen["x_in"], proc.add_noise(x0, eps, proc.t(s)), atol=1e-10)
        assert torch.allclose(seen["c_noise"], proc.t(s))


def test_v_matches_alpha_sigma_definition_on_vp():
    proc = VPDiscrete()
    t = torch.tensor([50.0, 700.0], dtype=torch.float64)
    abar = proc.alphas_cumprod[t.long()]
    a, sv = abar.sqrt(), (1 - abar).sqrt()
    x0, eps = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    v = a.reshape(-1, 1) * eps - sv.reshape(-1, 1) * x0  # Salimans & Ho
    den = Denoiser(lambda x_in, c: v, proc, "v")
    s = proc.sigma(t)
    assert torch.allclose(den(x0 + s.reshape(-1, 1) * eps, s), x0, atol=1e-10)


def test_edm_coefficients_are_karras_table_1():
    s = torch.tensor([0.3], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = coefficients("edm", s, None, 0.5)
    assert float(c_skip) == pytest.approx(0.25 / (0.09 + 0.25))
    assert float(c_out) == pytest.approx(0.3 * 0.5 / (0.34**0.5))
    assert float(c_in) == pytest.approx(1 / 0.34**0.5)
    assert float(c_noise) == pytest.approx(float(s.log()) / 4)


def test_network_dtype_boundary_and_errors():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x, c_noise):
            assert x.dtype == torch.bfloat16 and c_noise.dtype == torch.bfloat16
            return self.lin(x)

    net = Net().to(torch.bfloat16)
    den = Denoiser(net, EDM(), "edm")
    out = den(torch.randn(2, 3), torch.tensor([1.0, 2.0]))
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="allowed: eps"):
        Denoiser(net, EDM(), "score")
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        Denoiser(lambda x, c: x, EDM(), "x0")(torch.zeros(2, 3), torch.ones(3))
