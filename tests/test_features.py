"""Digits evaluation features (metrics/features.py) and the near-copy check (metrics/copies.py).

The feature extractor is trained once per session (a few seconds) into a pytest temp folder:
``UNDIFFUSE_CACHE`` always points into tmp dirs here, never at the home folder.
"""
import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from undiffuse.metrics import copies as copies_mod
from undiffuse.metrics import copy_pairs_grid, digits_classifier, digits_features, fd_digits, nearest_copies
from undiffuse.metrics import features as feat


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("undiffuse_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNDIFFUSE_CACHE", str(root))
        feat._MEMO.clear()
        yield root
    feat._MEMO.clear()


@pytest.fixture(autouse=True)
def _isolated_cache(cache_root):
    """Every test of this file runs with the session's temp cache (or its own, via monkeypatch)."""
    assert os.environ["UNDIFFUSE_CACHE"] == str(cache_root)
    yield
    feat._MEMO.clear()


@pytest.fixture(scope="session")
def extractor(cache_root):
    """Train the extractor once; returns its cache path, saved weights and training seconds."""
    assert not os.path.exists(feat.weights_path())
    t0 = time.time()
    feat._extractor()
    seconds = time.time() - t0
    path = feat.weights_path()
    return {"path": path, "state": load_file(path), "seconds": seconds}


@pytest.fixture(scope="session")
def digits():
    x, y = feat.digits_data()
    return x, y


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# feature extractor: training, cache


def test_cache_file_named_by_hash_and_reused_without_retraining(extractor, cache_root, monkeypatch):
    path = extractor["path"]
    assert os.path.dirname(path) == str(cache_root)
    assert feat._content_hash()[:20] in os.path.basename(path) and path.endswith(".safetensors")
    assert extractor["seconds"] < 30
    mtime = os.stat(path).st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("retrained although the cache file was valid")

    monkeypatch.setattr(feat, "_train", no_training)
    feat._MEMO.clear()  # force a load from disk, not the in-process memo
    net = digits_classifier()
    assert _same_state({k: v for k, v in net.state_dict().items()}, extractor["state"])
    assert os.stat(path).st_mtime_ns == mtime
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    # the returned classifier is a private copy: changing it leaves the features alone
    x, _ = feat.digits_data()
    before = digits_features(x[:5])
    with torch.no_grad():
        net.fc.weight.zero_()
    np.testing.assert_array_equal(digits_features(x[:5]), before)


def test_content_hash_changes_with_hyperparameters():
    import json

    other = dict(feat.HPARAMS, epochs=feat.HPARAMS["epochs"] + 1)
    assert feat._content_hash() != feat._content_hash(feat.RECIPE, json.dumps(other, sort_keys=True))
    assert feat._content_hash() != feat._content_hash("another-recipe")


