"""Video metrics (``metrics.video``) checked against the truth: SSIM against scikit-image, PSNR
by hand, the bouncing fit on exact bouncing tracks, motion near 0 on exactly bouncing clips and
on real moving-digits clips and high once their frames are shuffled, identity 1 on clean clips
and lower when frames change digit, Frechet distances of a set with itself near 0; and the
routing of clips through ``evaluate`` and ``undiffuse evaluate``.

The three feature networks (mnist5k features, frame reader, clip classifier) are trained here
in tiny configurations on small synthetic sets (a few seconds in all), in a cache folder of
this module's own; the real recipes' held-out accuracies are what ``reader_accuracy`` and
``clip_classifier_accuracy`` measure (a minute or so of training each)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _cli import run_main
from skimage.metrics import structural_similarity

from undiffuse import data
from undiffuse.data.video import bounce
from undiffuse.metrics import evaluate as ev
from undiffuse.metrics import mnist_features as mf
from undiffuse.metrics import video as mv
from undiffuse.metrics import video_features as vf

SIZE, BOX, T = 32, 14, 16
SPAN = SIZE - BOX


@pytest.fixture(scope="module")
def digits():
    """Two 14-px images each of the digits 0, 1 and 7 from mnist5k (float64 (2, 14, 14) per digit)."""
    x, y = mf.mnist_data()
    out = {}
    for d in (0, 1, 7):
        imgs = torch.as_tensor(x[np.nonzero(y == d)[0][:2]], dtype=torch.float64)
        out[d] = F.interpolate(imgs, size=(BOX, BOX), mode="bilinear", antialias=True)[:, 0].clamp(0, 1).numpy()
    return out


def render(images, paths) -> np.ndarray:
    """A clip (T, 1, 32, 32): each (14, 14) image pasted at its integer top-left path (T, 2), max-combined."""
    clip = np.zeros((len(paths[0]), 1, SIZE, SIZE))
    for img, path in zip(images, paths):
        for t, (r, c) in enumerate(np.asarray(path).round().astype(int)):
            clip[t, 0, r:r + BOX, c:c + BOX] = np.maximum(clip[t, 0, r:r + BOX, c:c + BOX], img)
    return clip


def integer_path(rng) -> np.ndarray:
    """An exact bouncing path with integer start and velocity: every position is an integer."""
    p0 = rng.integers(0, SPAN + 1, 2)
    v = rng.choice([-2, -1, 1, 2], 2)
    return bounce(p0, v, T, 0, SPAN)  # (T, 2)


def one_digit_clips(digits, labels, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([render([digits[d][rng.integers(2)]], [integer_path(rng)]) for d in labels])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, digits):
    """All three networks in tiny configurations, trained on synthetic clips of 0s and 1s, cached
    in a folder of this module's own."""
    mp = pytest.MonkeyPatch()
    mp.setenv("UNDIFFUSE_CACHE", str(tmp_path_factory.mktemp("video_cache")))
    for key, value in {"channels": 4, "features": 16, "epochs": 1}.items():
        mp.setitem(mf.HPARAMS, key, value)
    labels = np.arange(96) % 2  # digit sets "0" and "1"
    clips = one_digit_clips(digits, labels, seed=1)
    frames = torch.as_tensor(clips[:, ::2].reshape(-1, 1, SIZE, SIZE), dtype=torch.float32)
    mp.setattr(vf, "reader_data", lambda split="moving-digits", hp=None: (frames, np.repeat(labels, T // 2)))
    strips = torch.as_tensor(clips.reshape(len(clips), 1, -1, SIZE), dtype=torch.float32)
    mp.setattr(vf, "clip_data", lambda split="moving-digits", hp=None: (strips, labels * vf.DIRECTIONS))
    mp.setattr(vf, "_data_digest", lambda split, settings: "synthetic 0s and 1s")
    for hp, new in ((vf.READER_HPARAMS, {"channels": 4, "features": 16, "epochs": 8, "batch": 32, "lr": 1e-2}),
                    (vf.CLIP_HPARAMS, {"channels": 4, "features": 16, "epochs": 1, "batch": 16})):
        for key, value in new.items():
            mp.setitem(hp, key, value)
    for memo in (mf._MEMO, vf._MEMO_READER, vf._MEMO_CLIP, vf._PATHS, vf._DIGESTS):
        memo.clear()
    yield clips, labels
    for memo in (mf._MEMO, vf._MEMO_READER, vf._MEMO_CLIP, vf._PATHS, vf._DIGESTS):
        memo.clear()
    mp.undo()


# ------------------------------------------------------------------------------------------------
# prediction scores


def test_ssim_matches_scikit_image_and_psnr_the_formula():
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 1, 20, 24))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    ours = mv.ssim(a, b)
    ref = [[structural_similarity(a[i, t, 0], b[i, t, 0], gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, data_range=1.0) for t in range(3)] for i in range(2)]
    assert ours.shape == (2, 3) and np.abs(ours - np.array(ref)).max() < 1e-4
    c, d = rng.random((2, 3, 16, 16)), rng.random((2, 3, 16, 16))  # three channels: the channel mean
    ref = [structural_similarity(c[i], d[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=0) for i in range(2)]
    assert np.abs(mv.ssim(c, d) - np.array(ref)).max() < 1e-4
    assert np.allclose(mv.ssim(a, a), 1.0)
    assert np.allclose(mv.psnr(a, b), 10 * np.log10(1 / ((a - b) ** 2).mean((2, 3, 4))))
    assert np.all(mv.psnr(a, a) == mv.PSNR_CAP)
    with pytest.raises(ValueError, match="at least 11x11"):
        mv.ssim(a[..., :10, :], b[..., :10, :])


def test_prediction_scores_per_horizon_with_the_copy_last_baseline():
    rng = np.random.default_rng(1)
    truth = rng.random((3, 6, 1, 16, 16))
    pred = np.clip(truth + 0.1 * rng.standard_normal(truth.shape), 0, 1)
    out = mv.prediction_scores(pred, truth, context=2)
    assert out["horizon"] == [1, 2, 3, 4] and out["context"] == 2 and out["clips"] == 3
    for h in range(4):
        t = 2 + h
        mse = ((pred[:, t] - truth[:, t]) ** 2).mean((1, 2, 3))
        assert out["psnr"][h] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-12)
        copy_mse = ((truth[:, 1] - truth[:, t]) ** 2).mean((1, 2, 3))
        assert out["copy_last_psnr"][h] == pytest.approx(np.mean(10 * np.log10(1 / copy_mse)), rel=1e-12)
        ssim = [structural_similarity(truth[i, 1, 0], truth[i, t, 0], gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=1.0) for i in range(3)]
        assert out["copy_last_ssim"][h] == pytest.approx(np.mean(ssim), abs=1e-4)
    assert mv.prediction_scores(pred[:, 2:], truth, context=2) == out  # the future frames alone
    copy = np.concatenate([truth[:, :2], np.repeat(truth[:, 1:2], 4, 1)], 1)
    same = mv.prediction_scores(copy, truth, context=2)
    assert same["psnr"] == same["copy_last_psnr"] and same["ssim"] == same["copy_last_ssim"]
    with pytest.raises(ValueError, match="context must be an integer from 1 to 5"):
        mv.prediction_scores(pred, truth, context=6)
    with pytest.raises(ValueError, match="expected the whole clips"):
        mv.prediction_scores(pred[:, 1:], truth, context=2)


# ------------------------------------------------------------------------------------------------
# motion


def test_fit_bounce_recovers_an_exact_bouncing_path():
    lo, a, v = 5.2, 3.3, 1.7
    truth = lo + bounce(a, v, 24, 0.0, 18.0)[None]  # (1, 24): bounces twice
    path, params = mv.fit_bounce(truth, 18.0, (0.0, 14.0), 4.0)
    assert np.abs(path - truth).max() < 1e-9
    assert params["lo"][0] == pytest.approx(lo) and params["v"][0] == pytest.approx(v)
    y = truth.copy()
    y[0, 5] = np.nan  # a missing frame is skipped
    assert np.abs(mv.fit_bounce(y, 18.0, (0.0, 14.0), 4.0)[0] - truth).max() < 1e-9


def test_motion_is_zero_on_exact_bouncing_clips_and_high_once_frames_are_shuffled(digits):
    clips = one_digit_clips(digits, [0, 1, 7, 0, 1, 7], seed=2)
    res = mv.motion_residuals(clips, counts=np.ones(6, int))
    assert np.all(res["residual"] < 1e-6)
    rng = np.random.default_rng(0)
    shuffled = np.stack([c[rng.permutation(T)] for c in clips])
    assert mv.motion(shuffled, counts=np.ones(6, int)) > 2.0
    blank = clips.copy()
    blank[0] = 0  # nothing to track: reported as NaN, left out of the mean
    res = mv.motion_residuals(blank, counts=np.ones(6, int))
    assert np.isnan(res["residual"][0]) and np.all(res["residual"][1:] < 1e-6)
    with pytest.raises(ValueError, match="counts must give 1 or 2"):
        mv.motion(clips, counts=np.full(6, 3))


def test_on_real_moving_digits_tracks_match_the_truth_and_motion_is_near_zero():
    ds = data.load("moving-digits:heldout", image_size=SIZE, frames=T)
    assert vf.SET_NAMES == ds.class_names and np.array_equal(vf.set_index(ds.digits), ds.labels.numpy())
    x = ds.to_unit(ds.get(slice(0, 160))).numpy().astype(np.float64)
    counts = 1 + (ds.digits[:160, 1].numpy() >= 0)
    one = counts == 1
    cent = mv.track(x, counts, threshold=0.0)
    assert np.abs(cent[one, :, 0] - ds.centroids[:160].numpy()[one, :, 0]).max() < 0.05  # intensity centroids
    res = mv.motion_residuals(x, counts)["residual"]
    assert np.nanmean(res[one]) < 0.1 and np.nanmax(res[one]) < 0.5
    assert np.nanmean(res[~one]) < 1.5  # overlapping digits bias the 2-means tracks
    rng = np.random.default_rng(0)
    shuffled = mv.motion_residuals(np.stack([c[rng.permutation(T)] for c in x]), counts)["residual"]
    assert np.nanmean(shuffled[one]) > 3 and np.nanmean(shuffled[~one]) > 3


# ------------------------------------------------------------------------------------------------
# identity, Frechet distances, evaluate


def test_identity_is_one_on_clean_clips_and_drops_when_frames_change_digit(tiny, digits):
    clips = one_digit_clips(digits, [0, 1] * 4, seed=3)
    labels = np.array([0, 1] * 4)
    assert mv.identity(clips) == 1.0 and mv.identity(clips, strict=False) == 1.0
    assert mv.identity(clips, labels) == 1.0 and mv.adherence(clips, labels) == 1.0
    assert mv.identity(clips, [str(k) for k in 1 - labels]) == 0.0 and mv.adherence(clips, 1 - labels) == 0.0
    swapped = clips.copy()
    swapped[:4, 5:9] = clips[4:, 5:9][[1, 0, 3, 2]]  # clips 0-3: four frames show the other digit
    assert mv.identity(swapped) == 0.5 and mv.identity(swapped, strict=False) == 0.5
    assert (mv.read_sets(swapped)[:4, 5:9] == 1 - labels[:4, None]).all()
    with pytest.raises(ValueError, match="not moving-digits classes"):
        mv.identity(clips, ["3 and 3"] * 7 + ["x"])


def test_frechet_distances_of_a_set_with_itself_are_zero(tiny, digits):
    clips, _ = tiny
    a, b = clips[:32], clips[32:64]
    assert abs(mv.per_frame_fd(a, a)) < 1e-6 and abs(mv.clip_fd(a, a)) < 1e-6
    noisy = np.clip(a + 0.3 * np.random.default_rng(0).standard_normal(a.shape), 0, 1)
    assert mv.per_frame_fd(a, noisy) > 10 * max(mv.per_frame_fd(a, b), 1e-3)
    assert mv.clip_fd(a, noisy) > mv.clip_fd(a, b)
    # the per-frame FD is the mnist FD of the frames resized to 28x28
    frames = F.interpolate(torch.as_tensor(a.reshape(-1, 1, SIZE, SIZE)), size=(28, 28), mode="bilinear",
                           antialias=True).numpy()
    assert mv.per_frame_fd(a, noisy) == pytest.approx(
        mf.fd_mnist(frames, mv._frames_28(noisy)), rel=1e-9)
    with pytest.raises(ValueError, match="greyscale"):
        mv.per_frame_fd(np.repeat(a, 3, 2), a)


def test_evaluate_routes_clips_to_the_video_scores_and_the_cli_prints_them(tiny, tmp_path, capsys):
    clips, labels = tiny
    out = ev.evaluate(clips[:24], clips[24:48], labels=labels[:24])
    for key in ("fd", "clip_fd", "identity", "identity_tolerant", "identity_frames", "adherence", "motion",
                "motion_one", "reference"):
        assert key in out, key
    assert out["identity"] == out["reference"]["identity"] == 1.0 and out["adherence"] == 1.0
    assert out["motion"] < 1e-6 and out["protocol"]["feature_space"] == "video"
    with pytest.raises(ev.EvaluationError, match="does not read clips"):
        ev.evaluate(clips[:24], clips[24:48], feature_space="mnist")
    samples, reference = tmp_path / "samples.npz", tmp_path / "reference.npz"
    np.savez(samples, samples=clips[:24].astype(np.float32), labels=labels[:24])
    np.savez(reference, videos=(clips[24:48] * 255).round().astype(np.uint8))
    code, stdout, err = run_main(["evaluate", str(samples), "--reference", str(reference), "--json"], capsys)
    assert code == 0, err
    got = json.loads(stdout)
    assert got["identity"] == 1.0 and got["adherence"] == 1.0 and got["protocol"]["samples"] == 24
    code, stdout, _ = run_main(["evaluate", str(samples), "--reference", str(reference)], capsys)
    assert code == 0 and "clip FD" in stdout and "identity" in stdout and "motion" in stdout
