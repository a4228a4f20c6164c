"""Video end to end from the command line: train on moving digits, sample GIFs and arrays, predict
and interpolate with the given frames kept exactly; bad input exits 2 with the value named."""
import json

import numpy as np
import pytest
from _cli import main_code, run_main

from undiffuse.io.video import read_gif

VIDEO_TINY = ["--set", "model.channels=8", "--set", "model.channel_mult=[1,2]", "--set", "model.attention_levels=[1]",
              "--set", "model.temporal_attention_levels=[1]", "--set", "model.head_channels=8", "--set",
              "model.groups=8", "--set", "optim.batch_size=2", "--set", "train.sample_count=2", "--set",
              "sample.steps=2", "--set", "train.tensorboard=false", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-step class-conditional run on 4-frame moving digits."""
    out = tmp_path_factory.mktemp("video") / "run"
    assert main_code(["train", "--data", "moving-digits", "--frames", "4", "--conditioning", "class", "--no-latent",
                      "--max-steps", "2", "--out", str(out), *VIDEO_TINY]) == 0
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three real 6-frame clips in [0, 1] as an npz (what `sample --format npz` writes)."""
    from undiffuse.data.video import read_clips
    x = read_clips("moving-digits:heldout", frames=6)[:3].numpy() / 255.0
    path = tmp_path_factory.mktemp("clips") / "real.npz"
    np.savez(path, samples=x)
    return path, x


def test_train_records_the_clip_shape_and_samples_gifs(run, tmp_path, capsys):
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["kind"] == "video_unet" and cfg["data"]["frames"] == 4 and cfg["model"]["max_frames"] == 4
    assert any((run / "samples").iterdir())  # the frame strip of the run
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--class", "3 and 7", "--num", "2",
                             "--out", str(tmp_path / "gifs"), "--no-progress"], capsys)
    assert code == 0, err
    frames, fps, meta = read_gif(str(tmp_path / "gifs" / "000001.gif"))
    assert frames.shape == (4, 32, 32, 1) and fps == 8
    assert meta["parameters"]["class"] == "3 and 7" and meta["parameters"]["seed"] == 1
    assert (tmp_path / "gifs" / "strip.png").is_file()
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--class", "all", "--num", "3", "--format", "npz",
                             "--out", str(tmp_path / "s.npz"), "--no-progress"], capsys)
    assert code == 0, err
    d = np.load(tmp_path / "s.npz")
    assert d["samples"].shape == (3, 4, 1, 32, 32) and 0 <= d["samples"].min() and d["samples"].max() <= 1
    assert d["labels"].tolist() == [0, 21, 43]  # classes spread evenly over the 65


def test_predict_keeps_the_context_and_scores_the_future(run, clips, tmp_path, capsys):
    path, x = clips
    code, out, err = run_main(["predict", "--checkpoint", str(run), "--video", str(path), "--context", "2",
                               "--frames", "4", "--format", "npz", "--out", str(tmp_path / "p.npz")], capsys)
    assert code == 0, err
    d = np.load(tmp_path / "p.npz")
    assert d["samples"].shape == (3, 6, 1, 32, 32)  # 2 given + 4 predicted in two windows of the 4-frame run
    np.testing.assert_allclose(d["samples"][:, :2], x[:, :2], rtol=0, atol=1e-6)
    assert not np.allclose(d["samples"][:, 2:], x[:, 2:], atol=0.05)  # an untrained model does not know the future
    np.testing.assert_allclose(d["truth"], x, atol=1e-6)
    scores = json.loads(out)["prediction"]
    assert scores["horizon"] == [1, 2, 3, 4] and len(scores["psnr"]) == 4 and len(scores["copy_last_ssim"]) == 4
    assert json.loads(str(d["parameters"]))["context"] == 2


def test_interpolate_keeps_both_ends(run, clips, tmp_path, capsys):
    path, x = clips
    code, _, err = run_main(["interpolate", "--checkpoint", str(run), "--video", str(path), "--index", "1",
                             "--missing", "1:3", "--format", "npz", "--out", str(tmp_path / "i.npz")], capsys)
    assert code == 0, err
    y = np.load(tmp_path / "i.npz")["samples"]
    assert y.shape == (1, 4, 1, 32, 32)
    np.testing.assert_allclose(y[0, [0, 3]], x[1, [0, 3]], rtol=0, atol=1e-6)
    code, _, err = run_main(["interpolate", "--checkpoint", str(run), "--video", "moving-digits:heldout",
                             "--index", "5", "--out", str(tmp_path / "gifs")], capsys)
    assert code == 0, err
    frames, _, meta = read_gif(str(tmp_path / "gifs" / "000000.gif"))
    assert frames.shape == (4, 32, 32, 1) and meta["parameters"]["missing"] == "1:3"


