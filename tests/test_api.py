"""The public call and its errors."""
import math

import pytest
import torch

import undiffuse
from undiffuse import samplers
from undiffuse.core import schedules
from undiffuse.core.analytic import GaussianMixture
from undiffuse.core.precond import Denoiser
from undiffuse.core.process import VPDiscrete


@pytest.fixture(scope="module")
def gm():
    return GaussianMixture.random(dim=4, components=2, seed=0)


def test_names_list_what_exists():
    expected = {"ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
                "unipc", "lms", "sde_pc", "rk45", "ipndm"}
    assert expected <= set(samplers.names())
    assert {"karras", "logsnr", "exponential", "linspace", "leading", "trailing", "custom"} <= set(schedules.names())


def test_sample_scales_noise_to_sigma_max_and_uses_denoiser_range():
    seen = []

    def den(x, sigma):
        seen.append((x.clone(), sigma.clone()))
        return torch.zeros_like(x)

    den.sigma_min, den.sigma_max = 0.1, 10.0
    noise = torch.ones(2, 3)
    undiffuse.sample(den, noise, sampler="euler", steps=3, schedule="karras")
    x0, s0 = seen[0]
    assert torch.allclose(x0, torch.full((2, 3), 10.0)) and s0.shape == (2,) and float(s0[0]) == pytest.approx(10.0)
    assert float(seen[-1][1][0]) == pytest.approx(0.1)


def test_sample_with_wrapped_network_uses_process_schedule():
    proc = VPDiscrete()
    den = Denoiser(lambda x_t, t: torch.zeros_like(x_t), proc, "eps")
    out = undiffuse.sample(den, undiffuse.noise((2, 3), seed=0), sampler="ddim", steps=5, schedule="trailing")
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_explicit_sigmas_and_seed_list(gm):
    a = undiffuse.sample(gm, undiffuse.noise((2, 4), seed=[3, 4]), sampler="ddpm", sigmas=[10.0, 1.0, 0.1, 0.0], seed=[5, 6])
    b = undiffuse.sample(gm, undiffuse.noise((1, 4), seed=4), sampler="ddpm", sigmas=[10.0, 1.0, 0.1, 0.0], seed=[6])
    assert torch.allclose(a[1:], b)


@pytest.mark.parametrize("kwargs, match", [
    ({"sampler": "dpm_fast"}, "unknown sampler 'dpm_fast'; allowed: .*euler"),
    ({"schedule": "cosine"}, "unknown schedule 'cosine'; allowed: karras"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"steps": -2}, "steps must be an integer >= 1"),
    ({"sigmas": [1.0, math.nan, 0.0]}, "finite"),
    ({"sigmas": [1.0, 2.0, 0.0]}, "strictly decreasing"),
    ({"sigmas": [1.0, 0.5]}, "end in 0"),
    ({"schedule": [3.0, math.inf]}, "finite"),
    ({"sampler": "euler", "eta": 0.5}, "sampler 'euler' has no option"),
    ({"sampler": "unipc", "order": 7}, "order"),
    ({"sampler": "ddpm", "variance": "huge"}, "variance must be"),
    ({"seed": [1, 2, 3]}, "seed list has 3 entries"),
    ({"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min < sigma_max"),
])
def test_bad_input_raises_value_error_naming_it(gm, kwargs, match):
    kw = {"sigma_min": 0.01, "sigma_max": 10.0, "steps": 5}
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        undiffuse.sample(gm, undiffuse.noise((2, 4), seed=0), **kw)


def test_noise_shape_is_checked(gm):
    with pytest.raises(ValueError, match=r"per-sample shape \(5,\) but the denoiser expects \(4,\)"):
        undiffuse.sample(gm, torch.randn(2, 5), sigma_min=0.01, sigma_max=10.0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        undiffuse.sample(gm, torch.randn(4), sigma_min=0.01, sigma_max=10.0)
    with pytest.raises(ValueError, match="floating-point"):
        undiffuse.sample(gm, torch.ones(2, 4, dtype=torch.long), sigma_min=0.01, sigma_max=10.0)


def test_missing_range_is_explained():
    with pytest.raises(ValueError, match="needs sigma_min and sigma_max"):
        undiffuse.sample(lambda x, s: x, torch.randn(2, 3), sampler="euler", steps=3)
