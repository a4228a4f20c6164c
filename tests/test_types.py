"""The denoiser protocol: every denoiser class of the package is a DenoiserLike whose attributes
have the promised types and values, and the one reader (denoiser_info) serves protocol objects,
partial carriers and plain callables alike."""
import types

import numpy as np
import pytest
import torch

import undiffuse
from undiffuse.core.analytic import GaussianMixture
from undiffuse.core.precond import Denoiser
from undiffuse.core.process import EDM, NoiseProcess, VPDiscrete
from undiffuse.core.types import DenoiserLike, HasBoundary, HasSigmaData, denoiser_info
from undiffuse.steering import degradations as dg
from undiffuse.steering import guidance
from undiffuse.steering.inverse import PosteriorGuided

f64 = torch.float64


def _vp_linear_range(steps=1000, start=1e-4, end=0.02, float32_table=False):
    """The sigma range of DDPM's linear table, computed here with numpy: sigma = sqrt((1 - abar) / abar)."""
    betas = np.linspace(start, end, steps, dtype=np.float64)
    abar = np.cumprod(1 - betas.astype(np.float32), dtype=np.float32).astype(np.float64) if float32_table \
        else np.cumprod(1 - betas)
    sig = np.sqrt((1 - abar) / abar)
    return float(sig[0]), float(sig[-1])


