"""``undiffuse inpaint | img2img | upscale | restore`` on a tiny digits run."""
import json

import numpy as np
import pytest
from _cli import TINY
from _cli import run_main as _main
from PIL import Image

from undiffuse.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("inv") / "run"
    assert main(["train", "--data", "digits", "--max-steps", "3", "--out", str(out), *TINY]) == 0
    return out


def _png(path, arr01):
    Image.fromarray((np.asarray(arr01) * 255).round().astype(np.uint8)).save(path)


def test_inpaint_keeps_the_kept_pixels_exactly_and_writes_metadata(run, tmp_path, capsys):
    from sklearn.datasets import load_digits

    digit = load_digits().images[5] / 16.0
    _png(tmp_path / "d.png", digit)
    mask = np.zeros((8, 8))
    mask[:, 4:] = 1  # fill the right half
    _png(tmp_path / "m.png", mask)
    out = tmp_path / "out"
    code, _, err = _main(["inpaint", "--checkpoint", str(run), "--image", str(tmp_path / "d.png"), "--mask",
                          str(tmp_path / "m.png"), "--num", "2", "--steps", "6", "--jump-length", "2",
                          "--jump-count", "1", "--out", str(out)], capsys)
    assert code == 0, err
    src = np.asarray(Image.open(tmp_path / "d.png"))
    for i in range(2):
        img = Image.open(out / f"00000{i}.png")
        assert np.array_equal(np.asarray(img)[:, :4], src[:, :4])
        meta = json.loads(img.text["undiffuse"])
        assert meta["command"] == "inpaint" and meta["jump_count"] == 1 and meta["seed"] == i
    assert (out / "grid.png").exists()


@pytest.mark.parametrize("command", [
    ["img2img", "--strength", "0.5"],
    ["upscale"],
    ["restore", "--degradation", "blur"],
    ["restore", "--degradation", "mask", "--mask", "center"],
    ["restore", "--degradation", "downsample"],
])
def test_commands_run_on_builtin_items(run, tmp_path, capsys, command):
    image = "digits"
    if command[0] == "upscale" or "downsample" in command:
        from sklearn.datasets import load_digits

        x = load_digits().images[:2, None] / 16.0
        np.save(tmp_path / "low.npy", x.reshape(2, 1, 4, 2, 4, 2).mean((3, 5)))
        image = str(tmp_path / "low.npy")
    out = tmp_path / "o"
    code, _, err = _main([*command, "--checkpoint", str(run), "--image", image, "--index", "0,1", "--steps", "3",
                          "--out", str(out)], capsys)
    assert code == 0, err
    assert Image.open(out / "000001.png").size == (8, 8)


@pytest.mark.parametrize("args, message", [
    (["inpaint", "--mask", "MASK16.png"], "--mask has size 16x16 but the images are 8x8"),
    (["inpaint", "--mask", "GREY.png"], "--mask must be binary"),
    (["inpaint", "--mask", "BLACK.png"], "all black: nothing to fill"),
    (["img2img", "--strength", "1.5"], "strength"),
    (["img2img", "--strength", "0"], "strength"),
    (["restore", "--degradation", "mask"], "--degradation mask needs --mask"),
    (["upscale", "--factor", "3"], "does not make the model's 8x8"),
    (["inpaint", "--mask", "top", "--class", "3"], "--class needs a class-conditional run"),
    (["inpaint", "--mask", "top", "--index", "5000"], "--index 5000 out of range"),
])
def test_bad_input_is_a_usage_error_naming_the_value(run, tmp_path, capsys, args, message):
    _png(tmp_path / "MASK16.png", np.ones((16, 16)))
    grey = np.zeros((8, 8))
    grey[0, 0] = 0.5
    _png(tmp_path / "GREY.png", grey)
    _png(tmp_path / "BLACK.png", np.zeros((8, 8)))
    args = [str(tmp_path / a) if a in ("MASK16.png", "GREY.png", "BLACK.png") else a for a in args]
    code, _, err = _main([args[0], "--checkpoint", str(run), "--image", "digits", "--index", "0", "--steps", "2",
                          "--out", str(tmp_path / "o"), *args[1:]], capsys)
    assert code == 2 and message in err, err


def test_upscale_with_a_model_trained_on_low_resolution_copies(tmp_path, capsys):
    sr = tmp_path / "sr"
    assert main(["train", "--data", "digits", "--conditioning", "lowres", "--set", "conditioning.factor=2",
                 "--max-steps", "2", "--out", str(sr), *TINY]) == 0
    from sklearn.datasets import load_digits

    x = load_digits().images[:3, None] / 16.0
    np.save(tmp_path / "low.npy", x.reshape(3, 1, 4, 2, 4, 2).mean((3, 5)))
    out = tmp_path / "up"
    code, _, err = _main(["upscale", "--checkpoint", str(sr), "--image", str(tmp_path / "low.npy"), "--out",
                          str(out), "--steps", "3"], capsys)
    assert code == 0, err
    meta = json.loads(Image.open(out / "000002.png").text["undiffuse"])
    assert meta["method"] == "conditioned (SR3)" and meta["factor"] == 2
    code, _, err = _main(["upscale", "--checkpoint", str(sr), "--image", str(tmp_path / "low.npy"), "--factor", "4",
                          "--out", str(out)], capsys)
    assert code == 2 and "trained for factor 2" in err
    code, _, err = _main(["sample", "--checkpoint", str(sr), "--num", "2"], capsys)
    assert code == 2 and "super-resolution model" in err