def test_training_is_deterministic_and_restores_global_state(extractor, tmp_path, monkeypatch):
    monkeypatch.setenv("UNDIFFUSE_CACHE", str(tmp_path / "fresh"))
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    feat._MEMO.clear()
    feat._extractor()  # a second training, in a fresh cache folder (created on demand)
    assert os.path.dirname(feat.weights_path()) == str(tmp_path / "fresh")
    assert _same_state(load_file(feat.weights_path()), extractor["state"])
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file", "truncate", "wrong-keys"])
def test_corrupt_cache_file_is_retrained_and_replaced(extractor, tmp_path, monkeypatch, content):
    from safetensors.torch import save_file

    monkeypatch.setenv("UNDIFFUSE_CACHE", str(tmp_path))
    path = feat.weights_path()
    if content == "truncate":
        with open(extractor["path"], "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    elif content == "wrong-keys":
        save_file({"something": torch.zeros(3)}, path)
    else:
        with open(path, "wb") as f:
            f.write(content)
    calls = []
    stand_in = feat.DigitsNet(feat.HPARAMS["channels"], feat.HPARAMS["features"])  # cheap stand-in for training

    def fake_train(images, labels, hparams=feat.HPARAMS):
        calls.append(len(images))
        return stand_in.eval()

    monkeypatch.setattr(feat, "_train", fake_train)
    feat._MEMO.clear()
    with pytest.warns(RuntimeWarning, match="retraining"):
        net = digits_classifier()
    assert calls == [1797]
    assert _same_state(load_file(path), stand_in.state_dict())  # the file was overwritten
    assert _same_state(net.state_dict(), stand_in.state_dict())
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []  # atomic write left no temp file


def test_classifier_accuracy_and_logits(extractor, digits):
    x, y = digits
    net = digits_classifier()
    with torch.no_grad():
        logits = net(torch.as_tensor(x))
        flat = net(torch.as_tensor(x, dtype=torch.float64).reshape(-1, 64))
    assert logits.shape == (1797, 10)
    torch.testing.assert_close(flat, logits)
    assert (logits.argmax(1).numpy() == y).mean() > 0.98
    # gradients with respect to the input flow through the frozen net (for guidance-style checks)
    xi = torch.as_tensor(x[:4]).clone().requires_grad_(True)
    net(xi)[:, 3].sum().backward()
    assert xi.grad is not None and xi.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# features, Frechet distance


def test_features_shapes_dtypes_and_input_forms(extractor, digits):
    x, _ = digits
    f = digits_features(x[:50])
    assert f.shape == (50, feat.HPARAMS["features"]) and f.dtype == np.float64
    np.testing.assert_array_equal(digits_features(x[:50].reshape(50, 64)), f)
    np.testing.assert_array_equal(digits_features(x[:50, 0]), f)
    np.testing.assert_array_equal(digits_features(torch.as_tensor(x[:50], dtype=torch.float64)), f)
    np.testing.assert_allclose(digits_features(x[:50], batch_size=7), f, rtol=1e-10, atol=1e-10)


def test_fd_of_a_set_with_itself_is_zero(extractor, digits):
    x, _ = digits
    # exact up to the eigenvalue round-off of frechet_distance (the halves give ~1.2)
    assert abs(fd_digits(x)) < 1e-4
    assert abs(fd_digits(x[:500], reference=x[:500])) < 1e-4


def test_fd_calibration_ordering(extractor):
    # measured (seed 0): halves 1.16, noisy real 3.35, uniform noise 82.0 (see module docstring)
    s = feat.calibration_scores(seed=0)
    assert 0.5 < s["halves"] < 2.0
    assert 2.0 < s["noisy_real"] < 6.0
    assert 50 < s["noise"] < 130
    assert s["halves"] * 1.8 < s["noisy_real"] and s["noisy_real"] * 10 < s["noise"]


def test_fd_grows_with_pixel_noise(extractor, digits):
    x, _ = digits
    rng = np.random.default_rng(5)
    x = x[:600]
    fds = [fd_digits(np.clip(x + sd * rng.standard_normal(x.shape), 0, 1)) for sd in (0.05, 0.15, 0.3)]
    assert fds[0] < fds[1] < fds[2]


@pytest.mark.parametrize("images, match", [
    (np.zeros((4, 63)), r"expected shape \(N, 1, 8, 8\), \(N, 8, 8\) or \(N, 64\).*got \(4, 63\)"),
    (np.zeros((4, 3, 8, 8)), r"got \(4, 3, 8, 8\)"),
    (np.zeros((0, 64)), r"N >= 1, got \(0, 64\)"),
    (np.zeros(64), r"got \(64,\)"),
    (np.full((4, 64), 16.0), r"must be in \[0, 1\].*got values in \[16, 16\]"),
    (np.full((4, 64), -0.5), r"must be in \[0, 1\]"),
    (np.array([[np.nan] * 64, [0.5] * 64]), "non-finite"),
    (np.array([[np.inf] * 64, [0.5] * 64]), "non-finite"),
    (np.array([["a"] * 64]), "numeric"),
])
def test_feature_input_validation(images, match):
    # validation happens before the extractor is built: no training needed here
    with pytest.raises(ValueError, match=match):
        digits_features(images)


def test_tolerance_band_and_too_few_images(extractor, digits):
    x, _ = digits
    digits_features(np.clip(x[:3], 0, 1) * 1.01 - 0.005)  # within [-0.01, 1.01]: accepted
    with pytest.raises(ValueError, match="at least 2"):
        fd_digits(x[:1])
    with pytest.raises(ValueError, match="reference: need at least 2"):
        fd_digits(x[:10], reference=x[:1])
    with pytest.raises(ValueError, match=r"reference must be in \[0, 1\]"):
        fd_digits(x[:10], reference=x[:10] * 16)
    with pytest.raises(ValueError, match="samples contain non-finite"):
        fd_digits(np.full((3, 64), np.nan))


# ----------------------------------------------------------------------------------------------
# near copies


@pytest.fixture(scope="module")
def train_points():
    rng = np.random.default_rng(0)
    return rng.random((200, 1, 6, 6))  # 200 points in [0, 1]^36


def test_copies_with_tiny_noise_are_flagged(train_points):
    rng = np.random.default_rng(1)
    pick = rng.choice(len(train_points), 40, replace=False)
    samples = train_points[pick] + 1e-3 * rng.standard_normal((40, 1, 6, 6))
    r = nearest_copies(samples, train_points)
    assert r["copy_rate"] == 1.0 and r["copies"] == 40 and r["count"] == 40
    assert r["threshold"] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(r["index_train"], pick[r["index_sample"]])
    assert np.all(np.diff(r["ratio"]) >= 0) and r["ratio"].max() < 0.05


def test_far_points_are_not_flagged(train_points):
    far = np.random.default_rng(2).random((30, 36)) + 3.0  # flattened input works too
    r = nearest_copies(far, train_points)
    assert r["copy_rate"] == 0.0 and r["copies"] == 0 and r["ratio"].min() > 1


def test_fresh_draws_from_the_same_distribution_are_not_flagged(train_points):
    fresh = np.random.default_rng(3).random((100, 1, 6, 6))
    assert nearest_copies(fresh, train_points)["copy_rate"] == 0.0


def test_mixed_set_gives_exact_fraction(train_points):
    rng = np.random.default_rng(4)
    pick = rng.choice(len(train_points), 30, replace=False)
    copies = train_points[pick] + 1e-4 * rng.standard_normal((30, 1, 6, 6))
    far = rng.random((70, 1, 6, 6)) + 2.0
    samples = np.concatenate([far[:35], copies, far[35:]])  # copies at sample indices 35..64
    r = nearest_copies(samples, train_points, batch_size=16)  # chunked path
    assert r["copies"] == 30 and r["copy_rate"] == pytest.approx(0.3) and r["count"] == 100
    flagged = r["index_sample"][:30]
    assert sorted(flagged.tolist()) == list(range(35, 65))
    np.testing.assert_array_equal(r["index_train"][:30], pick[flagged - 35])
    assert sorted(r["index_sample"].tolist()) == list(range(100))


def test_ratio_is_distance_over_training_spacing(train_points):
    """Samples placed at a known fraction of the matched training image's own NN spacing."""
    t = train_points.reshape(len(train_points), -1)
    d = np.linalg.norm(t[:, None] - t[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    spacing = d.min(1)
    rng = np.random.default_rng(5)
    j = np.arange(10)
    u = rng.standard_normal((10, 36))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    alpha = np.array([0.1, 0.2, 0.3, 0.32, 0.33, 0.34, 0.36, 0.4, 0.45, 0.49])  # < 1/2: NN stays j
    samples = t[j] + (alpha * spacing[j])[:, None] * u
    r = nearest_copies(samples, train_points)
    np.testing.assert_array_equal(r["index_sample"], j)  # alpha ascending = ratio ascending
    np.testing.assert_array_equal(r["index_train"], j)
    np.testing.assert_allclose(r["ratio"], alpha, rtol=1e-9)
    assert r["copies"] == 5  # 0.1 .. 0.33 are below 1/3
    assert nearest_copies(samples, train_points, threshold=0.44)["copies"] == 8


def test_exact_duplicates_in_train_do_not_hide_copies(train_points):
    train = np.concatenate([train_points, train_points[:5]])  # rows 200..204 duplicate rows 0..4
    r = nearest_copies(train_points[:5], train)
    assert r["copy_rate"] == 1.0 and np.all(r["ratio"] == 0)
    with pytest.raises(ValueError, match="2 distinct"):
        nearest_copies(np.zeros((2, 4)), np.ones((3, 4)))


def test_copies_input_validation(train_points):
    with pytest.raises(ValueError, match="same number of values"):
        nearest_copies(np.zeros((3, 35)), train_points)
    with pytest.raises(ValueError, match="non-finite"):
        nearest_copies(np.full((3, 36), np.nan), train_points)
    with pytest.raises(ValueError, match="threshold"):
        nearest_copies(train_points[:3], train_points, threshold=0)


def test_copy_pairs_grid_layout(train_points):
    rng = np.random.default_rng(6)
    pick = rng.choice(len(train_points), 6, replace=False)
    samples = np.clip(train_points[pick] + 0.01 * rng.standard_normal((6, 1, 6, 6)), 0, 1)
    r = nearest_copies(samples, train_points)
    g = copy_pairs_grid(samples, train_points, r, k=5, ncol=2)
    h = w = 6
    assert g.shape == (2 + 3 * (h + 2), 2 + 2 * (2 * w + 1 + 2)) and g.min() >= 0 and g.max() <= 1
    first_s, first_t = r["index_sample"][0], r["index_train"][0]
    np.testing.assert_array_equal(g[2:2 + h, 2:2 + w], samples[first_s, 0])
    np.testing.assert_array_equal(g[2:2 + h, 2 + w + 1:2 + 2 * w + 1], train_points[first_t, 0])
    rgb = copy_pairs_grid(np.repeat(samples, 3, 1), np.repeat(train_points, 3, 1), r, k=16)
    assert rgb.ndim == 3 and rgb.shape[2] == 3  # k is capped at the number of samples
    assert copies_mod.copy_pairs_grid is copy_pairs_grid
