"""Class-conditional training and sampling from the command line and the library."""
import json

import numpy as np
import pytest
import torch
from _cli import TINY
from _cli import run_main as _main
from PIL import Image

from undiffuse.cli import main
from undiffuse.config import ConditioningConfig, resolve
from undiffuse.data import load
from undiffuse.inference import generate as gen
from undiffuse.steering.conditioning import TrainingConditions, lowres_image


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "run"
    assert main(["train", "--data", "digits", "--conditioning", "class", "--max-steps", "4", "--out", str(out),
                 *TINY]) == 0
    return out


def test_condition_dropout_rate_and_labels():
    data = load("digits")
    cond = TrainingConditions(ConditioningConfig(kind="class", dropout=0.25), data)
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(len(data))
    out = cond(idx, data.get(idx), g)["class_labels"]
    dropped = out == -1
    assert abs(dropped.float().mean().item() - 0.25) < 0.04
    assert torch.equal(out[~dropped], data.labels[~dropped])


def test_lowres_condition_keeps_block_means():
    x = torch.randn(3, 1, 8, 8)
    low = lowres_image(x, 4)
    assert low.shape == x.shape
    torch.testing.assert_close(low[:, :, :4, :4].mean((2, 3)), x[:, :, :4, :4].mean((2, 3)))
    assert torch.equal(low[:, :, 0, 0], low[:, :, 3, 3])


def test_resolve_checks_conditioning_against_data():
    with pytest.raises(ValueError, match="needs labelled data"):
        resolve("toy", _unlabelled(), {"conditioning.kind": "class"})
    with pytest.raises(ValueError, match="conditioning 'pose' is not allowed"):
        resolve("digits", load("digits"), {"conditioning.kind": "pose"})
    cfg = resolve("digits", load("digits"), {"conditioning.kind": "class"})
    assert cfg.model["num_classes"] == 10
    with pytest.raises(ValueError, match="conditioning.factor 3 must be >= 2 and divide"):
        resolve("digits", load("digits"), {"conditioning.kind": "lowres", "conditioning.factor": 3})


def _unlabelled():
    data = load("swiss_roll", num_points=100)
    assert data.labels is None
    return data


def test_sample_class_all_writes_labels_and_per_image_metadata(class_run, tmp_path, capsys):
    npz = tmp_path / "s.npz"
    code, _, err = _main(["sample", "--checkpoint", str(class_run), "--class", "all", "--num", "20", "--guidance",
                          "2", "--format", "npz", "--out", str(npz), "--no-progress"], capsys)
    assert code == 0, err
    with np.load(npz) as f:
        assert f["labels"].tolist() == [k for k in range(10) for _ in range(2)]
        assert json.loads(str(f["parameters"]))["guidance"] == 2.0
    folder = tmp_path / "png"
    code, _, err = _main(["sample", "--checkpoint", str(class_run), "--class", "7", "--num", "3", "--out",
                          str(folder), "--no-progress"], capsys)
    assert code == 0, err
    meta = json.loads(Image.open(folder / "000002.png").text["undiffuse"])
    assert meta["class"] == "7" and meta["seed"] == 2


def test_guidance_one_equals_plain_conditional_and_seeds_are_per_image(class_run):
    run = gen.load_run(str(class_run))
    labels = gen.class_labels(run, "all", 10)
    plain = gen.generate(run, 10, seed=5, condition={"class_labels": labels})
    same = gen.generate(run, 10, seed=5, condition={"class_labels": labels}, denoiser=gen.guided(run, guidance=1.0))
    assert torch.equal(plain, same)
    guided = gen.generate(run, 10, seed=5, condition={"class_labels": labels}, denoiser=gen.guided(run, guidance=3))
    alone = gen.generate(run, 1, seed=14, condition={"class_labels": labels[9:]}, denoiser=gen.guided(run, guidance=3))
    # the same seed alone: equal up to float32 summation order, which depends on the batch size
    # (differences of ~1e-4 seen; a different seed differs by O(1))
    torch.testing.assert_close(guided[9:], alone, rtol=1e-4, atol=5e-4)


