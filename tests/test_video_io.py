"""Video files (``undiffuse.io.video``) and the ``gif`` writer: GIF round trips bit for bit with
its metadata, MP4 carries its metadata, the frame strip's layout, and ``write_samples``."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from undiffuse.io import watermark as wm
from undiffuse.io import writers
from undiffuse.io.video import frame_times, gif_bytes, mp4_available, mp4_bytes, read_gif, read_mp4, strip


def _grey(t=16, h=12, w=10, seed=0) -> np.ndarray:
    clip = np.random.default_rng(seed).integers(0, 256, (t, h, w, 1), dtype=np.uint8)
    clip[3] = clip[2]  # equal consecutive frames must stay two frames
    return clip


def test_gif_round_trip_is_exact_for_grey_with_metadata(tmp_path):
    clip, meta = _grey(), {"parameters": {"sampler": "heun", "steps": 18}, "fps": 8, "text": "a 3\nand a 7"}
    data = gif_bytes(clip, 8, meta, title="sampler: heun,\nsteps: 18")
    path = tmp_path / "a.gif"
    path.write_bytes(data)
    back, fps, got = read_gif(str(path))
    assert back.dtype == np.uint8 and back.shape == clip.shape and np.array_equal(back, clip)
    assert fps == 8.0 and got == meta
    with Image.open(path) as img:  # any reader: loops forever, the title line first in the comment
        assert img.n_frames == 16 and img.info["loop"] == 0
        assert img.info["comment"].decode().startswith("sampler: heun, steps: 18\n")
    assert frame_times(4, 8) == [13, 12, 13, 12] and sum(frame_times(16, 8)) == 200


def test_gif_colour_exact_up_to_256_colours_and_quantised_beyond():
    rng = np.random.default_rng(1)
    few = rng.integers(0, 4, (5, 8, 8, 3), dtype=np.uint8) * 60  # 64 colours
    back, _, meta = read_gif(gif_bytes(few, 10))
    assert np.array_equal(back, few) and meta == {}
    many = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    back, _, _ = read_gif(gif_bytes(many, 10))
    assert back.shape == many.shape and np.abs(back.astype(int) - many).mean() < 20  # lossy, but close
    with pytest.raises(ValueError, match="uint8"):
        gif_bytes(few.astype(np.float32), 10)


@pytest.mark.skipif(not mp4_available(), reason="PyAV (the video extra) is not installed")
def test_mp4_carries_metadata():
    clip = np.zeros((6, 15, 17, 1), np.uint8)  # odd sizes are padded
    clip[:, 4:10, 4:10] = 180
    meta = {"parameters": {"sampler": "euler"}, "provenance": {"seed": 3}}
    frames, fps, got = read_mp4(mp4_bytes(clip, 8, meta, title="sampler: euler"))
    assert got == meta and fps == 8 and frames.shape == (6, 16, 18, 3)
    assert np.abs(frames[:, :15, :17, 0].astype(int) - clip[..., 0]).mean() < 4


def test_strip_layout():
    v = np.zeros((2, 3, 4, 5, 1), np.uint8)
    for i in range(2):
        for t in range(3):
            v[i, t] = 10 * i + t
    s = strip(v)
    assert s.shape == (2 * 5 + 1, 3 * 6 + 1, 1)
    assert (s[0] == 255).all() and (s[:, 0] == 255).all() and (s[5] == 255).all()  # 1-px white separators
    for i in range(2):
        for t in range(3):
            block = s[1 + i * 5: 1 + i * 5 + 4, 1 + t * 6: 1 + t * 6 + 5]
            assert (block == 10 * i + t).all()
    long = np.arange(20, dtype=np.uint8).repeat(4).reshape(1, 20, 2, 2, 1)
    s = strip(long, max_frames=4)
    assert s.shape == (4, 4 * 3 + 1, 1) and [int(s[1, 1 + 3 * k, 0]) for k in range(4)] == [0, 6, 13, 19]


def test_write_samples_gif(tmp_path):
    x = np.stack([_grey(t=5, h=16, w=16, seed=s) for s in range(3)]).transpose(0, 1, 4, 2, 3) / 255.0
    records = [{"model": "m", "model_sha256": "ab" * 32, "seed": 10 + k} for k in range(3)]
    out = writers.write_samples(x, str(tmp_path / "s"), format="gif", seed=10, params={"sampler": "heun"},
                                per_sample=[{"class": str(k)} for k in range(3)], records=records, fps=10,
                                mp4=mp4_available())
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    want = ["000000.gif", "000001.gif", "000002.gif", "strip.png"]
    if mp4_available():
        want = sorted(want + ["000000.mp4", "000001.mp4", "000002.mp4"])
    assert names == want
    clip, fps, meta = read_gif(str(tmp_path / "s" / "000001.gif"))
    assert np.array_equal(clip, _grey(t=5, h=16, w=16, seed=1)) and fps == 10.0
    assert meta["parameters"] == {"sampler": "heun", "class": "1", "seed": 11} and meta["fps"] == 10
    assert meta["provenance"]["seed"] == 11 and meta["provenance"]["watermark"] == "too small"
    assert out.items[1].path == str(tmp_path / "s" / "000001.gif")
    with Image.open(tmp_path / "s" / "strip.png") as img:
        assert img.size == (2 * (5 * 17 + 1), 2 * (3 * 17 + 1))  # 3 rows of 5 frames, upscaled twice
        assert "seed: 10..12" in img.text["parameters"] and json.loads(img.text["undiffuse"])["fps"] == 10
    if mp4_available():
        assert read_mp4(str(tmp_path / "s" / "000002.mp4"))[2]["parameters"]["seed"] == 12
    with pytest.raises(ValueError, match="format 'gif' writes videos"):
        writers.write_samples(x[:, 0], None, format="gif")


def test_gif_frames_carry_the_watermark_from_64_px():
    clip = np.zeros((2, 3, 1, 64, 64))
    clip[:, :, :, 16:48, 20:44] = 0.8
    rec = {"model_sha256": "cd" * 32}
    out = writers.write_samples(clip, None, format="gif", records=[rec, rec], grid=False)
    frames, _, meta = read_gif(out.items[0].data)
    assert meta["provenance"]["watermark"] == "embedded"
    assert wm.detect(frames[1], expected=wm.payload_of("cd" * 32))["payload_matches"]


def test_write_npz_keeps_videos(tmp_path):
    x = np.random.default_rng(0).random((2, 4, 1, 8, 8)).astype(np.float32)
    writers.write_samples(x, str(tmp_path / "v.npz"), format="npz", params={"sampler": "heun"})
    with np.load(tmp_path / "v.npz") as z:
        assert np.array_equal(z["samples"], x) and json.loads(str(z["parameters"]))["count"] == 2
