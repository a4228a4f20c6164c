"""Tests for undiffuse.data: built-ins, image folders, bad files and array files (all offline)."""
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse import data
from undiffuse.data import DataError, DataWarning

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def save(path, color=(128, 128, 128), size=(8, 8), mode="RGB", fmt=None):
    """Write a solid image of ``size`` (W, H); creates parent folders."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return str(path)


def all_items(ds):
    return ds.get(torch.arange(len(ds)))


def only_data_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, DataWarning)]


# ----------------------------------------------------------------------------- built-ins

def test_names():
    assert data.names() == ["digits", "mnist5k", "emoji", "spoken-digits", "notes", "chords", "moving-digits", "moons", "swiss_roll", "checkerboard",
                            "eight_gaussians", "spirals"]


def test_digits_exact_vs_sklearn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = data.load("digits")
    assert (ds.kind, ds.shape, len(ds), ds.num_classes) == ("image", (1, 8, 8), 1797, 10)
    assert ds.class_names == [str(i) for i in range(10)]
    x = all_items(ds)
    assert x.dtype == torch.float32 and x.shape == (1797, 1, 8, 8)
    expected = torch.from_numpy(ref.images / 16 * 2 - 1).float().unsqueeze(1)
    assert torch.equal(x, expected)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(ds.labels, torch.from_numpy(ref.target).long())
    assert torch.equal(ds.labels_of(torch.tensor([0, 5])), torch.tensor([ref.target[0], ref.target[5]]))
    assert torch.equal(ds.to_unit(x[:3]), torch.from_numpy(ref.images[:3] / 16).float().unsqueeze(1))


def test_digits_resized():
    ds = data.load("digits", image_size=16, channels=3)
    x = ds.get(torch.arange(10))
    assert ds.shape == (3, 16, 16) and x.shape == (10, 3, 16, 16)
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.3
    assert torch.equal(x[:, 0], x[:, 2])


TOY_LABELS = {"moons": 2, "swiss_roll": 0, "checkerboard": 0, "eight_gaussians": 8, "spirals": 2}


@pytest.mark.parametrize("name", sorted(TOY_LABELS))
def test_toys(name):
    ds = data.load(name, num_points=3000, seed=1)
    x = all_items(ds)
    assert (ds.kind, ds.shape, len(ds), x.shape) == ("vector", (2,), 3000, (3000, 2))
    assert torch.isfinite(x).all()
    assert x.mean(0).abs().max() < 1e-4
    assert abs(x.double().std(unbiased=False).item() - 1) < 1e-4
    assert torch.equal(x, all_items(data.load(name, num_points=3000, seed=1)))
    assert not torch.allclose(x, all_items(data.load(name, num_points=3000, seed=2)))
    assert ds.num_classes == TOY_LABELS[name]
    if TOY_LABELS[name]:
        assert ds.labels.shape == (3000,) and ds.labels.dtype == torch.int64
        assert set(ds.labels.tolist()) == set(range(TOY_LABELS[name]))
    else:
        assert ds.labels is None and ds.labels_of(torch.arange(3)) is None
    assert ds.to_unit(x) is x


def test_eight_gaussians_labels_match_components():
    ds = data.load("eight_gaussians", num_points=2000)
    x = all_items(ds)
    angle = torch.atan2(x[:, 1], x[:, 0]) % (2 * torch.pi)
    nearest = torch.round(angle / (2 * torch.pi / 8)).long() % 8
    assert torch.equal(nearest, ds.labels)


def test_checkerboard_only_dark_squares():
    x = all_items(data.load("checkerboard", num_points=4000)).numpy()
    pos = (x - x.min(0)) / (x.max(0) - x.min(0)) * 4  # board coordinates in [0, 4]
    cells, frac = np.floor(pos).astype(int), pos % 1
    inside = ((frac > 0.02) & (frac < 0.98)).all(1)  # ignore points on cell edges
    assert len(x) == 4000 and inside.sum() > 3500
    assert ((cells[inside, 0] + cells[inside, 1]) % 2 == 0).all()


# ----------------------------------------------------------------------------- folders

def test_class_subfolders(tmp_path):
    for name, color in [("cat", RED), ("dog", GREEN), ("bird", BLUE)]:
        for i in range(2):
            save(tmp_path / name / f"{i}.png", color)
    ds = data.load(str(tmp_path))
    assert ds.class_names == ["bird", "cat", "dog"] and ds.shape == (3, 8, 8) and len(ds) == 6
    x = ds.to_unit(all_items(ds))
    for i, label in enumerate(ds.labels.tolist()):
        color = {0: BLUE, 1: RED, 2: GREEN}[label]
        assert torch.allclose(x[i, :, 0, 0], torch.tensor(color, dtype=torch.float32) / 255)
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_recursive_search_mixed_layout_is_unlabelled(tmp_path):
    save(tmp_path / "top.png", RED)
    save(tmp_path / "a" / "b" / "deep.JPG", GREEN)
    save(tmp_path / "a" / "mid.webp", BLUE)
    with pytest.warns(DataWarning, match="not all in immediate class sub-folders"):
        ds = data.load(str(tmp_path))
    assert len(ds) == 3 and ds.labels is None and ds.class_names == []
    # sorted relative paths: a/b/deep.JPG, a/mid.webp, top.png
    x = ds.to_unit(all_items(ds))[:, :, 4, 4]
    assert x.argmax(1).tolist() == [1, 2, 0]


def test_flat_folder_is_unlabelled_without_warning(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "b.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = data.load(str(tmp_path))
    assert len(ds) == 2 and ds.labels is None


def test_resize_and_centre_crop_removes_borders(tmp_path):
    img = Image.new("RGB", (60, 20), GREEN)
    img.paste(RED, (0, 0, 20, 20))
    img.paste(BLUE, (40, 0, 60, 20))
    os.makedirs(tmp_path / "f")
    img.save(tmp_path / "f" / "wide.png")
    ds = data.load(str(tmp_path / "f"), image_size=10)
    x = ds.to_unit(all_items(ds))
    assert x.shape == (1, 3, 10, 10)
    assert (x[0, 1] > 0.9).all() and (x[0, 0] < 0.1).all() and (x[0, 2] < 0.1).all()
    ds = data.load(str(tmp_path / "f"), image_size=(5, 12))  # (H, W)
    assert ds.shape == (3, 5, 12)
    x = ds.to_unit(all_items(ds))[0]
    # crop box is source columns 6..54: 14 red, 20 green, 14 blue at 4 source pixels per output pixel
    assert (x[1, :, 4:8] > 0.9).all() and (x[0, :, :3] > 0.9).all() and (x[2, :, -3:] > 0.9).all()
    assert (x[1, :, :3] < 0.1).all() and (x[0, :, 4:] < 0.1).all()


def test_default_size_is_first_image(tmp_path):
    save(tmp_path / "a.png", RED, size=(12, 6))
    save(tmp_path / "b.png", GREEN, size=(30, 30))
    ds = data.load(str(tmp_path))
    assert ds.shape == (3, 6, 12) and len(ds) == 2


def test_grayscale_vs_rgb(tmp_path):
    save(tmp_path / "g" / "a.png", 40, mode="L")
    save(tmp_path / "g" / "b.png", 200, mode="L")
    gray = data.load(str(tmp_path / "g"))
    assert gray.shape == (1, 8, 8)
    assert gray.storage[:, 0, 0, 0].tolist() == [40, 200]
    assert data.load(str(tmp_path / "g"), channels=3).shape == (3, 8, 8)
    save(tmp_path / "g" / "c.png", (200, 100, 0))
    rgb = data.load(str(tmp_path / "g"))
    assert rgb.shape == (3, 8, 8) and rgb.storage[2, :, 0, 0].tolist() == [200, 100, 0]
    assert rgb.storage[0, :, 0, 0].tolist() == [40, 40, 40]
    forced = data.load(str(tmp_path / "g"), channels=1)
    assert forced.shape == (1, 8, 8) and forced.storage[2, 0, 0, 0].item() == round(0.299 * 200 + 0.587 * 100)


def test_alpha_composited_on_white(tmp_path):
    save(tmp_path / "t.png", (10, 20, 30, 0), mode="RGBA")
    save(tmp_path / "o.png", (10, 20, 30, 255), mode="RGBA")
    ds = data.load(str(tmp_path))
    assert ds.storage[:, :, 0, 0].tolist() == [[10, 20, 30], [255, 255, 255]]  # o.png, t.png


def test_hidden_files_ignored(tmp_path):
    save(tmp_path / "a.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0\1junk")
    save(tmp_path / ".thumbs" / "x.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(data.load(str(tmp_path))) == 1


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_big_1bit_png(path, side=9000):
    """A genuine 1-bit PNG of side x side pixels that is only a few kB on disk."""
    rows = (b"\0" + b"\0" * ((side + 7) // 8)) * side
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(rows, 9)) + _png_chunk(b"IEND", b""))
    path.write_bytes(png)


def _corrupt(p):
    p.write_bytes(b"this is not an image at all" * 20)


def _zero(p):
    p.write_bytes(b"")


def _truncated(p):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _gif(p):
    Image.new("RGB", (8, 8), RED).save(p, format="GIF")


def _text(p):
    p.write_text("hello")


def _bomb(p):
    write_big_1bit_png(p)


BAD = {  # name: (file name, writer, reason fragment)
    "corrupt": ("bad.png", _corrupt, "cannot decode"),
    "zero_byte": ("zero.jpg", _zero, "empty file"),
    "truncated": ("trunc.png", _truncated, "truncated"),
    "gif": ("anim.gif", _gif, "unsupported file type '.gif'"),
    "text": ("notes.txt", _text, "a .txt caption file with no image of that name"),
    "bomb": ("huge.png", _bomb, "decompression bomb: 9000x9000"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_skipped_with_warning_or_strict_error(tmp_path, case):
    fname, write, reason = BAD[case]
    save(tmp_path / "a_good.png", RED)
    save(tmp_path / "z_good.png", GREEN)
    write(tmp_path / fname)
    bad_path = str(tmp_path / fname)
    with pytest.warns(DataWarning) as record:
        ds = data.load(str(tmp_path))
    messages = only_data_warnings(record)
    assert len(messages) == 1 and bad_path in messages[0] and reason in messages[0]
    assert len(ds) == 2 and ds.to_unit(all_items(ds))[:, :, 0, 0].argmax(1).tolist() == [0, 1]
    with pytest.raises(DataError, match=reason) as info:
        data.load(str(tmp_path), strict=True)
    assert bad_path in str(info.value)


def test_pixel_limit_is_a_module_constant(tmp_path, monkeypatch):
    save(tmp_path / "small.png", size=(8, 8))
    save(tmp_path / "big.png", size=(20, 20))
    monkeypatch.setattr(data.images, "MAX_PIXELS", 100)  # the image loader's guard
    with pytest.warns(DataWarning, match=r"big\.png.*20x20 = 400 pixels"):
        ds = data.load(str(tmp_path))
    assert len(ds) == 1


@pytest.mark.parametrize("side", [12, 20])  # Pillow warns above its limit, raises above twice it
def test_pillow_bomb_checks_are_handled(tmp_path, monkeypatch, side):
    save(tmp_path / "ok.png", size=(8, 8))
    save(tmp_path / "big.png", size=(side, side))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.warns(DataWarning, match=r"big\.png.*decompression bomb"):
        ds = data.load(str(tmp_path))
    assert len(ds) == 1


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match=r"no usable images.*\.png, \.jpg, \.jpeg, \.webp") as info:
        data.load(str(tmp_path))
    assert str(tmp_path) in str(info.value)
    _corrupt(tmp_path / "x.png")
    with pytest.warns(DataWarning), pytest.raises(DataError, match="1 file"):
        data.load(str(tmp_path))


# ----------------------------------------------------------------------------- arrays

def test_npy_uint8_layouts(tmp_path):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (5, 3, 6, 7), dtype=np.uint8)
    np.save(tmp_path / "nchw.npy", nchw)
    np.save(tmp_path / "nhwc.npy", nchw.transpose(0, 2, 3, 1))
    np.save(tmp_path / "nhw.npy", nchw[:, 0])
    expected = torch.from_numpy(nchw).float() / 255 * 2 - 1
    for name in ("nchw", "nhwc"):
        ds = data.load(str(tmp_path / f"{name}.npy"))
        assert ds.kind == "image" and ds.shape == (3, 6, 7) and ds.storage.dtype == torch.uint8
        assert torch.allclose(all_items(ds), expected) and ds.labels is None
    ds = data.load(str(tmp_path / "nhw.npy"))
    assert ds.shape == (1, 6, 7) and torch.allclose(all_items(ds), expected[:, :1])
    ds = data.load(str(tmp_path / "nhwc.npy"), image_size=4, channels=1)
    assert ds.shape == (1, 4, 4) and ds.storage.dtype == torch.uint8


def test_npy_floats(tmp_path):
    x = np.linspace(0, 1, 2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    np.save(tmp_path / "unit.npy", x)
    np.save(tmp_path / "signed.npy", x * 2 - 1)
    for name in ("unit", "signed"):
        got = all_items(data.load(str(tmp_path / f"{name}.npy")))
        assert torch.allclose(got, torch.from_numpy(x * 2 - 1), atol=1e-6)
    np.save(tmp_path / "range.npy", x * 255)
    with pytest.raises(DataError, match=r"range\.npy.*\[0, 255\]"):
        data.load(str(tmp_path / "range.npy"))
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match=r"nan\.npy.*non-finite"):
        data.load(str(tmp_path / "nan.npy"))


def test_npy_vectors_used_as_given(tmp_path):
    v = np.random.default_rng(0).normal(5, 3, (50, 4))
    np.save(tmp_path / "v.npy", v)
    ds = data.load(str(tmp_path / "v.npy"), image_size=32)
    assert (ds.kind, ds.shape, len(ds)) == ("vector", (4,), 50)
    assert torch.equal(all_items(ds), torch.from_numpy(v).float())
    np.save(tmp_path / "empty.npy", np.zeros((0, 4)))
    with pytest.raises(DataError, match=r"empty\.npy.*non-empty"):
        data.load(str(tmp_path / "empty.npy"))


def test_npz_keys_and_labels(tmp_path):
    imgs = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.array([0, 2, 1, 2]))
    ds = data.load(str(tmp_path / "a.npz"))
    assert ds.shape == (1, 8, 8) and ds.labels.tolist() == [0, 2, 1, 2] and ds.class_names == ["0", "1", "2"]
    assert torch.equal(ds.storage[:, 0], torch.from_numpy(imgs))
    np.savez(tmp_path / "one.npz", whatever=np.ones((3, 2)), y=np.array([1, 0, 1]))
    ds = data.load(str(tmp_path / "one.npz"))
    assert ds.kind == "vector" and ds.labels.tolist() == [1, 0, 1]
    np.savez(tmp_path / "two.npz", p=np.ones((3, 2)), q=np.ones((3, 2)))
    with pytest.raises(DataError, match=r"two\.npz.*\['p', 'q'\]"):
        data.load(str(tmp_path / "two.npz"))
    np.savez(tmp_path / "badlab.npz", x=np.ones((3, 2)), y=np.array([0, 1]))
    with pytest.raises(DataError, match="labels must be integers of shape"):
        data.load(str(tmp_path / "badlab.npz"))


UNPICKLED = []


def _record(tag):
    UNPICKLED.append(tag)
    return tag


class Trap:
    """Unpickling this object appends to UNPICKLED."""

    def __reduce__(self):
        return (_record, ("unpickled",))


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_object_arrays_refused_never_unpickled(tmp_path, ext):
    arr = np.empty((2, 3), dtype=object)
    arr[0, 0] = Trap()
    path = tmp_path / f"obj{ext}"
    if ext == ".npy":
        np.save(path, arr, allow_pickle=True)
    else:
        np.savez(path, x=arr)
    UNPICKLED.clear()
    with pytest.raises(DataError, match=r"obj\.np[yz]") as info:
        data.load(str(path))
    assert "pickle" in str(info.value).lower() and UNPICKLED == []
    if ext == ".npy":  # control: the file really would run code if unpickled
        np.load(path, allow_pickle=True)
        assert UNPICKLED == ["unpickled"]


# ----------------------------------------------------------------------------- specs

def test_unknown_spec_lists_names(tmp_path):
    with pytest.raises(DataError) as info:
        data.load("mnist")
    msg = str(info.value)
    assert "'mnist'" in msg and all(n in msg for n in data.names()) and ".npz" in msg and ".png" in msg
    (tmp_path / "t.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"t\.csv.*unsupported file type '\.csv'"):
        data.load(str(tmp_path / "t.csv"))


def test_bad_arguments():
    with pytest.raises(DataError, match="channels"):
        data.load("digits", channels=2)
    with pytest.raises(DataError, match="image_size"):
        data.load("digits", image_size=0)