@pytest.mark.parametrize("extra, message", [
    (["--class", "11"], "unknown class '11'; allowed: 0, 1, 2"),
    (["--prompt", "a seven"], "--prompt needs a text-conditioned run"),
    (["--guidance-interval", "3", "1"], "--guidance-interval needs 0 <= LO < HI"),
    (["--classifier", "/nowhere"], "--classifier needs --class"),
])
def test_conditional_usage_errors(class_run, extra, message, capsys):
    code, _, err = _main(["sample", "--checkpoint", str(class_run), "--num", "2", *extra], capsys)
    assert code == 2 and message in err, err


def test_class_on_unconditional_run_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "plain"
    assert main(["train", "--data", "digits", "--max-steps", "2", "--out", str(out), *TINY]) == 0
    code, _, err = _main(["sample", "--checkpoint", str(out), "--class", "3", "--guidance", "2"], capsys)
    assert code == 2 and "--class needs a class-conditional run" in err


def test_evaluate_reports_adherence_for_labelled_samples(tmp_path, capsys):
    data = load("digits")
    x = data.to_unit(data.get(torch.arange(300))).numpy()
    path = tmp_path / "real.npz"
    np.savez(path, samples=x, labels=data.labels[:300].numpy())
    code, out, err = _main(["evaluate", str(path), "--json", "--kid-subset-size", "100"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["adherence"] > 0.95 and "reads the requested class" in res["protocol"]["adherence"]
    np.savez(path, samples=x, labels=(data.labels[:300].numpy() + 1) % 10)  # every request wrong
    res = json.loads(_main(["evaluate", str(path), "--json", "--kid-subset-size", "100"], capsys)[1])
    assert res["adherence"] < 0.05


def test_guidance_sweep_writes_table_plots_and_report(class_run, tmp_path, capsys):
    out = tmp_path / "gs"
    code, stdout, err = _main(["sweep", "--checkpoint", str(class_run), "--guidance", "1", "2", "--num", "40",
                               "--out", str(out)], capsys)
    assert code == 0, err
    rows = json.loads((out / "guidance.json").read_text())
    assert [r["guidance"] for r in rows] == [1.0, 2.0]
    assert rows[0]["nfe"] == 5 and rows[1]["nfe"] == 10  # Heun, 3 steps; guidance doubles the network rows
    assert all(0 <= r["adherence"] <= 1 for r in rows)
    for name in ("adherence_vs_fd.png", "diversity_vs_guidance.png", "report.md", "grid_guidance_2.png"):
        assert (out / name).exists(), name


def test_guidance_sweep_refuses_unconditional_runs(tmp_path, capsys):
    out = tmp_path / "plain"
    assert main(["train", "--data", "digits", "--max-steps", "2", "--out", str(out), *TINY]) == 0
    code, _, err = _main(["sweep", "--checkpoint", str(out), "--guidance", "1", "2", "--num", "20"], capsys)
    assert code == 2 and "needs a class- or text-conditioned run" in err


def test_train_classifier_then_guide_an_unconditional_run(tmp_path, capsys):
    plain = tmp_path / "plain"
    assert main(["train", "--data", "digits", "--max-steps", "2", "--out", str(plain), *TINY]) == 0
    capsys.readouterr()
    clf = tmp_path / "clf"
    code, out, err = _main(["train-classifier", "--data", "digits", "--out", str(clf), "--max-steps", "5",
                            "--no-progress"], capsys)
    assert code == 0, err
    assert (clf / "model.safetensors").exists() and json.loads(out)["classifier"] == str(clf)
    folder = tmp_path / "s"
    code, _, err = _main(["sample", "--checkpoint", str(plain), "--classifier", str(clf), "--class", "4",
                          "--classifier-scale", "2", "--num", "3", "--out", str(folder), "--no-progress"], capsys)
    assert code == 0, err
    meta = json.loads(Image.open(folder / "000001.png").text["undiffuse"])
    assert meta["class"] == "4" and meta["classifier_scale"] == 2.0
    code, _, err = _main(["train-classifier", "--data", "moons", "--out", str(tmp_path / "c2")], capsys)
    assert code == 2 and "needs labelled images" in err
