"""diffusers interop: a randomly initialised UNet2DModel saved by save_pretrained, sampled by
undiffuse's DDIM and by diffusers' DDIMPipeline from the same noise."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from undiffuse.core import process  # noqa: E402
from undiffuse.inference.interop import (
    load_diffusers,
    parameterization_of,
    process_of,
    sample_diffusers,
    scheduler_sigmas,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _save(folder, prediction_type, beta_schedule="linear", seed=0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                                    prediction_type=prediction_type, clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return unet


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_matches_diffusers_pipeline(tmp_path, prediction_type):
    torch.set_num_threads(1)
    unet = _save(tmp_path / "pipe", prediction_type, "squaredcos_cap_v2" if prediction_type == "sample" else "linear")
    model = load_diffusers(str(tmp_path / "pipe"))
    pipe = diffusers.DDIMPipeline(unet=unet.eval(), scheduler=diffusers.DDIMScheduler.from_config(
        json.load(open(tmp_path / "pipe" / "scheduler" / "scheduler_config.json"))))
    pipe.set_progress_bar_config(disable=True)
    steps = 10
    finals = []  # the pipeline's last x before its (x / 2 + 0.5).clamp(0, 1): a random network's
    step = pipe.scheduler.step  # samples are mostly far outside [-1, 1], so compare them raw too

    def spy(*args, **kw):
        out = step(*args, **kw)
        finals.append(out.prev_sample.clone())
        return out

    pipe.scheduler.step = spy
    ref = pipe(batch_size=4, generator=torch.Generator().manual_seed(3), num_inference_steps=steps, eta=0.0,
               output_type="np").images  # (B, H, W, C) in [0, 1]
    assert len(finals) == steps
    noise = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(3))  # the pipeline's draw
    x = sample_diffusers(model, noise, sampler="ddim", steps=steps)
    raw = finals[-1]
    assert (x - raw).abs().max() / raw.abs().max() < 1e-4
    ours = ((x / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_scheduler_config_mapping():
    cfg = {"num_train_timesteps": 500, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
           "prediction_type": "v_prediction"}
    proc = process_of(cfg)
    assert (proc.steps, proc.beta_schedule) == (500, "scaled_linear") and parameterization_of(cfg) == "v"
    ref = diffusers.DDPMScheduler(**cfg).alphas_cumprod.double()
    torch.testing.assert_close(proc.alphas_cumprod, ref, rtol=1e-6, atol=0)  # diffusers' float32 table
    cos = process_of({"beta_schedule": "squaredcos_cap_v2"})
    ours = process.VPDiscrete(beta_schedule="cosine")
    torch.testing.assert_close(cos.alphas_cumprod, ours.alphas_cumprod, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="prediction_type 'flow'.*allowed: epsilon, v_prediction, sample"):
        parameterization_of({"prediction_type": "flow"})
    with pytest.raises(ValueError, match="beta_schedule 'exp'.*allowed"):
        process_of({"beta_schedule": "exp"})
    with pytest.raises(ValueError, match="trained_betas"):
        process_of({"trained_betas": [0.1, 0.2]})


def test_sigmas_follow_the_scheduler_timesteps(tmp_path):
    _save(tmp_path / "p", "epsilon")
    model = load_diffusers(str(tmp_path / "p"))
    for spacing, offset in (("leading", 1), ("trailing", 0), ("linspace", 0)):
        model.scheduler_config.update(timestep_spacing=spacing, steps_offset=offset)
        s = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
        s.set_timesteps(7)
        abar = s.alphas_cumprod[s.timesteps].double()
        torch.testing.assert_close(scheduler_sigmas(model, 7)[:-1], ((1 - abar) / abar).sqrt(), rtol=1e-6, atol=0)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_diffusers(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_diffusers(str(tmp_path / "empty"))


def test_cli_samples_a_diffusers_folder_like_the_python_call(tmp_path, capsys):
    """`undiffuse sample --diffusers FOLDER`: per-sample seeds (batch size does not matter),
    the scheduler's timesteps, any sampler; run-only options are a usage error."""
    from _cli import run_main

    from undiffuse.core.noise import noise

    _save(tmp_path / "pipe", "epsilon")
    common = ["sample", "--diffusers", str(tmp_path / "pipe"), "--num", "3", "--sampler", "dpmpp_2m", "--steps",
              "4", "--format", "npz", "--no-progress"]
    code, _, err = run_main([*common, "--batch-size", "2", "--out", str(tmp_path / "a.npz")], capsys)
    assert code == 0, err
    code, _, _ = run_main([*common, "--batch-size", "3", "--seed", "1", "--out", str(tmp_path / "b.npz")], capsys)
    a, b = np.load(tmp_path / "a.npz")["samples"], np.load(tmp_path / "b.npz")["samples"]
    assert a.shape == (3, 3, 8, 8)
    np.testing.assert_allclose(a[1:], b[:2], atol=2e-5)  # seeds 1, 2 in both (float32 batch rounding)
    model = load_diffusers(str(tmp_path / "pipe"))
    x = sample_diffusers(model, noise((3, 3, 8, 8), seed=[0, 1, 2]), sampler="dpmpp_2m", steps=4)
    np.testing.assert_allclose(a, ((x + 1) / 2).clamp(0, 1).numpy(), atol=2e-5)
    code, _, err = run_main([*common, "--class", "3", "--out", str(tmp_path / "c.npz")], capsys)
    assert code == 2 and "--class cannot be used with --diffusers" in err
    code, _, err = run_main(["sample", "--diffusers", str(tmp_path / "pipe"), "--checkpoint", "x"], capsys)
    assert code == 2 and "not both" in err
    code, _, err = run_main(["sample", "--diffusers", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "--diffusers" in err and "does not exist" in err