class _ZeroNet(torch.nn.Module):
    """A network with one weight, so the preconditioner has a dtype to read."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, noise_label, **cond):
        return x * self.w + noise_label.reshape(-1, *(1,) * (x.dim() - 1)) * 0


def _vp_denoiser():
    return Denoiser(_ZeroNet(), VPDiscrete(), "eps", sample_shape=(3, 8, 8))


def _edm_cm():
    return Denoiser(_ZeroNet(), EDM(sigma_data=0.3), "edm", sigma_data=0.3, boundary_sigma=0.002, sample_shape=[4])


def _plain(x, sigma, **cond):
    return torch.zeros_like(x)


def _diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 8), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    from undiffuse.inference.interop import load_diffusers

    return load_diffusers(str(tmp_path / "pipe")).denoiser


class _FlatNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x, noise_label):
        return self.lin(x) * noise_label.reshape(-1, 1)


def _onnx(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from undiffuse.inference.export import export_onnx, load_onnx_denoiser

    den = Denoiser(_FlatNet(), VPDiscrete(), "v", boundary_sigma=0.05)
    run = types.SimpleNamespace(denoiser=den, conditioning="none", shape=(4,), kind="array",
                                checkpoint=str(tmp_path / "none.safetensors"), step=0, weights="ema")
    return load_onnx_denoiser(export_onnx(run, str(tmp_path / "m.onnx")))


VP = _vp_linear_range()
# name -> (builder, expected sigma_min, sigma_max, process type, sample_shape)
CASES = {
    "Denoiser": (lambda tmp: _vp_denoiser(), *VP, VPDiscrete, (3, 8, 8)),
    "Denoiser_edm_consistency": (lambda tmp: _edm_cm(), 0.002, 80.0, EDM, (4,)),
    "GaussianMixture": (lambda tmp: GaussianMixture.random(dim=5, components=2), None, None, None, (5,)),
    "ClassifierFree": (lambda tmp: guidance.classifier_free(_vp_denoiser(), 2.0), *VP, VPDiscrete, (3, 8, 8)),
    "Autoguidance": (lambda tmp: guidance.autoguidance(_edm_cm(), _plain, 2.0), 0.002, 80.0, EDM, (4,)),
    "ClassifierGuidance": (lambda tmp: guidance.classifier_guidance(_vp_denoiser(), lambda x, s, y: x.sum(), 1.0,
                                                           labels=torch.zeros(2, dtype=torch.long)),
                           *VP, VPDiscrete, (3, 8, 8)),
    "ClassifierFree_of_plain": (lambda tmp: guidance.classifier_free(_plain, 2.0), None, None, None, None),
    "PosteriorGuided": (lambda tmp: PosteriorGuided(_edm_cm(), dg.Identity(), torch.zeros(2, 4)),
                        0.002, 80.0, EDM, (4,)),
    "PosteriorGuided_of_mixture": (lambda tmp: PosteriorGuided(GaussianMixture.random(dim=4, components=2),
                                                               dg.Identity(), torch.zeros(2, 4)),
                                   None, None, None, (4,)),
    "diffusers": (_diffusers, *_vp_linear_range(float32_table=True), VPDiscrete, (3, 8, 8)),
    "onnx": (_onnx, *VP, VPDiscrete, (4,)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_denoiser_class_is_denoiser_like(name, tmp_path):
    build, smin, smax, process_type, shape = CASES[name]
    den = build(tmp_path)
    assert isinstance(den, DenoiserLike)
    for value, expected in ((den.sigma_min, smin), (den.sigma_max, smax)):
        if expected is None:
            assert value is None
        else:
            assert isinstance(value, float) and value == pytest.approx(expected, rel=1e-6)
    if process_type is None:
        assert den.process is None
    else:
        assert isinstance(den.process, NoiseProcess) and type(den.process) is process_type
        assert (den.process.sigma_min, den.process.sigma_max) == (den.sigma_min, den.sigma_max)
    if shape is None:
        assert den.sample_shape is None
    else:
        assert tuple(den.sample_shape) == shape and all(isinstance(n, int) for n in den.sample_shape)
    info = denoiser_info(den)
    assert (info.sigma_min, info.sigma_max, info.process, info.sample_shape) == \
        (den.sigma_min, den.sigma_max, den.process, shape)
    x = torch.zeros((2, *(shape or (4,))))
    assert den(x, torch.full((2,), 1.0)).shape == x.shape  # callable as D(x, sigma)


def test_onnx_and_precond_carry_the_boundary(tmp_path):
    assert isinstance(_edm_cm(), HasBoundary) and _edm_cm().boundary_sigma == 0.002
    assert denoiser_info(_vp_denoiser()).boundary_sigma is None
    assert denoiser_info(guidance.classifier_free(_edm_cm(), 3.0)).boundary_sigma == 0.002
    assert denoiser_info(_onnx(tmp_path)).boundary_sigma == 0.05


def test_a_plain_callable_carries_nothing_and_explicit_arguments_win():
    info = denoiser_info(_plain)
    assert (info.sigma_min, info.sigma_max, info.process, info.sample_shape, info.boundary_sigma,
            info.sigma_data) == (None,) * 6
    assert not isinstance(_plain, DenoiserLike)
    info = denoiser_info(_plain, sigma_min=0.1, sigma_max=5.0)
    assert info.sigma_range("sample") == (0.1, 5.0)
    den = _vp_denoiser()
    assert denoiser_info(den, sigma_max=3.0).sigma_range("sample") == (pytest.approx(VP[0]), 3.0)


def test_a_partial_carrier_keeps_what_it_carries():
    def den(x, sigma):
        return torch.zeros_like(x)

    den.sigma_min, den.sigma_max = 0.1, 10.0  # a range, nothing else: still read
    info = denoiser_info(den)
    assert (info.sigma_min, info.sigma_max, info.process, info.sample_shape) == (0.1, 10.0, None, None)
    assert not isinstance(den, DenoiserLike)


@pytest.mark.parametrize("call", [
    lambda: undiffuse.sample(_plain, torch.randn(2, 3), sampler="euler", steps=3),
    lambda: undiffuse.calibrate.calibrate(_plain, (3,), 2, iters=1),
    lambda: undiffuse.inverse.sdedit(_plain, torch.zeros(2, 3), 0.5, steps=4),
    lambda: undiffuse.inverse.restore(_plain, torch.zeros(2, 3), dg.Identity(), steps=4),
])
def test_a_plain_callable_without_a_range_is_told_which_arguments_to_pass(call):
    with pytest.raises(ValueError, match=r"needs sigma_min and sigma_max: the denoiser \(function\) carries no sigma "
                                         r"range; pass sigma_min=\.\.\. and sigma_max=\.\.\. to "
                                         r"(sample|calibrate|sdedit|restore)\(\)"):
        call()


def test_likelihood_without_a_range_names_the_arguments():
    from undiffuse.metrics.likelihood import ode_log_likelihood

    with pytest.raises(ValueError, match=r"pass sigma_min=\.\.\. and sigma_max=\.\.\. to ode_log_likelihood\(\)"):
        ode_log_likelihood(_plain, torch.zeros(2, 3))


def test_a_plain_callable_samples_with_an_explicit_range():
    gm = GaussianMixture.random(dim=3, components=2, seed=1)

    def plain(x, sigma):
        return gm(x, sigma)

    z = undiffuse.noise((4, 3), seed=0, dtype=f64)
    out = undiffuse.sample(plain, z, sampler="heun", steps=8, sigma_min=0.01, sigma_max=20.0)
    ref = undiffuse.sample(gm, z, sampler="heun", steps=8, sigma_min=0.01, sigma_max=20.0)
    assert torch.equal(out, ref)


def test_the_consistency_sampler_reads_the_boundary_through_a_wrapper():
    gm = GaussianMixture.random(dim=4, components=2, seed=2)
    cm = Denoiser(lambda x, c: torch.zeros_like(x), EDM(), "x0", boundary_sigma=0.5)
    cm.net = lambda x_in, c_noise: gm(x_in, c_noise)  # x0 head on the EDM process: c_in = 1, c_noise = sigma
    z = undiffuse.noise((3, 4), seed=0, dtype=f64)
    sigmas = torch.tensor([10.0, 2.0, 0.0], dtype=f64)
    direct = undiffuse.sample(cm, z, sampler="consistency", sigmas=sigmas, seed=5)
    wrapped = undiffuse.sample(guidance.classifier_free(cm, 1.0), z, sampler="consistency", sigmas=sigmas, seed=5)
    no_boundary = undiffuse.sample(cm, z, sampler="consistency", sigmas=sigmas, seed=5, boundary=0.0)
    assert torch.equal(direct, wrapped)
    assert not torch.allclose(direct, no_boundary)  # the boundary changes the re-noising: the read matters


def test_posterior_guidance_reads_sigma_data_through_a_wrapper():
    den = guidance.classifier_free(_edm_cm(), 2.0)
    assert isinstance(den, HasSigmaData) and den.sigma_data == 0.3
    assert PosteriorGuided(den, dg.Identity(), torch.zeros(1, 4)).sigma_data == 0.3
    assert PosteriorGuided(guidance.classifier_free(_plain, 2.0), dg.Identity(), torch.zeros(1, 4)).sigma_data == 0.5


def test_the_process_space_likelihood_and_the_vlb_check_the_process_type():
    from undiffuse.metrics.likelihood import ddpm_vlb, ode_log_likelihood

    gm = GaussianMixture.random(dim=2, components=1, seed=0)
    with pytest.raises(ValueError, match=r'space="process" needs a denoiser with a \.process'):
        ode_log_likelihood(gm, torch.zeros(1, 2), sigma_min=0.1, sigma_max=1.0, space="process")
    fake = types.SimpleNamespace(betas=torch.full((10,), 0.01, dtype=f64),
                                 alphas_cumprod=torch.cumprod(torch.full((10,), 0.99, dtype=f64), 0))
    with pytest.raises(ValueError, match="ddpm_vlb needs a discrete VP process"):
        ddpm_vlb(gm, torch.zeros(1, 2), fake, decoder="gaussian")


def test_denoiser_like_is_exported():
    assert undiffuse.DenoiserLike is DenoiserLike and "DenoiserLike" in undiffuse.__all__
