"""The mnist5k feature space (``metrics.mnist_features``): the classifier behind it reads digits,
its Frechet distance orders real < noisy real < noise with clear margins, the cache gives the
same numbers, and ``evaluate`` picks it for 1x28x28 images. The network trains once per test
session (about 40 s on one thread) into the session's cache folder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from undiffuse.metrics import evaluate as ev
from undiffuse.metrics import mnist_features as mf


def test_the_classifier_reads_the_digits_and_features_are_stable():
    x, y = mf.mnist_data()
    assert x.shape == (5000, 1, 28, 28) and x.min() == 0 and x.max() == 1
    net = mf._extractor()
    with torch.no_grad():
        pred = net(torch.as_tensor(x[:1000], dtype=torch.float64)).argmax(1).numpy()
    assert (pred == y[:1000]).mean() > 0.97
    a = mf.mnist_features(x[:64])
    mf._MEMO.clear()  # reload from the cache file: the same features
    b = mf.mnist_features(x[:64])
    assert a.shape == (64, 64) and np.array_equal(a, b)
    assert np.allclose(mf.mnist_features(x[:64], batch_size=7), a, atol=1e-12)


def test_frechet_distance_orders_real_noisy_and_noise():
    s = mf.calibration_scores(seed=0)
    assert s["halves"] < 3 and s["halves"] * 5 < s["noisy_real"] and s["noisy_real"] * 5 < s["noise"]


def test_evaluate_picks_mnist_for_28x28_and_rejects_other_shapes():
    x, _ = mf.mnist_data()
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(x))
    real, other = x[pick[:300]].astype(np.float64), x[pick[300:600]].astype(np.float64)
    good = ev.evaluate(real, other, kid_subsets=5, kid_subset_size=100)
    bad = ev.evaluate(rng.random(real.shape), other, kid_subsets=5, kid_subset_size=100)
    assert good["protocol"]["feature_space"] == "mnist" and "mnist5k" in good["protocol"]["features"]
    assert good["fd"] * 20 < bad["fd"]
    with pytest.raises(ev.EvaluationError, match=r"\(N, 1, 28, 28\)"):
        ev.evaluate(rng.random((10, 1, 8, 8)), rng.random((10, 1, 8, 8)), feature_space="mnist")
