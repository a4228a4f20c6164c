"""Latent diffusion: the autoencoder (round trip, latents, files), the `train --latent
--autoencoder RUN` pipeline through the CLI, its bad inputs, and exact resume (digits, CPU)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from _cli import TINY
from _cli import run_main as _main

from undiffuse import data
from undiffuse.config import resolve
from undiffuse.io import checkpoint as ckpt
from undiffuse.nets.autoencoder import Autoencoder, AutoencoderConfig
from undiffuse.training.autoencoder import (
    AutoencoderError,
    LatentDataset,
    load_autoencoder,
    reconstruction_mse,
    save_autoencoder,
    split,
    train_autoencoder,
)
from undiffuse.training.trainer import Trainer

NET = {"channels": 16, "channel_mult": (1, 2, 2)}  # 8x8 digits -> 4 x 2 x 2 latents


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def ae(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("latent") / "ae"
    train_autoencoder(digits, str(out), max_steps=250, net_config=NET, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, ae):
    out = tmp_path_factory.mktemp("latent") / "run"
    from undiffuse.cli import main

    assert main(["train", "--latent", "--autoencoder", str(ae), "--data", "digits", "--max-steps", "6",
                 "--out", str(out), *TINY]) == 0
    return out


def _held_out(digits):
    _, held = split(len(digits), seed=0)
    return digits.get(held)


def test_round_trip_error_is_bounded_and_beats_baselines(ae, digits):
    codec = load_autoencoder(str(ae))
    x = _held_out(digits)
    mse = reconstruction_mse(codec.net, x)
    assert mse == pytest.approx(codec.meta["reconstruction_mse"]["held_out"], rel=1e-5)
    mean_image = float((x - digits.get(torch.arange(len(digits))).mean(0)).square().mean())
    torch.manual_seed(0)
    untrained = reconstruction_mse(Autoencoder(AutoencoderConfig(**NET)), x)
    assert mse < 0.1, mse  # model space [-1, 1]: an RMS error under 0.32 (about 16% of the range)
    assert mse < 0.35 * mean_image and mse < 0.2 * untrained, (mse, mean_image, untrained)
    # decode(encode(x)) through the scaled latents is the same round trip
    assert torch.allclose(codec.decode(codec.encode(x)), codec.net(x), atol=1e-5)


def test_latents_are_finite_with_unit_std_after_scaling(ae, digits):
    codec = load_autoencoder(str(ae))
    train_idx, _ = split(len(digits), seed=0)
    z = codec.encode(digits.get(train_idx))
    assert z.shape == (len(train_idx), 4, 2, 2)
    assert torch.isfinite(z).all()
    assert float(z.double().std()) == pytest.approx(1.0, rel=1e-4)  # scale factor = 1 / std of these latents
    meta = json.loads((ae / "autoencoder.json").read_text())
    assert meta["latent_shape"] == [4, 2, 2] and meta["image_shape"] == [1, 8, 8]
    assert meta["scale_factor"] == pytest.approx(1 / meta["latent_std"])


def test_encode_decode_shapes_and_size_errors():
    net = Autoencoder(AutoencoderConfig(in_channels=3, channels=8, latent_channels=3, channel_mult=(1, 2, 2)))
    x = torch.rand(2, 3, 16, 12) * 2 - 1
    mean, logvar = net.encode(x)
    assert mean.shape == logvar.shape == (2, 3, 4, 3)
    assert net.decode(mean).shape == x.shape
    with pytest.raises(ValueError, match="multiples of 4"):
        net.encode(torch.zeros(1, 3, 10, 12))
    with pytest.raises(ValueError, match="3-channel"):
        net.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="latents must have shape"):
        net.decode(torch.zeros(1, 4, 4, 4))


def test_save_load_round_trip_is_bit_exact(ae, digits, tmp_path):
    a, b = load_autoencoder(str(ae)), load_autoencoder(str(ae))
    x = digits.get(torch.arange(64))
    assert torch.equal(a.encode(x), b.encode(x))
    copy = tmp_path / "copy"
    save_autoencoder(str(copy), a.net, {k: v for k, v in a.meta.items() if k != "sha256"})
    c = load_autoencoder(str(copy))
    for (k, v), (k2, v2) in zip(a.net.state_dict().items(), c.net.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert c.sha256 == a.sha256  # same weights, same bytes
    assert torch.equal(a.decode(a.encode(x)), c.decode(c.encode(x)))
    assert sorted(os.listdir(copy)) == ["autoencoder.json", "autoencoder.safetensors"]  # no temporary files left


def test_not_an_autoencoder_and_changed_weights_are_refused(ae, tmp_path):
    with pytest.raises(AutoencoderError, match="does not exist"):
        load_autoencoder(str(tmp_path / "nope"))
    with pytest.raises(AutoencoderError, match="not an autoencoder folder"):
        load_autoencoder(str(tmp_path))
    bad = tmp_path / "bad"
    shutil.copytree(ae, bad)
    codec = load_autoencoder(str(bad))
    sd = {k: v.clone() for k, v in codec.net.state_dict().items()}
    next(iter(sd.values())).add_(1e-3)
    ckpt.save_tensors(str(bad / "autoencoder.safetensors"), sd)
    with pytest.raises(AutoencoderError, match="has changed"):
        load_autoencoder(str(bad))


def test_train_latent_end_to_end_samples_images(latent_run, ae, tmp_path, capsys):
    cfg = json.loads((latent_run / "config.json").read_text())
    meta = json.loads((ae / "autoencoder.json").read_text())
    assert cfg["latent"] == {"autoencoder": os.path.abspath(ae), "sha256": meta["sha256"],
                             "scale_factor": meta["scale_factor"]}
    assert cfg["diffusion"]["sigma_data"] == 1.0 and cfg["model"]["in_channels"] == 4
    state = json.loads((latent_run / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert state["dataset"]["shape"] == [4, 2, 2]
    out = tmp_path / "s.npz"
    code, _, err = _main(["sample", "--checkpoint", str(latent_run), "--num", "6", "--format", "npz",
                          "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    x = np.load(out)["samples"]
    assert x.shape == (6, 1, 8, 8) and x.min() >= 0 and x.max() <= 1 and np.isfinite(x).all()
    code, _, err = _main(["sample", "--checkpoint", str(latent_run), "--num", "4", "--out", str(tmp_path / "png"),
                          "--no-progress"], capsys)
    assert code == 0, err
    from PIL import Image

    assert Image.open(tmp_path / "png" / "000000.png").size == (8, 8)
    grid = Image.open(latent_run / "samples" / "step_00000006.png")  # the trainer's grid is decoded too
    assert grid.size == (4 * (2 * 9 + 1), 4 * (2 * 9 + 1))


@pytest.mark.parametrize("extra, message", [
    (["--no-latent", "--autoencoder", "AE"], "only used for latent diffusion"),
    (["--latent", "--dry-run", "--data", "moons"], "an autoencoder needs image or video data"),
    (["--latent", "--data", "moons"], "an autoencoder needs image or video data"),
    (["--latent", "--autoencoder", "NOT_AE"], "not an autoencoder folder"),
    (["--latent", "--autoencoder", "AE", "--image-size", "16"], "latent shapes would not match"),
    (["--latent", "--autoencoder", "AE", "--data", "moons"], "latent shapes would not match"),
    (["--set", "latent.scale_factor=2"], "the latent section is written by --latent --autoencoder"),
])
def test_bad_latent_training_input_exits_2(extra, message, ae, tmp_path, capsys):
    extra = [str(ae) if a == "AE" else str(tmp_path) if a == "NOT_AE" else a for a in extra]
    args = ["train", *(["--data", "digits"] if "--data" not in extra else []), *extra, "--max-steps", "2",
            "--out", str(tmp_path / "run"), *TINY]
    code, _, err = _main(args, capsys)
    assert code == 2, err
    assert message in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sampling_without_or_with_changed_autoencoder_exits_2(ae, tmp_path, capsys):
    own = tmp_path / "ae"
    shutil.copytree(ae, own)
    run = tmp_path / "run"
    code, _, err = _main(["train", "--latent", "--autoencoder", str(own), "--data", "digits", "--max-steps", "2",
                          "--out", str(run), *TINY], capsys)
    assert code == 0, err
    sample = ["sample", "--checkpoint", str(run), "--num", "2", "--out", str(tmp_path / "s"), "--no-progress"]
    codec = load_autoencoder(str(own))
    sd = {k: v + 1e-3 for k, v in codec.net.state_dict().items()}
    ckpt.save_tensors(str(own / "autoencoder.safetensors"), sd)  # weights replaced, JSON kept
    code, _, err = _main(sample, capsys)
    assert code == 2 and "needs its autoencoder" in err and "has changed" in err, err
    shutil.rmtree(own)
    code, _, err = _main(sample, capsys)
    assert code == 2 and "needs its autoencoder" in err and "does not exist" in err, err


def test_resume_of_a_latent_run_is_bitwise(ae, digits, tmp_path):
    over = {"model.channels": 16, "model.channel_mult": [1, 2], "model.num_res_blocks": 1,
            "model.attention_levels": [1], "model.head_channels": 16, "optim.batch_size": 16,
            "optim.warmup_steps": 2, "train.log_every": 1, "train.sample_count": 2, "sample.steps": 2, "train.tensorboard": False,
            "train.max_steps": 8, "train.time_budget": None, "train.checkpoint_every": 4,
            "diffusion.sigma_data": 1.0}

    def trainer(run, resume=None):
        latents = LatentDataset(digits, load_autoencoder(str(ae)))
        cfg = resolve("digits", latents, over)
        return Trainer(cfg, latents, str(run), resume=resume, progress=False, log=lambda m: None)

    trainer(tmp_path / "a").fit()
    b = trainer(tmp_path / "b")
    real_step = b.train_step

    def dies_at_6():
        if b.step == 6:
            raise KeyboardInterrupt
        return real_step()

    b.train_step = dies_at_6
    with pytest.raises(KeyboardInterrupt):
        b.fit()
    trainer(tmp_path / "b", resume="auto").fit()
    from test_train import _assert_same_checkpoint

    _assert_same_checkpoint(tmp_path / "a", tmp_path / "b", 8)


def test_latent_run_resumes_through_the_cli_with_its_own_autoencoder(latent_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(latent_run, run)
    code, _, err = _main(["train", "--resume", "auto", "--out", str(run), "--max-steps", "8", *TINY], capsys)
    assert code == 0, err
    assert "resumed from" in err
    assert ckpt.read_latest(str(run)) == "step_00000008"


def test_latent_alone_trains_its_own_autoencoder_first_and_resumes_without_retraining(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = _main(["train", "--latent", "--data", "digits", "--max-steps", "10", "--out", str(run),
                            "--set", "train.checkpoint_every=3", *TINY], capsys)
    assert code == 0, err
    meta = json.loads((run / "autoencoder" / "autoencoder.json").read_text())
    assert meta["training"]["steps"] == 3  # 30% of the 10 steps; the diffusion model gets the other 7
    assert ckpt.read_latest(str(run)) == "step_00000007"
    latent = json.loads((run / "config.json").read_text())["latent"]
    assert latent["autoencoder"] == os.path.join(str(run), "autoencoder") and latent["sha256"] == meta["sha256"]
    assert "latent diffusion on" in err
    weights = (run / "autoencoder" / "autoencoder.safetensors").read_bytes()
    code, _, err = _main(["train", "--resume", "auto", "--out", str(run), "--max-steps", "14", *TINY], capsys)
    assert code == 0, err
    assert (run / "autoencoder" / "autoencoder.safetensors").read_bytes() == weights  # not trained again
    assert ckpt.read_latest(str(run)) == "step_00000010"  # 14 less the autoencoder's 4 steps (30%, rounded)
    code, _, err = _main(["sample", "--checkpoint", str(run), "--num", "4", "--out", str(tmp_path / "s"),
                          "--no-progress"], capsys)
    assert code == 0, err
    shutil.rmtree(run / "autoencoder")  # a fresh start into a run folder: refused before any training
    code, _, err = _main(["train", "--latent", "--data", "digits", "--max-steps", "10", "--out", str(run), *TINY], capsys)
    assert code == 2 and "already holds checkpoints" in err
    assert not (run / "autoencoder").exists() and ckpt.read_latest(str(run)) == "step_00000010"


def test_the_latent_route_splits_a_time_budget_by_the_autoencoders_recorded_seconds(tmp_path):
    from undiffuse.training.latent_route import rest_of_budget

    class Codec:
        meta = {"training": {"seconds": 271.5}}

    assert rest_of_budget(900.0, None, Codec()) == (628.5, None)
    assert rest_of_budget(None, 10, Codec()) == (None, 7)
    assert rest_of_budget(None, 1, Codec()) == (None, 1)  # never zero steps
    assert rest_of_budget(100.0, None, type("C", (), {"meta": {"training": {"seconds": 500.0}}})()) == (1.0, None)


def test_emoji_and_mnist5k_take_the_latent_route_unless_told_otherwise(tmp_path, capsys, monkeypatch):
    import functools

    from undiffuse.cli import train as train_cli
    from undiffuse.training import budget
    # the route is under test, not the step-rate measurement (tests/test_budget.py measures for real)
    monkeypatch.setattr(train_cli, "fit_budget", functools.partial(budget.fit_budget, rate=lambda cfg, shape: 5.0))
    out = tmp_path / "run"
    code, cfg, err = _main(["train", "--data", "emoji", "--conditioning", "text", "--dry-run", "--out", str(out)], capsys)
    assert code == 0, err  # a dry run shows the route's config with the untrained autoencoder's shapes
    cfg = json.loads(cfg)
    assert cfg["preset"] == "emoji-latent" and cfg["model"]["in_channels"] == 4
    assert cfg["latent"] == {"autoencoder": str(out / "autoencoder"), "sha256": None, "scale_factor": None}
    assert cfg["train"]["time_budget"] == pytest.approx(900 * 0.7) and "would train first" in err
    assert not out.exists()  # nothing trained, nothing written
    code, cfg, err = _main(["train", "--data", "emoji", "--conditioning", "text", "--dry-run", "--no-latent"], capsys)
    assert code == 0, err
    assert json.loads(cfg)["preset"] == "emoji" and json.loads(cfg)["model"]["patch_size"] == 4
    code, cfg, err = _main(["train", "--data", "mnist5k", "--time-budget", "1m", "--dry-run", "--out", str(out)], capsys)
    assert code == 0, err  # mnist5k too (BENCHMARKS.md "Budget-aware defaults")
    cfg = json.loads(cfg)
    assert cfg["latent"]["autoencoder"] == str(out / "autoencoder") and cfg["model"]["in_channels"] == 4
    assert cfg["diffusion"]["p_mean"] == -0.4 and "budget: network: unet-32" in err  # the latent grid's rung
    code, cfg, err = _main(["train", "--data", "mnist5k", "--time-budget", "1m", "--dry-run", "--preset", "small"], capsys)
    assert code == 0 and json.loads(cfg)["latent"]["autoencoder"] is None


def test_mnist5k_is_built_in_and_offline():
    d = data.load("mnist5k")
    assert d.shape == (1, 28, 28) and len(d) == 5000 and d.storage.dtype == torch.uint8
    assert torch.bincount(d.labels).tolist() == [500] * 10
    x = d.get(torch.arange(10))
    assert x.min() == -1 and x.max() == 1
    assert "mnist5k" in data.names()


def test_latent_training_evaluates_decoded_samples(ae, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = _main(["train", "--latent", "--autoencoder", str(ae), "--data", "digits", "--max-steps", "4",
                          "--eval-every", "4", "--eval-samples", "20", "--out", str(run), *TINY], capsys)
    assert code == 0, err
    evals = [e for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "eval" in e]
    assert len(evals) == 1 and np.isfinite(evals[0]["eval"]["fd"])
    assert "digits" in evals[0]["eval_features"]  # scored as 1x8x8 images, i.e. decoded


def _digit_png(path, index):
    from PIL import Image
    from sklearn.datasets import load_digits

    Image.fromarray((load_digits().images[index] / 16.0 * 255).round().astype(np.uint8)).save(path)
    return np.asarray(Image.open(path))


def _pngs(out, n):
    from PIL import Image

    return [np.asarray(Image.open(out / f"{i:06d}.png")) for i in range(n)]


def test_img2img_on_a_latent_run_edits_the_images_latents(latent_run, ae, tmp_path, capsys):
    from undiffuse.inference import generate as gen

    src = _digit_png(tmp_path / "d.png", 3)
    base = ["img2img", "--checkpoint", str(latent_run), "--image", str(tmp_path / "d.png"), "--num", "2",
            "--steps", "10"]
    # strength 0.04 of 10 steps rounds to no step: the result is the image's autoencoder round trip
    code, _, err = _main([*base, "--strength", "0.04", "--out", str(tmp_path / "zero")], capsys)
    assert code == 0, err
    codec = load_autoencoder(str(ae))
    x = torch.tensor(src, dtype=torch.float32)[None, None] / 255 * 2 - 1
    expected = np.asarray(gen.to_uint8(gen.to_unit(codec.decode(codec.encode(x))))).reshape(8, 8)
    assert np.abs(expected.astype(int) - src).max() > 10  # the round trip is not the image itself
    for img in _pngs(tmp_path / "zero", 2):
        assert img.shape == (8, 8)  # decoded images, not 2x2 latents
        assert np.abs(img.astype(int) - expected).max() <= 1  # rounding of the float32 path
    code, _, err = _main([*base, "--strength", "0.6", "--out", str(tmp_path / "edit")], capsys)
    assert code == 0, err
    a, b = _pngs(tmp_path / "edit", 2)
    assert a.shape == (8, 8) and not np.array_equal(a, b)  # seeds 0 and 1 differ


def test_inpaint_on_a_latent_run_keeps_the_kept_pixels_exactly(latent_run, tmp_path, capsys):
    from PIL import Image

    src = _digit_png(tmp_path / "d.png", 5)
    out = tmp_path / "out"
    code, _, err = _main(["inpaint", "--checkpoint", str(latent_run), "--image", str(tmp_path / "d.png"),
                          "--mask", "top", "--num", "2", "--steps", "6", "--jump-length", "2", "--jump-count", "1",
                          "--out", str(out)], capsys)
    assert code == 0, err
    for i, img in enumerate(_pngs(out, 2)):
        assert img.shape == (8, 8)
        assert np.array_equal(img[4:], src[4:])  # the bottom half was kept
        assert not np.array_equal(img[:4], src[:4])  # the top half was drawn by the tiny model
        meta = json.loads(Image.open(out / f"{i:06d}.png").text["undiffuse"])
        assert meta["latent"] is True and meta["seed"] == i


def test_latent_inpaint_mask_must_keep_whole_latent_cells(latent_run, tmp_path, capsys):
    _digit_png(tmp_path / "d.png", 5)
    # the centre square touches every 4x4-pixel cell of the 2x2 latents: no cell is wholly kept
    code, _, err = _main(["inpaint", "--checkpoint", str(latent_run), "--image", str(tmp_path / "d.png"),
                          "--mask", "center", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no latent cell" in err and "wholly kept" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["upscale"], ["restore", "--degradation", "blur"]])
def test_upscale_and_restore_refuse_latent_runs(command, latent_run, tmp_path, capsys):
    code, _, err = _main([*command, "--checkpoint", str(latent_run), "--image", "digits", "--index", "0",
                          "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "latent diffusion run" in err and "inpaint or img2img" in err, err


def test_resume_with_another_autoencoder_exits_2(latent_run, ae, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(latent_run, run)
    codec = load_autoencoder(str(ae))
    other = tmp_path / "other"  # a valid autoencoder of the same shapes, with other weights
    torch.manual_seed(1)
    save_autoencoder(str(other), Autoencoder(codec.net.config), {k: v for k, v in codec.meta.items() if k != "sha256"})
    code, _, err = _main(["train", "--resume", "auto", "--out", str(run), "--max-steps", "8", "--latent",
                          "--autoencoder", str(other), *TINY], capsys)
    assert code == 2 and "not the autoencoder the resumed run was trained with" in err, err


def test_train_autoencoder_cli_prints_a_summary(tmp_path, capsys):
    code, out, err = _main(["train-autoencoder", "--data", "digits", "--out", str(tmp_path / "ae"), "--max-steps", "3",
                            "--channels", "8"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["latent_shape"] == [4, 2, 2] and summary["steps"] == 3
    assert summary["sha256"] == load_autoencoder(str(tmp_path / "ae")).sha256


@pytest.mark.parametrize("args, message", [
    (["--data", "moons"], "needs images"),
    (["--kl-weight", "-1"], "--kl-weight must be >= 0"),
    (["--data", "ODD"], "multiples of 4"),
])
def test_train_autoencoder_bad_input_exits_2(args, message, tmp_path, capsys):
    odd = tmp_path / "odd.npy"
    np.save(odd, np.zeros((4, 10, 10), np.uint8))
    args = [str(odd) if a == "ODD" else a for a in args]
    code, _, err = _main(["train-autoencoder", "--out", str(tmp_path / "ae"), "--max-steps", "2", *args], capsys)
    assert code == 2 and message in err, err


def test_a_latent_teacher_distils_on_its_latents(tmp_path, latent_run, capsys):
    """Consistency distillation of a latent run: the student trains on the same encoded data,
    keeps the autoencoder, and samples decode to images."""
    import numpy as np
    from _cli import run_main

    out = str(tmp_path / "cm")
    code, _, err = run_main(["distill", "--method", "consistency", "--teacher", str(latent_run), "--out", out,
                             "--max-steps", "2", "--steps", "4", "--no-progress"], capsys)
    assert code == 0, err
    from undiffuse.inference.generate import load_run

    teacher, student = load_run(str(latent_run)), load_run(out)
    assert student.config.latent == teacher.config.latent and student.shape == teacher.shape
    npz = str(tmp_path / "s.npz")
    code, _, err = run_main(["sample", "--checkpoint", out, "--num", "3", "--format", "npz", "--out", npz,
                             "--no-progress"], capsys)
    assert code == 0, err
    assert np.load(npz)["samples"].shape == (3, 1, 8, 8)


def test_hflip_on_latent_data_uses_the_flipped_images_latents(ae, digits, tmp_path):
    """``data.hflip`` on a latent run trains on encode(flip(image)), not flip(encode(image))."""
    latents = LatentDataset(digits, load_autoencoder(str(ae)))
    idx = torch.arange(5)
    want = latents.codec.encode(digits.get(idx).flip(-1))
    torch.testing.assert_close(latents.flipped(idx), want)
    assert (latents.flipped(idx) - latents.get(idx).flip(-1)).abs().max() > 1e-3  # not the same thing
    cfg = resolve("digits", latents, {"model.channels": 8, "model.channel_mult": [1], "model.num_res_blocks": 1,
                                      "model.attention_levels": [], "model.head_channels": 8,
                                      "optim.batch_size": 8, "data.hflip": True, "train.tensorboard": False,
                                      "train.max_steps": 1, "train.time_budget": None})
    seen = []
    real = latents.flipped
    latents.flipped = lambda index: seen.append(index) or real(index)
    t = Trainer(cfg, latents, str(tmp_path / "run"), progress=False, log=lambda m: None)
    t.train_step()
    assert seen and len(seen[0]) == 8
