"""The invisible watermark: embedding, detection after the attacks BENCHMARKS.md measures, keys,
and where undiffuse writes it (sample, save_images, the server) and reads it (verify)."""
import io
import json
import types

import numpy as np
import pytest
import torch
from _cli import TINY, run_main
from PIL import Image

from undiffuse.cli import main
from undiffuse.inference import generate as gen
from undiffuse.io import provenance as prov
from undiffuse.io import watermark as wm

CHECKSUM = "c0ffee12" + "ab" * 28


def _digit(size: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    d = (load_digits().images[7] / 16 * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(d).resize((size, size), Image.BICUBIC))


def _photo(size: int) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    p = load_sample_images().images[0][100:100 + 2 * size, 200:200 + 2 * size]
    return np.asarray(Image.fromarray(p).resize((size, size), Image.BICUBIC))


def _jpeg(a, quality=75):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def _half_and_back(a):
    im = Image.fromarray(a)
    return np.asarray(im.resize((im.width // 2, im.height // 2), Image.BICUBIC).resize(im.size, Image.BICUBIC))


def _crop10(a):  # 90% of width and height kept, off-centre
    h, w = a.shape[:2]
    return a[h // 20: h // 20 + round(0.9 * h), w // 13: w // 13 + round(0.9 * w)]


ATTACKS = {"clean": lambda a: a, "jpeg75": _jpeg, "half_and_back": _half_and_back, "crop10": _crop10}


@pytest.mark.parametrize("source", [_digit, _photo])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_marked_image_is_detected_after_attacks_at_128px(source, attack):
    img = source(128)
    payload = wm.payload_of(CHECKSUM)
    marked = wm.embed(img, payload)
    assert marked.shape == img.shape and marked.dtype == np.uint8
    found = wm.detect(ATTACKS[attack](marked), expected=payload)
    assert found["detected"] and found["score"] > found["threshold"]
    assert found["payload_matches"] and found["match"] > wm.MATCH_THRESHOLD
    if attack == "clean":
        assert found["payload_hex"] == "c0ffee12" and found["bit_errors"] == 0
    assert not wm.detect(ATTACKS[attack](img))["detected"]  # the unmarked image, attacked alike


def test_invisible_psnr_and_small_changes():
    for img in (_digit(128), _photo(128), _photo(256)):
        marked = wm.embed(img, 0xDEADBEEF)
        assert 39.5 <= wm.psnr(img, marked) <= 42.0
        assert np.abs(marked.astype(int) - img).max() <= 12
    grey = _digit(64)
    assert wm.psnr(grey, wm.embed(grey, 1, psnr=45)) > wm.psnr(grey, wm.embed(grey, 1))


def test_wrong_key_and_wrong_payload_are_not_confirmed(monkeypatch):
    img = _photo(128)
    marked = wm.embed(img, 1234, key="my secret")
    assert wm.detect(marked, key="my secret")["detected"]
    assert not wm.detect(marked)["detected"]  # the default key
    assert not wm.detect(marked, key="another secret")["detected"]
    monkeypatch.setenv(wm.KEY_ENV, "my secret")
    assert wm.key_of() == "my secret" and wm.detect(marked)["detected"]
    found = wm.detect(marked, expected=0x9E3779B9)  # differs from 1234 in 17 of 32 bits
    assert found["detected"] and not found["payload_matches"] and found["match"] < wm.MATCH_THRESHOLD


def test_null_scores_stay_under_the_threshold():
    rng = np.random.default_rng(0)
    scores = []
    for i in range(40):
        img = _photo(96) if i % 2 else _digit(96)
        noisy = np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
        scores.append(wm.detect(noisy, key=f"k{i}")["score"])
    assert max(scores) < wm.THRESHOLD and 4.9 < wm.THRESHOLD < 5.5


def test_small_images_are_not_marked():
    tiny = np.zeros((8, 8, 1), np.uint8)
    with pytest.raises(wm.TooSmall):
        wm.embed(tiny, 1)
    assert wm.mark(tiny, CHECKSUM) == (tiny, "too small")
    img = _digit(64)
    assert wm.mark(img, CHECKSUM, enabled=False)[1] == "off"
    out, status = wm.mark(img, CHECKSUM)
    assert status == "embedded" and wm.detect(out, expected=wm.payload_of(CHECKSUM))["payload_matches"]
    with pytest.raises(TypeError):
        wm.embed(img.astype(np.float32), 1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("wm") / "digits-wm"
    assert main(["train", "--data", "digits", "--max-steps", "2", "--out", str(out), *TINY]) == 0
    return out


def test_sample_marks_the_grid_verify_reports_it_and_no_watermark_leaves_none(run_dir, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run_main(["sample", "--checkpoint", str(run_dir), "--num", "16", "--out", str(out),
                             "--no-progress"], capsys)
    assert code == 0, err
    run = gen.load_run(str(run_dir))
    checksum = prov.model_checksum(run.checkpoint, "ema")
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[:2] == (148, 148)  # 4 x 4 samples of 8 px, 1 px padding, upscaled 4x
    assert json.loads(Image.open(out / "grid.png").text["provenance"])["watermark"] == "embedded"
    assert prov.read(str(out / "000003.png"))["provenance"]["watermark"] == "too small"  # 8x8: metadata only
    code, stdout, _ = run_main(["verify", str(out / "grid.png")], capsys)
    report = json.loads(stdout)
    assert code == 0 and report["watermark"] and report["provenance"] and report["model"] == "digits-wm"
    assert report["mark"]["payload_matches"] and report["mark"]["payload_hex"] == checksum[:8]
    code, stdout, _ = run_main(["verify", str(out / "000003.png")], capsys)
    report = json.loads(stdout)
    assert code == 0 and report["provenance"] and not report["watermark"] and not report["mark"]["checked"]

    # JPEG q75 strips the metadata; the mark still names the model
    Image.fromarray(grid).save(tmp_path / "grid.jpg", quality=75)
    code, stdout, _ = run_main(["verify", str(tmp_path / "grid.jpg")], capsys)
    report = json.loads(stdout)
    assert code == 0 and report["watermark"] and not report["provenance"]
    assert "payload_matches" not in report["mark"]  # no record to compare with; blind decoding is noisy here:
    assert bin(report["mark"]["payload"] ^ int(checksum[:8], 16)).count("1") <= 4  # a few of 32 bits may flip

    # the mark names another model than the (copied) record: exit 3
    other = dict(json.loads(Image.open(out / "grid.png").text["provenance"]), model_sha256="0" * 64)
    (tmp_path / "relabelled.png").write_bytes(prov.png_bytes(grid, {"provenance": json.dumps(other)}))
    code, stdout, err = run_main(["verify", str(tmp_path / "relabelled.png")], capsys)
    assert code == 3 and not json.loads(stdout)["mark"]["payload_matches"] and "is not the record's" in err

    plain = tmp_path / "plain"
    code, _, err = run_main(["sample", "--checkpoint", str(run_dir), "--num", "16", "--out", str(plain),
                             "--no-progress", "--no-watermark"], capsys)
    assert code == 0, err
    unmarked = np.asarray(Image.open(plain / "grid.png"))
    assert json.loads(Image.open(plain / "grid.png").text["provenance"])["watermark"] == "off"
    assert wm.psnr(grid, unmarked) < 60 and not wm.detect(unmarked)["detected"]
    Image.fromarray(unmarked).save(tmp_path / "plain.jpg", quality=75)  # neither mark nor record: exit 1
    code, stdout, err = run_main(["verify", str(tmp_path / "plain.jpg")], capsys)
    assert code == 1 and not json.loads(stdout)["watermark"] and "no undiffuse watermark" in err


def test_save_images_python_api_marks_by_default(run_dir, tmp_path):
    run = gen.load_run(str(run_dir))
    x = gen.to_unit(gen.generate(run, 9, seed=0))
    gen.save_images(str(tmp_path / "api"), x, {"sampler": "heun", "steps": 3}, seed=0, run=run)
    grid = np.asarray(Image.open(tmp_path / "api" / "grid.png"))
    expected = wm.payload_of(prov.model_checksum(run.checkpoint, "ema"))
    assert wm.detect(grid, expected=expected)["payload_matches"]
    gen.save_images(str(tmp_path / "off"), x, {"sampler": "heun", "steps": 3}, seed=0, run=run, watermark=False)
    assert not wm.detect(np.asarray(Image.open(tmp_path / "off" / "grid.png")))["detected"]


def _outputs(watermark: bool, size: int = 96):
    from undiffuse.serve.batching import Batcher
    from undiffuse.serve.limits import GenerateRequest

    registry = types.SimpleNamespace(checksum=lambda name: CHECKSUM)
    run = types.SimpleNamespace(kind="image", step=5, class_names=None, expert=None)
    job = types.SimpleNamespace(request=GenerateRequest(model="m", count=1, sampler="heun", steps=3, seed=4))
    img = torch.tensor(_photo(size), dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1  # (1, 3, H, W)
    images, refused = Batcher(registry, watermark=watermark).outputs(run, job, img)
    assert not refused
    return images[0]["png"]


def test_server_outputs_are_marked_unless_switched_off(tmp_path):
    png = _outputs(True)
    arr = np.asarray(Image.open(io.BytesIO(png)))
    assert prov.read(png)["provenance"]["watermark"] == "embedded"
    assert wm.detect(arr, expected=wm.payload_of(CHECKSUM))["payload_matches"]
    off = _outputs(False)
    assert prov.read(off)["provenance"]["watermark"] == "off"
    assert not wm.detect(np.asarray(Image.open(io.BytesIO(off))))["detected"]
    assert prov.read(_outputs(True, size=32))["provenance"]["watermark"] == "too small"
    pytest.importorskip("starlette")
    from undiffuse.serve import create_app

    (tmp_path / "models").mkdir()
    assert create_app(str(tmp_path / "models"), watermark=False).state.server.batcher.watermark is False
