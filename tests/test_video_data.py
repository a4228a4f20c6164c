"""Video data (``undiffuse.data.video``): moving-digits built deterministically with its ground
truth (digits, source images, centroid trajectories), the bounce path, the held-out split, and
folders / arrays of clips with their bad-file handling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from undiffuse import data
from undiffuse.data import video as dv
from undiffuse.data.base import DataError, DataWarning
from undiffuse.io.video import gif_bytes, mp4_available, mp4_bytes

FRAMES = 4  # the fewest allowed: the cheapest full build


@pytest.fixture(scope="module")
def train():
    return data.load("moving-digits", frames=FRAMES)


@pytest.fixture(scope="module")
def heldout():
    return data.load("moving-digits:heldout", frames=FRAMES)


def _centroids(frames: torch.Tensor) -> torch.Tensor:
    """Intensity centroid (row, col) of (..., H, W) frames."""
    x = frames.double()
    g = torch.arange(x.shape[-1], dtype=torch.float64)
    m = x.sum((-2, -1))
    return torch.stack([(x.sum(-1) * g).sum(-1) / m, (x.sum(-2) * g).sum(-1) / m], -1)


def test_moving_digits_shapes_values_and_ground_truth(train):
    n = dv.TRAIN_CLIPS
    assert isinstance(train, dv.VideoDataset) and train.kind == "video" and len(train) == n
    assert train.shape == (FRAMES, 1, 32, 32) and train.storage.dtype == torch.uint8 and train.max_value == 255.0
    assert train.storage.shape == (n, FRAMES, 1, 32, 32) and int(train.storage.max()) > 200
    x = train.get(torch.arange(8))
    assert x.dtype == torch.float32 and x.shape == (8, FRAMES, 1, 32, 32) and x.min() == -1 and x.max() <= 1
    torch.testing.assert_close(train.to_unit(x), train.storage[:8].float() / 255)
    assert train.digits.shape == (n, 2) and train.digits.dtype == torch.int64
    assert train.sources.shape == (n, 2) and train.sources.dtype == torch.int64
    assert train.centroids.shape == (n, FRAMES, 2, 2) and train.centroids.dtype == torch.float32
    assert train.velocities.shape == (n, 2, 2) and train.offsets.shape == (n, 2, 2)
    one = train.digits[:, 1] < 0
    assert int(one.sum()) == n // 2 and bool((train.digits[:, 0] >= 0).all())
    assert torch.equal(one, train.sources[:, 1] < 0)
    assert bool(torch.isnan(train.centroids[one][:, :, 1]).all()) and not torch.isnan(train.centroids[~one]).any()
    assert bool(torch.isnan(train.velocities[one][:, 1]).all())
    speed = train.velocities[:, 0].norm(dim=-1)
    assert torch.allclose(speed, torch.full_like(speed, 2.0))  # size / 16
    v = train.info["video"]
    assert v["frames"] == FRAMES and v["fps"] == 8 and v["size"] == 32 and v["digits"]["box"] == 14
    labels = torch.from_numpy(dv._digit_boxes(14)[1])  # mnist5k's labels (kept from the build)
    present = train.sources >= 0
    assert torch.equal(train.digits[present], labels[train.sources[present]])


def test_moving_digits_labels_classes_and_captions(train, heldout):
    names = train.class_names
    assert len(names) == 65 and names[:10] == [str(d) for d in range(10)]
    assert names[10] == "0 and 0" and names[11] == "0 and 1" and names[-1] == "9 and 9"
    assert heldout.class_names == names
    for k in range(0, len(train), 397):
        a, b = train.digits[k].tolist()
        want = str(a) if b < 0 else f"{min(a, b)} and {max(a, b)}"
        assert names[int(train.labels[k])] == want
        assert all(str(a) in c and (b < 0 or str(b) in c) for c in train.captions[k])
    assert dv.captions((3, 7))[0] == "a 3 and a 7" and "the digits 3 and 7" in dv.captions((7, 3))
    assert dv.captions((8,))[:2] == ["an 8", "the digit 8"]
    assert set(train.labels.tolist()) == set(range(65))  # 8,000 clips reach every class


def test_heldout_images_never_train(train, heldout):
    used_train = set(train.sources[train.sources >= 0].tolist())
    used_held = set(heldout.sources[heldout.sources >= 0].tolist())
    assert not used_train & used_held
    assert all(dv.is_heldout(i) for i in used_held) and not any(dv.is_heldout(i) for i in used_train)
    share = sum(dv.is_heldout(i) for i in range(5000)) / 5000
    assert 0.09 < share < 0.11
    assert len(heldout) == dv.HELDOUT_CLIPS and heldout.info["split"] == "heldout"


def test_moving_digits_deterministic_and_independent_of_frames(heldout):
    again = data.load("moving-digits:heldout", frames=FRAMES)
    assert torch.equal(again.storage, heldout.storage) and torch.equal(again.sources, heldout.sources)
    torch.testing.assert_close(again.centroids, heldout.centroids, rtol=0, atol=0, equal_nan=True)
    longer = data.load("moving-digits:heldout", frames=6)
    assert torch.equal(longer.storage[:, :FRAMES], heldout.storage)
    torch.testing.assert_close(longer.centroids[:, :FRAMES], heldout.centroids, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("size", [32, 64])
def test_centroids_match_the_rendered_frames(heldout, size):
    ds = heldout if size == 32 else data.load("moving-digits:heldout", frames=FRAMES, image_size=64)
    assert ds.shape == (FRAMES, 1, size, size)
    one = torch.nonzero(ds.digits[:, 1] < 0)[:, 0][:200]
    seen = _centroids(ds.storage[one, :, 0])                      # (k, T, 2)
    assert (seen - ds.centroids[one, :, 0].double()).abs().max() < 0.1  # brief: < 0.5 px
    box = ds.info["video"]["digits"]["box"]
    off = ds.offsets[one, 0].double().numpy()
    path = dv.bounce(ds.centroids[one, 0, 0].double().numpy(), ds.velocities[one, 0].double().numpy(),
                     FRAMES, off, size - box + off)                # (T, k, 2)
    assert np.abs(path.transpose(1, 0, 2) - ds.centroids[one, :, 0].double().numpy()).max() < 1e-4


def test_bounce_hand_computed():
    np.testing.assert_allclose(dv.bounce(1.0, 2.0, 5, 0.0, 4.0), [1, 3, 3, 1, 1])
    np.testing.assert_allclose(dv.bounce(0.5, -1.0, 4, 0.0, 2.0), [0.5, 0.5, 1.5, 1.5])
    np.testing.assert_allclose(dv.bounce(3.0, 0.0, 3, 2.0, 5.0), [3, 3, 3])
    np.testing.assert_allclose(dv.bounce(2.0, 5.0, 3, 2.0, 2.0), [2, 2, 2])  # no room: stays
    both = dv.bounce(np.array([[1.0, 2.0]]), np.array([[2.0, -3.0]]), 3, 0.0, 4.0)  # broadcasts
    assert both.shape == (3, 1, 2)
    np.testing.assert_allclose(both[:, 0, 0], [1, 3, 3])
    np.testing.assert_allclose(both[:, 0, 1], [2, 1, 4])


def test_moving_digits_bad_arguments_name_the_value():
    with pytest.raises(DataError, match="48x48"):
        data.load("moving-digits", image_size=48)
    with pytest.raises(DataError, match="got 2"):
        data.load("moving-digits", frames=2)
    with pytest.raises(DataError, match="got 40"):
        data.load("moving-digits", frames=40)
    with pytest.raises(DataError, match="'test'.*allowed"):
        data.load("moving-digits:test")
    assert "moving-digits" in data.names()


def test_moving_digits_in_rgb(heldout):
    rgb = data.load("moving-digits:heldout", frames=FRAMES, channels=3)
    assert rgb.shape == (FRAMES, 3, 32, 32) and torch.equal(rgb.storage[:, :, 1], heldout.storage[:, :, 0])


# ----------------------------------------------------------------------------- folders and arrays


def _clip(t: int, h: int = 20, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 1), dtype=np.uint8)


def test_gif_folder_with_classes_short_and_corrupt_files(tmp_path):
    for cls, seeds in (("cats", (1, 2)), ("dogs", (3,))):
        (tmp_path / cls).mkdir()
        for s in seeds:
            (tmp_path / cls / f"c{s}.gif").write_bytes(gif_bytes(_clip(6, seed=s), 8))
    (tmp_path / "dogs" / "short.gif").write_bytes(gif_bytes(_clip(3), 8))
    (tmp_path / "dogs" / "broken.gif").write_bytes(b"GIF89a not really")
    with pytest.warns(DataWarning) as caught:
        ds = data.load(str(tmp_path), frames=4)
    messages = " | ".join(str(w.message) for w in caught)
    assert "short.gif" in messages and "3 frame" in messages and "broken.gif" in messages
    assert ds.kind == "video" and ds.shape == (4, 1, 20, 20) and len(ds) == 3
    assert ds.class_names == ["cats", "dogs"] and ds.labels.tolist() == [0, 0, 1]
    assert torch.equal(ds.storage[0, :, 0], torch.from_numpy(_clip(6, seed=1)[:4, :, :, 0]))  # GIF is lossless
    assert ds.info["video"]["fps"] == 8.0
    small = data.load(str(tmp_path), frames=4, image_size=16, channels=3)
    assert small.shape == (4, 3, 16, 16)
    with pytest.raises(DataError, match="broken.gif"):
        data.load(str(tmp_path), frames=4, strict=True)
    (tmp_path / "dogs" / "broken.gif").unlink()
    with pytest.raises(DataError, match=r"short\.gif: has 3 frame"):
        data.load(str(tmp_path), frames=4, strict=True)


@pytest.mark.skipif(not mp4_available(), reason="PyAV (the video extra) is not installed")
def test_mp4_folder(tmp_path):
    clip = np.zeros((5, 16, 16, 3), np.uint8)
    clip[:, 4:12, 4:12] = 200
    (tmp_path / "a.mp4").write_bytes(mp4_bytes(clip, 10))
    (tmp_path / "b.mp4").write_bytes(b"\x00" * 100)
    with pytest.warns(DataWarning, match="b.mp4"):
        ds = data.load(str(tmp_path), frames=4)
    assert ds.shape == (4, 1, 16, 16) and len(ds) == 1 and ds.info["video"]["fps"] == 10
    assert (ds.storage[0, :, 0].float() - torch.from_numpy(clip[:4, :, :, 0]).float()).abs().mean() < 4


def test_npz_and_npy_clips(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (3, 6, 1, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "v.npz", samples=x, labels=np.array([0, 1, 1]))
    ds = data.load(str(tmp_path / "v.npz"), frames=4)
    assert ds.kind == "video" and ds.shape == (4, 1, 12, 12) and torch.equal(ds.storage, torch.from_numpy(x[:, :4]))
    assert ds.labels.tolist() == [0, 1, 1]
    np.save(tmp_path / "f.npy", x.astype(np.float32) / 255)  # floats in [0, 1]: back to the same 8 bits
    assert torch.equal(data.load(str(tmp_path / "f.npy"), frames=6).storage, torch.from_numpy(x))
    assert data.load(str(tmp_path / "v.npz"), frames=4, image_size=8).shape == (4, 1, 8, 8)
    with pytest.raises(DataError, match="6 frames, fewer than frames=16"):
        data.load(str(tmp_path / "v.npz"))
    np.save(tmp_path / "img.npy", x[:, 0])  # 4-D stays images
    assert data.load(str(tmp_path / "img.npy")).kind == "image"
    folder = tmp_path / "clips"
    folder.mkdir()
    np.save(folder / "a.npy", x)
    np.save(folder / "b.npy", x[:, :2])  # too short: skipped
    with pytest.warns(DataWarning, match=r"b\.npy.*2 frame"):
        ds = data.load(str(folder), frames=4)
    assert len(ds) == 3 and ds.shape == (4, 1, 12, 12)


def test_read_clips_for_prediction(tmp_path, heldout):
    (tmp_path / "one.gif").write_bytes(gif_bytes(_clip(7, seed=5), 8))
    x = dv.read_clips(str(tmp_path / "one.gif"))  # every frame
    assert x.dtype == torch.uint8 and x.shape == (1, 7, 1, 20, 20)
    assert torch.equal(x[0, :, 0], torch.from_numpy(_clip(7, seed=5)[..., 0]))
    assert dv.read_clips(str(tmp_path / "one.gif"), frames=3, image_size=10, channels=3).shape == (1, 3, 3, 10, 10)
    with pytest.raises(DataError, match=r"one\.gif: has 7 frame\(s\), fewer than the 9"):
        dv.read_clips(str(tmp_path / "one.gif"), frames=9)
    (tmp_path / "two.gif").write_bytes(gif_bytes(_clip(5, seed=6), 8))
    assert dv.read_clips(str(tmp_path)).shape == (2, 5, 1, 20, 20)  # a folder: cut to the shortest
    assert torch.equal(dv.read_clips("moving-digits:heldout", frames=2), heldout.storage[:, :2])
    with pytest.raises(DataError, match="no such file"):
        dv.read_clips(str(tmp_path / "missing.gif"))
