"""The GPU fast path's switches, checked on the CPU: channels-last memory and torch.compile
train the same weights as the plain path; execution choices follow the request on resume."""
import os

import pytest
import torch
from safetensors.torch import load_file

from undiffuse import data
from undiffuse.config import resolve
from undiffuse.io import checkpoint as ckpt
from undiffuse.training.trainer import Trainer
from undiffuse.utils import acceleration as accel

TINY = {"model.channels": 8, "model.channel_mult": [1, 2], "model.num_res_blocks": 1,
        "model.attention_levels": [1], "model.head_channels": 8, "optim.batch_size": 16,
        "train.log_every": 1, "train.sample_count": 2, "sample.steps": 1, "train.tensorboard": False, "train.time_budget": None}


def _train(run, steps=3, toy=False, **over):
    ds = data.load("moons", num_points=512) if toy else data.load("digits")
    base = {"model.width": 32, "optim.batch_size": 64, "train.sample_count": 2, "sample.steps": 1,
            "train.tensorboard": False, "train.time_budget": None} if toy else TINY
    cfg = resolve("toy" if toy else "digits", ds, {**base, "train.max_steps": steps, **over})
    t = Trainer(cfg, ds, str(run), progress=False, log=lambda m: None, resume="auto")
    t.fit()
    return t


def _weights(run, step):
    return load_file(os.path.join(run, "checkpoints", ckpt.checkpoint_name(step), "model.safetensors"))


def _assert_same_weights(a, b, step, tol):
    wa, wb = _weights(a, step), _weights(b, step)
    assert wa.keys() == wb.keys()  # no wrapper prefixes (_orig_mod., ...) in the checkpoint
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=tol, atol=tol, msg=k)


def test_channels_last_is_off_on_the_cpu_by_default_and_on_for_cuda():
    assert accel.wants_channels_last(None, torch.device("cpu")) is False
    assert accel.wants_channels_last(None, torch.device("cuda", 0)) is True
    assert accel.wants_channels_last(True, torch.device("cpu")) is True
    assert accel.wants_channels_last(False, torch.device("cuda")) is False
    x = torch.randn(2, 3)
    assert accel.to_device(x, torch.device("cpu")) is x


def test_channels_last_trains_the_same_weights(tmp_path):
    plain = _train(tmp_path / "plain")
    fast = _train(tmp_path / "cl", **{"train.channels_last": True})
    conv = next(m for m in fast.net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert fast.channels_last and not plain.channels_last
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert all(m.weight.is_contiguous() for m in plain.net.modules() if isinstance(m, torch.nn.Conv2d))
    _assert_same_weights(tmp_path / "plain", tmp_path / "cl", 3, 1e-5)


def test_resume_takes_execution_choices_from_the_request(tmp_path):
    run = tmp_path / "r"
    constant = {"optim.schedule": "constant"}  # so that extending 2 steps to 3 is the straight 3-step run
    _train(run, steps=2, **constant)
    t = _train(run, steps=3, **{**constant, "train.channels_last": True, "optim.lr": 0.5})  # lr: the saved one
    assert t.cfg.train.channels_last is True and t.channels_last
    assert t.cfg.optim.lr != 0.5
    _train(tmp_path / "straight", steps=3, **constant)
    _assert_same_weights(tmp_path / "straight", run, 3, 1e-5)


@pytest.mark.slow
def test_compiled_network_trains_the_same_weights(tmp_path):
    """torch.compile (inductor, C++ on the CPU; an MLP, whose compilation takes seconds, not
    the U-Net's minutes)."""
    _train(tmp_path / "plain", steps=2, toy=True)
    t = _train(tmp_path / "compiled", steps=2, toy=True, **{"train.compile": True})
    assert type(t.denoiser.net).__name__ == "OptimizedModule"
    _assert_same_weights(tmp_path / "plain", tmp_path / "compiled", 2, 1e-4)


DEVICE_COMMANDS = [["train"], ["evaluate", "x.npz"], ["calibrate", "--checkpoint", "x", "--steps", "3"], ["sample", "--checkpoint", "x"], ["sweep", "--checkpoint", "x"],
                   ["distill", "--teacher", "x", "--out", "y"], ["train-autoencoder", "--out", "y"],
                   ["serve", "--models", "."], ["inpaint", "--checkpoint", "x", "--image", "digits"],
                   ["train-classifier", "--out", "y"]]


@pytest.mark.parametrize("command", DEVICE_COMMANDS, ids=lambda c: c[0])
def test_every_command_with_a_network_takes_a_checked_device(command, capsys):
    from _cli import run_main

    code, _, err = run_main([*command, "--device", "gpu"], capsys)
    assert code == 2 and "'gpu' is not a device; allowed: cpu, cuda, cuda:N" in err
    if not torch.cuda.is_available():
        code, _, err = run_main([*command, "--device", "cuda:0"], capsys)
        assert code == 2 and "has no CUDA device" in err


@pytest.mark.slow
def test_sample_compile_gives_the_same_samples(tmp_path, capsys):
    import numpy as np
    from _cli import run_main

    _train(tmp_path / "toy", steps=2, toy=True)
    common = ["sample", "--checkpoint", str(tmp_path / "toy"), "--num", "5", "--batch-size", "3", "--steps", "3",
              "--format", "npz", "--no-progress"]
    assert run_main([*common, "--out", str(tmp_path / "a.npz")], capsys)[0] == 0
    code, _, err = run_main([*common, "--compile", "--out", str(tmp_path / "b.npz")], capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "b.npz")["samples"], np.load(tmp_path / "a.npz")["samples"],
                               atol=1e-4)