def test_bad_video_input_is_a_usage_error(run, clips, tmp_path, capsys):
    path, x = clips
    short, small, broken = tmp_path / "short.npz", tmp_path / "small.npz", tmp_path / "broken.gif"
    np.savez(short, samples=x[:, :1])
    np.savez(small, samples=x[:, :, :, :16, :16])
    broken.write_bytes(b"GIF89a not really")
    cases = [
        (["predict", "--video", str(short), "--context", "2", "--frames", "2"], "fewer than --context 2"),
        (["predict", "--video", str(path), "--context", "4", "--frames", "2"], "at most 3 can be given"),
        (["predict", "--video", str(small), "--context", "2", "--frames", "2"], "(C, H, W) = (1, 32, 32)"),
        (["predict", "--video", str(broken), "--context", "2", "--frames", "2"], "broken.gif"),
        (["predict", "--video", str(path), "--index", "7", "--context", "2", "--frames", "2"], "clips 0..2"),
        (["interpolate", "--video", str(path), "--missing", "0:4"], "--missing '0:4'"),
        (["interpolate", "--video", str(path), "--missing", "2-3"], "START:END"),
    ]
    for args, message in cases:
        code, _, err = run_main([args[0], "--checkpoint", str(run), *args[1:], "--out", str(tmp_path / "x")], capsys)
        assert code == 2 and message in err, (args, err)
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--format", "wav", "--out", str(tmp_path / "w")],
                            capsys)
    assert code == 2 and "--format wav writes sound" in err and "use --format gif or npz" in err


def test_server_answers_video_runs_with_gifs(run, tmp_path, capsys):
    """The HTTP server samples a video run like `sample` does: a GIF whose frames equal the CLI's,
    JSON with base64 GIFs, and a clear error for picture formats."""
    pytest.importorskip("uvicorn")
    import base64
    import shutil

    from test_serve import call

    from undiffuse.serve import create_app
    from undiffuse.serve.background import BackgroundServer
    folder = tmp_path / "models"
    shutil.copytree(run, folder / "clips")
    with BackgroundServer(create_app(str(folder))) as srv:
        status, ctype, body = call(srv.url, "/v1/generate", {"model": "clips", "class": "5", "steps": 2, "seed": 3,
                                                             "format": "gif"})
        assert status == 200 and ctype == "image/gif", body[:200]
        frames, fps, meta = read_gif(body)
        assert frames.shape == (4, 32, 32, 1) and fps == 8 and meta["provenance"]["class"] == "5"
        status, _, body = call(srv.url, "/v1/generate", {"model": "clips", "steps": 2, "count": 2})
        items = json.loads(body)["images"]
        assert status == 200 and len(items) == 2 and read_gif(base64.b64decode(items[1]["gif"]))[0].shape == frames.shape
        status, _, body = call(srv.url, "/v1/generate", {"model": "clips", "format": "png"})
        assert status == 400 and "makes videos, not images; use format 'gif' or 'json'" in body.decode()
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--class", "5", "--num", "1", "--seed", "3",
                             "--steps", "2", "--out", str(tmp_path / "cli"), "--no-progress"], capsys)
    assert code == 0, err
    assert np.array_equal(read_gif(str(tmp_path / "cli" / "000000.gif"))[0], frames)


def test_latent_route_encodes_frames_and_keeps_given_frames(clips, tmp_path, capsys):
    """train --latent on clips: a per-frame autoencoder, then the space-time U-Net on its latents;
    samples decode to clips and prediction keeps the given frames themselves."""
    from undiffuse.data.video import read_clips
    data, out = tmp_path / "clips.npz", tmp_path / "lat"
    np.savez(data, samples=read_clips("moving-digits", frames=8)[:40].numpy())  # 40 clips of 8 frames, uint8
    code, _, err = run_main(["train", "--data", str(data), "--frames", "4", "--latent", "--max-steps", "3",
                             "--out", str(out), *VIDEO_TINY], capsys)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "video-latent" and cfg["latent"]["autoencoder"] == str(out / "autoencoder")
    ae = json.loads((out / "autoencoder" / "autoencoder.json").read_text())
    assert ae["image_shape"] == [1, 32, 32] and ae["data"]["size"] == 40  # every 4th frame of the 4-frame clips
    path, x = clips
    code, _, err = run_main(["predict", "--checkpoint", str(out), "--video", str(path), "--index", "0",
                             "--context", "2", "--frames", "2", "--format", "npz", "--out", str(tmp_path / "p.npz")],
                            capsys)
    assert code == 0, err
    y = np.load(tmp_path / "p.npz")["samples"]
    assert y.shape == (1, 4, 1, 32, 32)
    np.testing.assert_allclose(y[0, :2], x[0, :2], rtol=0, atol=1e-6)


def test_moving_digits_takes_the_latent_route_by_default():
    from undiffuse import data
    from undiffuse.cli import train
    assert train._latent_by_default(data.load("moving-digits", frames=4))
    assert not train._latent_by_default(data.load("digits"))
