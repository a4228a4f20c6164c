"""Provenance on the CLI's and the Python API's PNGs, and `undiffuse verify`."""
import json

import pytest
from _cli import TINY, run_main
from PIL import Image

import undiffuse
from undiffuse.cli import main
from undiffuse.inference import generate as gen
from undiffuse.io import provenance as prov


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prov") / "mnist-ish"
    assert main(["train", "--data", "digits", "--max-steps", "2", "--conditioning", "class", "--out", str(out),
                 *TINY]) == 0
    return out


def test_cli_sample_pngs_carry_provenance_and_verify_names_the_model(cls_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "s"
    code, _, err = run_main(["sample", "--checkpoint", str(cls_run), "--num", "3", "--seed", "5", "--class", "2",
                             "--guidance", "1.5", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    run = gen.load_run(str(cls_run))
    for i in range(3):
        found = prov.read(str(out / f"{i:06d}.png"))
        rec = found["provenance"]
        assert rec["model"] == "mnist-ish" and rec["seed"] == 5 + i and rec["class"] == "2"
        assert rec["guidance"] == 1.5 and rec["sampler"] == "heun" and rec["steps"] == 3
        assert rec["model_sha256"] == prov.model_checksum(run.checkpoint, "ema") and len(rec["model_sha256"]) == 64
        assert rec["created"] == "2023-11-14T22:13:20Z" and rec["software"] == f"undiffuse {undiffuse.__version__}"
        assert f"seed: {5 + i}" in found["parameters"] and "guidance: 1.5" in found["parameters"]
    code, stdout, _ = run_main(["verify", str(out / "000001.png")], capsys)
    report = json.loads(stdout)
    assert code == 0 and report["model"] == "mnist-ish" and report["record"]["seed"] == 6
    assert json.loads(Image.open(out / "grid.png").text["provenance"])["count"] == 3


def test_python_api_provenance_and_damaged_records(cls_run, tmp_path):
    run = gen.load_run(str(cls_run))
    x = gen.to_unit(gen.generate(run, 2, seed=0))
    gen.save_images(str(tmp_path / "api"), x, {"sampler": "heun", "steps": 3}, seed=0, run=run)
    assert prov.read(str(tmp_path / "api" / "000001.png"))["provenance"]["seed"] == 1
    gen.save_images(str(tmp_path / "plain"), x, {"sampler": "heun", "steps": 3}, seed=0)  # without run: none
    assert prov.read(str(tmp_path / "plain" / "000000.png"))["provenance"] is None
    arr = gen.to_uint8(x)[0]
    bad = prov.png_bytes(arr, {"provenance": "{oops"})
    assert prov.read(bad)["problems"] == ["the provenance chunk is not valid JSON"]
    partial = prov.png_bytes(arr, {"provenance": json.dumps({"model": "m"})})
    assert "lacks model_sha256" in prov.read(partial)["problems"][0] and prov.read(partial)["provenance"] is None
    with pytest.raises(prov.NotAnImage):
        prov.read(b"not a png")


def refuse_seed_6(image, request):
    assert image.dtype.name == "uint8" and image.shape == (8, 8, 1) and request["model"] == "mnist-ish"
    return "seed 6 is not wanted" if request["seed"] == 6 else None


def refuse_all(image, request):
    return False


def test_cli_content_filter_refuses_before_writing(cls_run, tmp_path, capsys):
    out = tmp_path / "f"
    code, _, err = run_main(["sample", "--checkpoint", str(cls_run), "--num", "3", "--seed", "5", "--out", str(out),
                             "--content-filter", "test_provenance:refuse_seed_6", "--no-progress"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000002.png", "grid.png"]
    assert "content filter refused seed 6: seed 6 is not wanted" in err
    assert prov.read(str(out / "000002.png"))["provenance"]["seed"] == 7
    assert Image.open(out / "grid.png").size == (4 * 19, 4 * 10)  # two images in the grid, not three
    npz = tmp_path / "f.npz"
    assert run_main(["sample", "--checkpoint", str(cls_run), "--num", "3", "--seed", "5", "--out", str(npz),
                     "--format", "npz", "--content-filter", "test_provenance:refuse_seed_6", "--no-progress"],
                    capsys)[0] == 0
    import numpy as np

    with np.load(npz) as f:
        assert f["samples"].shape[0] == 2 and json.loads(str(f["parameters"]))["seeds"] == [5, 7]
    code, _, err = run_main(["sample", "--checkpoint", str(cls_run), "--num", "2", "--out", str(tmp_path / "none"),
                             "--content-filter", "test_provenance:refuse_all", "--no-progress"], capsys)
    assert code == 1 and "refused every sample" in err and not (tmp_path / "none").exists()
    code, _, err = run_main(["sample", "--checkpoint", str(cls_run), "--content-filter", "nope:x"], capsys)
    assert code == 2 and "--content-filter: content filter module 'nope' cannot be imported" in err
