"""write_samples, the one output path: content filter -> file format with its metadata ->
provenance record -> watermark, to a folder, to one file, or in memory (the server)."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse.inference import generate as gen
from undiffuse.io import images
from undiffuse.io import provenance as prov
from undiffuse.io import watermark as wm
from undiffuse.io.writers import WRITERS, File, write_samples

CHECKSUM = "c0ffee12" + "ab" * 28
PARAMS = {"sampler": "heun", "steps": 3}


def _images(n=2, size=64, channels=3):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(0))


def _record(seed, **extra):
    return prov.record("toy-model", CHECKSUM, sampler="heun", steps=3, seed=seed, step=5, created=0.0, **extra)


def _open(source):
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    return np.asarray(img), dict(img.text)


def test_png_folder_pixels_chunks_and_records(tmp_path):
    x = _images()
    per = [{"class": "a"}, {"class": "b"}]
    w = write_samples(x, str(tmp_path / "out"), seed=10, params=PARAMS, per_sample=per,
                      records=[_record(10, **per[0]), _record(11, **per[1])], grid_scale=2)
    assert [p.split("/")[-1] for p in w.paths] == ["grid.png", "000000.png", "000001.png"] and not w.refused
    u8 = images.to_uint8(x)
    payload = wm.payload_of(CHECKSUM)

    arr, text = _open(w.paths[2])
    assert list(text) == ["parameters", "undiffuse", "provenance"]  # the chunk order tools see
    assert text["parameters"] == "sampler: heun, steps: 3, class: b, seed: 11"
    assert json.loads(text["undiffuse"]) == {"sampler": "heun", "steps": 3, "class": "b", "seed": 11}
    assert json.loads(text["provenance"]) == {**_record(11, **per[1]), "watermark": "embedded"}
    assert np.array_equal(arr, wm.embed(u8[1], payload))  # marked after the filter, payload the checksum
    assert w.items[1].record["watermark"] == "embedded" and w.items[1].path == w.paths[2]

    arr, text = _open(w.paths[0])
    assert list(text) == ["parameters", "undiffuse", "provenance"]
    assert text["parameters"] == "sampler: heun, steps: 3, seed: 10..11"
    assert json.loads(text["undiffuse"]) == {"sampler": "heun", "steps": 3, "seed": 10, "count": 2}
    assert json.loads(text["provenance"]) == {**_record(10), "count": 2, "watermark": "embedded"}  # no class
    assert arr.shape == (2 * (1 + 64 + 1), 2 * (1 + 2 * (64 + 1)), 3)
    assert np.array_equal(arr, wm.embed(images.upscale(images.grid(u8), 2), payload))


def test_in_memory_gives_the_bytes_the_files_hold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = _images(3, size=8, channels=1)
    kw = dict(seed=4, params=PARAMS, records=[_record(4 + k) for k in range(3)], watermark=False)
    mem = write_samples(x, **kw)
    assert mem.paths == [] and list(tmp_path.iterdir()) == []
    disk = write_samples(x, str(tmp_path / "d"), **kw)
    assert [f.data for f in mem.files] == [open(p, "rb").read() for p in disk.paths]
    assert [it.data for it in mem.items] == [f.data for f in mem.files[1:]]
    assert mem.items[0].record["watermark"] == "off"
    assert prov.read(mem.items[2].data)["provenance"]["seed"] == 6


def test_without_params_the_metadata_shows_the_record():
    """The server's form: a ``parameters`` line of the record (watermark status last), no ``undiffuse`` chunk."""
    rec = _record(7, **{"class": "3"})
    w = write_samples(_images(1, size=32), seed=7, records=[rec], grid=False)
    arr, text = _open(w.items[0].data)
    assert list(text) == ["parameters", "provenance"] and len(w.files) == 1
    assert text["parameters"] == (f"model: toy-model, model_sha256: {CHECKSUM}, sampler: heun, steps: 3, "
                                  f"seed: 7, guidance: 1.0, step: 5, class: 3, software: {prov.software()}, "
                                  f"watermark: too small")


def test_content_filter_sees_the_unmarked_image_and_refuses_before_writing(tmp_path):
    x = _images(3)
    seen = []

    def no_11(image, request):
        seen.append((image.copy(), request))
        return "not 11" if request["seed"] == 11 else None

    recs = [_record(10 + k) for k in range(3)]
    w = write_samples(x, str(tmp_path / "f"), seed=10, params=PARAMS, records=recs, content_filter=no_11,
                      request={"model": "toy-model", "count": 3})
    assert w.refused == [{"index": 1, "seed": 11, "reason": "not 11"}]
    assert [p.split("/")[-1] for p in w.paths] == ["grid.png", "000000.png", "000002.png"]
    assert np.array_equal(seen[1][0], images.to_uint8(x)[1]) and seen[1][0].dtype == np.uint8
    assert seen[1][1] == {"model": "toy-model", "count": 3, **recs[1]}  # request, then the record
    text = _open(w.paths[2])[1]
    assert json.loads(text["undiffuse"])["refused_seeds"] == [11] and "seed: 12" in text["parameters"]
    assert _open(w.paths[0])[1]["parameters"].endswith("refused_seeds: [11], seed: 10..12")

    def broken(image, request):
        raise RuntimeError("boom")

    none = write_samples(x, str(tmp_path / "none"), seed=10, params=PARAMS, content_filter=broken)
    assert none.paths == [] and not (tmp_path / "none").exists()  # fail closed, nothing written
    assert none.refused[0]["reason"] == "content filter raised RuntimeError: boom"


