"""train-control, sample with control, evaluate's control scores: end to end on a small
set of squares, plus the refusals."""
import json

import numpy as np
import pytest
from PIL import Image

from _cli import TINY, run_main


def _squares(path, n=64, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        s = rng.integers(4, 9)
        r, c = rng.integers(1, size - s - 1, 2)
        x[i, 0, r:r + s, c:c + s] = 1.0
    np.savez(path, images=x)
    return x


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("control")
    data = root / "squares.npz"
    x = _squares(data)
    out = {"root": root, "data": data, "x": x}
    for name, seed in (("base", 0), ("other", 1)):
        code = run_main(["train", "--data", str(data), "--max-steps", "12", "--seed", str(seed), "--out",
                         str(root / name), *TINY], _Capture())[0]
        assert code == 0
        out[name] = root / name
    code, _, err = run_main(["train-control", "--base", str(out["base"]), "--control", "edges", "--max-steps", "8",
                             "--out", str(root / "ctrl"), "--no-progress", "--set", "train.sample_count=4"], _Capture())
    assert code == 0, err
    out["ctrl"] = root / "ctrl"
    images = root / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray((x[i, 0] * 255).astype(np.uint8)).save(images / f"{i}.png")
    out["images"] = images
    return out


class _Capture:
    """A stand-in for pytest's capsys in a module fixture (nothing captured)."""

    @staticmethod
    def readouterr():
        return type("Out", (), {"out": "", "err": ""})


def test_the_control_run_records_its_base(runs):
    cfg = json.load(open(runs["ctrl"] / "config.json"))
    m = cfg["model"]
    assert m["kind"] == "controlled" and m["adapters"][0]["extractor"] == "edges"
    assert m["adapters"][0]["map_size"] == 16 and len(m["base_sha256"]) == 64
    assert cfg["conditioning"]["control"] == "edges" and cfg["data"]["hflip"] is False


def test_scale_zero_samples_the_base_exactly(runs, tmp_path, capsys):
    common = ["--num", "3", "--seed", "5", "--format", "npz", "--no-progress"]
    assert run_main(["sample", "--checkpoint", str(runs["base"]), *common, "--out", str(tmp_path / "b.npz")],
                    capsys)[0] == 0
    code, _, err = run_main(["sample", "--checkpoint", str(runs["base"]), "--control", str(runs["ctrl"]),
                             "--control-image", str(runs["images"]), "--control-scale", "0", "--seed", "5",
                             "--format", "npz", "--no-progress", "--out", str(tmp_path / "c.npz")], capsys)
    assert code == 0, err
    with np.load(tmp_path / "b.npz") as b, np.load(tmp_path / "c.npz") as c:
        assert np.array_equal(b["samples"], c["samples"])
        assert c["controls"].shape == (3, 1, 16, 16) and list(c["control_extractors"]) == ["edges"]
        params = json.loads(str(c["parameters"]))
        assert params["control"]["scales"] == [0.0] and len(params["control"]["images"]) == 3


def test_a_control_run_samples_with_its_own_adapter_and_is_scored(runs, tmp_path, capsys):
    out = tmp_path / "s.npz"
    code, _, err = run_main(["sample", "--checkpoint", str(runs["ctrl"]), "--control-image",
                             str(runs["images"] / "0.png"), "--control-image", str(runs["images"] / "1.png"),
                             "--format", "npz", "--no-progress", "--out", str(out)], capsys)
    assert code == 0, err
    with np.load(out) as f:
        assert f["samples"].shape == (2, 1, 16, 16)
    code, text, err = run_main(["evaluate", str(out), "--reference", str(runs["data"]), "--json", "--k", "1"], capsys)
    assert code == 0, err
    res = json.loads(text)
    assert 0 <= res["control_f1"] <= 1 and "control" in res["protocol"]


def test_refusals_name_the_problem(runs, tmp_path, capsys):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    cases = [
        (["sample", "--checkpoint", str(runs["ctrl"]), "--control-image", str(bad)], "is not an image"),
        (["sample", "--checkpoint", str(runs["other"]), "--control", str(runs["ctrl"]), "--control-image",
          str(runs["images"])], "was trained for another base"),
        (["sample", "--checkpoint", str(runs["base"]), "--control", str(runs["ctrl"])], "needs --control-image"),
        (["sample", "--checkpoint", str(runs["ctrl"]), "--control-image", str(runs["images"]), "--num", "5"],
         "--num 5 and --control-image (3 images) disagree"),
        (["sample", "--checkpoint", str(runs["base"]), "--control-image", str(runs["images"])], "no control adapter"),
        (["sample", "--checkpoint", str(runs["base"]), "--control", str(runs["base"]), "--control-image",
          str(runs["images"])], "is not a control run"),
        (["train-control", "--base", str(runs["base"]), "--control", "canny", "--max-steps", "1", "--out",
          str(tmp_path / "x")], "--control 'canny' is unknown; allowed: edges"),
    ]
    for args, message in cases:
        code, _, err = run_main([*args, "--no-progress"] if args[0] == "sample" else args, capsys)
        assert code == 2 and message in err, (args, err)


def test_a_run_trained_with_the_map_concatenated(runs, tmp_path, capsys):
    """train --control: the map enters the U-Net with the noisy input (the from-scratch
    baseline of an adapter); sample and evaluate take control images the same way."""
    run = tmp_path / "concat"
    code, _, err = run_main(["train", "--data", str(runs["data"]), "--control", "edges", "--max-steps", "4",
                             "--out", str(run), *TINY], capsys)
    assert code == 0, err
    cfg = json.load(open(run / "config.json"))
    assert cfg["model"]["cond_channels"] == 1 and cfg["conditioning"]["control"] == "edges"
    out = tmp_path / "s.npz"
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--control-image", str(runs["images"]),
                             "--format", "npz", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    with np.load(out) as f:
        assert f["samples"].shape == (3, 1, 16, 16) and f["controls"].shape == (3, 1, 16, 16)
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--control-image", str(runs["images"]),
                             "--control-scale", "2", "--no-progress"], capsys)
    assert code == 2 and "has no scale" in err


def test_control_maps_on_a_latent_grid_lose_nothing():
    import torch

    from undiffuse.data import control_maps as cm

    maps = torch.rand(2, 1, 28, 28)
    grid = cm.to_grid(maps, 7)
    assert grid.shape == (2, 16, 7, 7) and torch.equal(torch.nn.functional.pixel_shuffle(grid, 4), maps)
    assert cm.to_grid(maps, 28) is maps
    with pytest.raises(ValueError, match="do not tile"):
        cm.to_grid(maps, 6)
