import math

import pytest
import torch

from undiffuse.core import process as P


@pytest.mark.parametrize("schedule", P.BETA_SCHEDULES)
def test_vp_discrete_sigma_matches_alpha_bar_and_inverts(schedule):
    vp = P.VPDiscrete(beta_schedule=schedule)
    t = torch.arange(vp.steps, dtype=torch.float64)
    abar = torch.cumprod(1 - vp.betas, 0)
    assert torch.allclose(vp.sigma(t), ((1 - abar) / abar).sqrt(), rtol=1e-12)
    # fractional times round-trip through t(sigma)
    tf = torch.linspace(0, vp.steps - 1, 777, dtype=torch.float64)
    assert torch.allclose(vp.t(vp.sigma(tf)), tf, atol=1e-8)
    assert vp.sigma_min == pytest.approx(float(vp.sigma(0)))
    assert vp.sigma_max == pytest.approx(float(vp.sigma(vp.steps - 1)))


def test_beta_tables_match_published_formulas():
    lin = P.make_betas("linear", 1000)
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02)
    cos = P.make_betas("cosine", 1000)
    # Nichol & Dhariwal: alpha_bar(t) = f(t)/f(0), f(t) = cos(((t/T)+s)/(1+s) * pi/2)^2
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    abar = torch.cumprod(1 - cos, 0)
    assert float(abar[499]) == pytest.approx(f(500) / f(0), rel=1e-9)
    assert float(cos.max()) <= 0.999
    sig = P.make_betas("sigmoid", 1000)
    assert torch.all(sig[1:] > sig[:-1])


def test_beta_tables_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for ours, theirs in [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2"),
                         ("sigmoid", "sigmoid")]:
        kw = {"beta_start": 0.00085, "beta_end": 0.012} if ours == "scaled_linear" else {}
        ref = diffusers.DDPMScheduler(beta_schedule=theirs, **kw).betas.double()
        assert torch.allclose(P.make_betas(ours, 1000, **kw), ref, rtol=1e-5, atol=1e-7), ours


def test_zero_terminal_snr_rescale():
    vp = P.VPDiscrete(zero_terminal_snr=True)
    assert float(vp.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-12)
    assert math.isinf(float(vp.sigmas[-1]))
    assert math.isfinite(vp.sigma_max)
    plain = P.VPDiscrete()
    assert float(vp.alphas_cumprod[0]) == pytest.approx(float(plain.alphas_cumprod[0]), rel=1e-9)
    # at the terminal step the noised sample is pure noise
    x0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    xt = vp.add_noise(x0, eps, torch.full((3,), 999.0))
    assert torch.allclose(xt, eps)
    pytest.importorskip("diffusers")
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as ref
    assert torch.allclose(vp.betas, ref(plain.betas.float()).double(), atol=1e-6)


@pytest.mark.parametrize("proc", [P.VPDiscrete(), P.VPContinuous(), P.VE(), P.EDM(), P.RectifiedFlow()],
                         ids=lambda p: p.name)
def test_add_noise_follows_the_convention(proc):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, generator=g, dtype=torch.float64)
    s = torch.tensor([proc.sigma_min * 1.5, 0.3, 1.0, 7.0, proc.sigma_max * 0.9], dtype=torch.float64)
    t = proc.t(s)
    assert torch.allclose(proc.sigma(t), s, rtol=1e-9)
    xt = proc.add_noise(x0, eps, t)
    alpha = proc.alpha_of_sigma(s).reshape(-1, 1)
    assert torch.allclose(xt, alpha * (x0 + s.reshape(-1, 1) * eps), rtol=1e-12)
    assert torch.allclose(proc.snr(t), s**-2)


def test_process_specific_forms():
    vp = P.VPDiscrete()
    x0, eps = torch.ones(2, 2, dtype=torch.float64), torch.full((2, 2), 2.0, dtype=torch.float64)
    t = torch.tensor([10.0, 500.0])
    abar = vp.alphas_cumprod[t.long()].reshape(-1, 1)
    assert torch.allclose(vp.add_noise(x0, eps, t), abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    flow = P.RectifiedFlow()
    t = torch.tensor([0.25, 0.75], dtype=torch.float64)
    assert torch.allclose(flow.add_noise(x0, eps, t), (1 - t).reshape(-1, 1) * x0 + t.reshape(-1, 1) * eps)
    vpc = P.VPContinuous()
    t = torch.tensor([0.1, 0.9], dtype=torch.float64)
    log_abar = -(0.1 * t + 0.5 * (20 - 0.1) * t**2)
    assert torch.allclose(vpc.sigma(t), ((1 - log_abar.exp()) / log_abar.exp()).sqrt())
    ve = P.VE(sigma_min=0.01, sigma_max=50)
    assert float(ve.sigma(0.0)) == pytest.approx(0.01) and float(ve.sigma(1.0)) == pytest.approx(50)


def test_process_registry_and_errors():
    assert set(P.names()) == {"vp", "vp_continuous", "ve", "edm", "flow"}
    proc = P.get("vp", beta_schedule="cosine")
    assert P.from_config(proc.config()).config() == proc.config()
    with pytest.raises(ValueError, match="allowed: linear"):
        P.VPDiscrete(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="allowed: vp"):
        P.get("nope")