def test_npz_holds_the_kept_samples_labels_and_seeds(tmp_path):
    x = _images(3, size=4)
    out = tmp_path / "s.npz"
    w = write_samples(x, str(out), format="npz", seed=5, params=PARAMS, labels=[7, 8, 9],
                      content_filter=lambda image, request: request["seed"] != 6)
    assert w.paths == [str(out)] and w.refused[0]["seed"] == 6
    with np.load(out) as f:
        assert np.array_equal(f["samples"], x.numpy()[[0, 2]]) and f["samples"].dtype == np.float32
        assert f["labels"].tolist() == [7, 9] and f["labels"].dtype == np.int64
        assert json.loads(str(f["parameters"])) == {**PARAMS, "refused_seeds": [6], "seed": 5, "count": 2,
                                                    "seeds": [5, 7]}
    gen.save_npz(str(tmp_path / "api.npz"), x.numpy(), {"a": 1})  # the API writes its parameters as given
    with np.load(tmp_path / "api.npz") as f:
        assert json.loads(str(f["parameters"])) == {"a": 1} and np.array_equal(f["samples"], x.numpy())


def test_points_are_one_scatter_picture(tmp_path):
    pts = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    w = write_samples(pts, str(tmp_path / "p"), seed=3, params=PARAMS)
    assert [p.split("/")[-1] for p in w.paths] == ["scatter.png"] and len(w.items) == 50
    arr, text = _open(w.paths[0])
    assert text == {"parameters": "sampler: heun, steps: 3, seed: 3"}
    assert np.array_equal(arr, images.scatter(pts.numpy())[..., 0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(format="sdf"), "unknown format 'sdf'; allowed: png, npz"),
    (dict(format="npz", grid=False), "format 'npz' has no option grid; its options: labels"),
    (dict(per_sample=[{}]), "per_sample has 1 entries for 2 samples"),
    (dict(records=[{}, {}, {}]), "records has 3 entries for 2 samples"),
    (dict(grid_scale=0), "grid_scale must be >= 1, got 0"),
])
def test_bad_arguments_name_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        write_samples(_images(2, size=4), **kwargs)


def test_an_output_of_the_wrong_kind_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="output '.*file' exists and is not a folder; format 'png' writes a folder"):
        write_samples(_images(1, size=4), str(tmp_path / "file"))
    with pytest.raises(ValueError, match="output '.*' is a folder; format 'npz' writes one file"):
        write_samples(_images(1, size=4), str(tmp_path), format="npz")
    assert (tmp_path / "file").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_png_refuses_samples_that_are_neither_images_nor_points():
    with pytest.raises(ValueError, match=r"format 'png' writes \(N, C, H, W\) images or \(N, D\) points; got "
                                         r"samples of shape \(2, 3, 4\)"):
        write_samples(torch.zeros(2, 3, 4))


def test_a_new_format_is_one_function(tmp_path, monkeypatch):
    def write_txt(batch, *, digits=2):
        return [File(f"{it.index:06d}.txt", " ".join(f"{v:.{digits}f}" for v in it.sample).encode(), it)
                for it in batch.items]

    monkeypatch.setitem(WRITERS, "txt", write_txt)
    w = write_samples(torch.tensor([[0.5, 1.0], [2.0, 3.0]]), str(tmp_path / "t"), format="txt", digits=1)
    assert (tmp_path / "t" / "000001.txt").read_text() == "2.0 3.0" and w.items[0].data == b"0.5 1.0"


def test_generate_keeps_the_moved_helpers():
    """The pixel helpers moved to io.images; generate's names (in README and user scripts) still work."""
    assert gen.grid is images.grid and gen.to_uint8 is images.to_uint8 and gen.save_png is images.save_png
    assert gen.scatter is images.scatter and gen.parameters_text is prov.parameters_text
    assert prov.png_bytes is images.png_bytes and gen.FORMATS == ("png", "npz", "wav", "gif")
    x = _images(1, size=4)
    assert np.array_equal(images.to_uint8(x), images.to_uint8(x.numpy()))  # tensor or array
