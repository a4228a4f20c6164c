"""ONNX export: onnxruntime gives PyTorch's network outputs and samples; int8 quantisation;
command-line errors."""
import json
import os

import pytest
import torch

pytest.importorskip("onnxruntime")

from _cli import run_main  # noqa: E402

from undiffuse import (
    data,
    sample,  # noqa: E402
)
from undiffuse.config import resolve  # noqa: E402
from undiffuse.core.noise import noise  # noqa: E402
from undiffuse.inference import generate as gen  # noqa: E402
from undiffuse.inference.export import OnnxNet, export_onnx, load_onnx_denoiser  # noqa: E402
from undiffuse.training.trainer import Trainer  # noqa: E402

TINY = {"model.channels": 8, "model.channel_mult": [1, 2], "model.num_res_blocks": 1, "model.attention_levels": [1],
        "model.head_channels": 8, "optim.batch_size": 16, "train.sample_count": 4, "sample.steps": 2,
        "train.tensorboard": False, "conditioning.kind": "class", "optim.warmup_steps": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "run")
    ds = data.load("digits")
    cfg = resolve("digits", ds, {**TINY, "train.max_steps": 3, "train.time_budget": None})
    Trainer(cfg, ds, path, progress=False, log=lambda m: None).fit()
    return path


@pytest.fixture(scope="module")
def exported(run):
    loaded = gen.load_run(run)
    return loaded, export_onnx(loaded, os.path.join(run, "model.onnx"))


def test_onnxruntime_equals_pytorch_on_random_inputs(exported):
    loaded, path = exported
    net = OnnxNet(path)
    g = torch.Generator().manual_seed(1)
    for batch in (1, 5):  # the batch axis is dynamic (exported with 2)
        x = torch.randn(batch, 1, 8, 8, generator=g) * 3
        label = torch.rand(batch, generator=g) * 999
        classes = torch.randint(-1, 10, (batch,), generator=g)  # -1: the null class
        with torch.no_grad():
            ref = loaded.denoiser.net(x, label, class_labels=classes)
        torch.testing.assert_close(net(x, label, class_labels=classes), ref, rtol=0, atol=1e-4)


def test_samples_through_onnx_match_pytorch(exported):
    loaded, path = exported
    den = load_onnx_denoiser(path)
    assert den.sample_shape == (1, 8, 8) and den.parameterization == loaded.denoiser.parameterization
    z = noise((6, 1, 8, 8), seed=0)
    extra = {"class_labels": torch.arange(6) % 10}
    for sampler in ("heun", "dpmpp_2m_sde"):
        ref = sample(loaded.denoiser, z, sampler=sampler, steps=6, seed=0, extra=extra)
        out = sample(den, z, sampler=sampler, steps=6, seed=0, extra=extra)
        assert (out - ref).abs().max().item() < 1e-3, sampler


def test_int8_quantised_export(exported, tmp_path):
    loaded, path = exported
    q = export_onnx(loaded, str(tmp_path / "q.onnx"), quantize="int8")
    x, label = torch.randn(4, 1, 8, 8), torch.rand(4) * 500
    classes = torch.arange(4)
    ref = OnnxNet(path)(x, label, class_labels=classes)
    out = OnnxNet(q)(x, label, class_labels=classes)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).norm() / ref.norm() < 0.2  # quantisation error, not a different network
    assert OnnxNet(q).meta["quantize"] == "int8"


def test_cli_export_and_errors(run, tmp_path, capsys):
    out = str(tmp_path / "m.onnx")
    code, stdout, err = run_main(["export", run, "--format", "onnx", "--out", out], capsys)
    assert code == 0, err
    assert json.loads(stdout)["onnx"] == out and os.path.isfile(out)
    code, _, err = run_main(["export", run, "--format", "tflite"], capsys)
    assert code == 2 and "--format" in err and "onnx" in err
    code, _, err = run_main(["export", run, "--format", "onnx", "--quantize", "int4"], capsys)
    assert code == 2 and "--quantize" in err and "int8" in err
    code, _, err = run_main(["export", str(tmp_path / "nope"), "--format", "onnx"], capsys)
    assert code == 2 and "RUN" in err and "does not exist" in err
    code, _, err = run_main(["export", run, "--format", "onnx", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--out" in err


def test_text_conditioned_run_exports_with_token_inputs(tmp_path):
    """A text run's network takes the caption's token embeddings and mask (batch axis dynamic,
    the run's caption length fixed): onnxruntime equals PyTorch, samples match."""
    from undiffuse.steering.conditioning import text_condition

    path = str(tmp_path / "text")
    ds = data.load("digits")
    cfg = resolve("digits", ds, {**TINY, "conditioning.kind": "text", "conditioning.max_tokens": 16,
                                 "train.max_steps": 2, "train.time_budget": None})
    Trainer(cfg, ds, path, progress=False, log=lambda m: None).fit()
    loaded = gen.load_run(path)
    onnx_path = export_onnx(loaded, str(tmp_path / "text.onnx"))
    net = OnnxNet(onnx_path)
    assert net.inputs == ["x", "noise_label", "context", "context_mask"]
    cond = text_condition(["a handwritten seven", "zero", ""], max_tokens=16)
    x, label = torch.randn(3, 1, 8, 8) * 3, torch.rand(3) * 100
    with torch.no_grad():
        ref = loaded.denoiser.net(x, label, **cond)
    torch.testing.assert_close(net(x, label, **cond), ref, rtol=0, atol=1e-4)
    den = load_onnx_denoiser(onnx_path)
    z = noise((3, 1, 8, 8), seed=0)
    out = sample(den, z, sampler="heun", steps=4, extra=cond)
    assert (out - sample(loaded.denoiser, z, sampler="heun", steps=4, extra=cond)).abs().max().item() < 1e-3
