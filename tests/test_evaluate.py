import json

import numpy as np
import pytest

from undiffuse.cli import main
from undiffuse.metrics.evaluate import EvaluationError, evaluate, load_set


def _digits01():
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).reshape(-1, 1, 8, 8)


def test_suite_on_real_halves_and_noise():
    real = _digits01()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(real))
    a, b = real[perm[:900]], real[perm[900:]]
    same = evaluate(a, b, kid_subsets=20, kid_subset_size=500)
    noise = evaluate(rng.random((900, 1, 8, 8)), b, kid_subsets=20, kid_subset_size=500)
    assert same["protocol"]["feature_space"] == "digits" and same["protocol"]["samples"] == 900
    assert same["fd"] < 3 < 30 < noise["fd"]
    assert abs(same["kid"]) < 1 < 50 < noise["kid"]  # unbiased: about 0 (either sign) for the same law
    assert same["precision"] > 0.9 and same["recall"] > 0.9 and 0.9 < same["density"] < 1.2
    assert noise["precision"] < 0.3 and noise["recall"] < 0.1 and noise["coverage"] < 0.1
    assert same["copies"] == 0  # disjoint halves of real data are not copies of each other


def test_planted_copies_are_found():
    real = _digits01()
    rng = np.random.default_rng(1)
    fresh = rng.random((50, 1, 8, 8)) * 0.3
    planted = np.clip(real[rng.choice(len(real), 30, replace=False)] + rng.normal(0, 0.01, (30, 1, 8, 8)), 0, 1)
    res = evaluate(np.concatenate([fresh, planted]), real, kid_subsets=5, kid_subset_size=50)
    assert res["copies"] == 30 and res["copy_rate"] == pytest.approx(30 / 80)


def test_pixels_space_for_vectors_and_bad_input():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    res = evaluate(x, y, kid_subsets=10, kid_subset_size=100)
    assert res["protocol"]["feature_space"] == "pixels" and res["fd"] < 0.1
    with pytest.raises(EvaluationError, match=r"items of shape \(2,\) but the reference has \(3,\)"):
        evaluate(x, rng.normal(size=(300, 3)))
    with pytest.raises(EvaluationError, match="at least 2 items"):
        evaluate(x[:1], y)
    with pytest.raises(EvaluationError, match="unknown feature space 'clip'"):
        evaluate(x, y, feature_space="clip")
    with pytest.raises(EvaluationError, match="feature space .inception. needs images"):
        evaluate(x, y, feature_space="inception")
    res = evaluate(rng.normal(size=(10, 20)), rng.normal(size=(10, 20)), kid_subsets=2, kid_subset_size=5)
    assert "singular" in res["protocol"]["notes"][0]


def test_cli_evaluate_json(tmp_path, capsys):
    real = _digits01()
    path = tmp_path / "s.npz"
    np.savez(path, samples=real[::3].astype(np.float32))
    assert main(["evaluate", str(path), "--reference", "digits", "--json", "--kid-subsets", "10",
                 "--out", str(tmp_path / "r.json"), "--pairs", str(tmp_path / "pairs.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("fd", "kid", "precision", "recall", "copy_rate", "protocol"):
        assert key in out
    assert out["copy_rate"] == 1.0  # every sample is a training image
    assert out["protocol"]["samples"] == 599 and out["protocol"]["reference_count"] == 1797
    assert json.loads((tmp_path / "r.json").read_text())["fd"] == out["fd"]
    assert (tmp_path / "pairs.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["evaluate", "/no/such.npz"], "samples: "),
    (["evaluate", "digits", "--reference", "moons"], "items of shape"),
    (["evaluate", "digits", "--features", "clip"], "--features 'clip' is unknown"),
])
def test_cli_evaluate_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_load_set_rejects_out_of_range_images(tmp_path):
    np.savez(tmp_path / "bad.npz", samples=np.full((4, 1, 8, 8), 2.0))
    with pytest.raises(EvaluationError, match=r"must be in \[0, 1\]"):
        load_set(str(tmp_path / "bad.npz"))
