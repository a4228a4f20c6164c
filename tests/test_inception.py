"""FID Inception-v3: architecture against the standard weights file's layout, the TF-specific
pooling, the input pipeline, and safe loading (hash first, weights_only, strict keys, safetensors
copies). The real weights are not available here: files hold seeded random weights instead, and
the expected SHA-256 is monkeypatched to theirs where a test needs a file to count as standard."""
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from undiffuse.metrics import inception as inc

# ------------------------------------------------------------------------------------------------
# The standard file's tensors, restated as data from the published layout (torchvision's
# Inception3 with aux_logits=False, num_classes=1008, as pytorch-fid and torch-fidelity build it):
# every BasicConv2d is (name, in, out, kh, kw) and stores conv.weight and bn.{weight, bias,
# running_mean, running_var, num_batches_tracked}; then fc.weight (1008, 2048) and fc.bias.

STEM = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
        ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]


def _a(c, pool):
    return [("branch1x1", c, 64, 1, 1), ("branch5x5_1", c, 48, 1, 1), ("branch5x5_2", 48, 64, 5, 5),
            ("branch3x3dbl_1", c, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
            ("branch_pool", c, pool, 1, 1)]


def _c(c7):
    return [("branch1x1", 768, 192, 1, 1), ("branch7x7_1", 768, c7, 1, 1), ("branch7x7_2", c7, c7, 1, 7),
            ("branch7x7_3", c7, 192, 7, 1), ("branch7x7dbl_1", 768, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
            ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1), ("branch7x7dbl_5", c7, 192, 1, 7),
            ("branch_pool", 768, 192, 1, 1)]


def _e(c):
    return [("branch1x1", c, 320, 1, 1), ("branch3x3_1", c, 384, 1, 1), ("branch3x3_2a", 384, 384, 1, 3),
            ("branch3x3_2b", 384, 384, 3, 1), ("branch3x3dbl_1", c, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1), ("branch_pool", c, 192, 1, 1)]


MIXED = {
    "Mixed_5b": _a(192, 32), "Mixed_5c": _a(256, 64), "Mixed_5d": _a(288, 64),
    "Mixed_6a": [("branch3x3", 288, 384, 3, 3), ("branch3x3dbl_1", 288, 64, 1, 1),
                 ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3)],
    "Mixed_6b": _c(128), "Mixed_6c": _c(160), "Mixed_6d": _c(160), "Mixed_6e": _c(192),
    "Mixed_7a": [("branch3x3_1", 768, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3),
                 ("branch7x7x3_1", 768, 192, 1, 1), ("branch7x7x3_2", 192, 192, 1, 7),
                 ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)],
    "Mixed_7b": _e(1280), "Mixed_7c": _e(2048),
}


def expected_shapes() -> dict:
    convs = STEM + [(f"{block}.{name}", *rest) for block, rows in MIXED.items() for name, *rest in rows]
    out = {}
    for name, cin, cout, kh, kw in convs:
        out[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for b in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.bn.{b}"] = (cout,)
        out[f"{name}.bn.num_batches_tracked"] = ()
    out["fc.weight"], out["fc.bias"] = (1008, 2048), (1008,)
    return out


# ------------------------------------------------------------------------------------------------
# helpers and fixtures


def randomize(model, seed: int):
    """Seeded weights that keep activations O(1) through the whole network (He-normal convs,
    BatchNorm scales and running variances in [0.5, 1.5], small shifts and means)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(1000)
            elif name.endswith("conv.weight") or name == "fc.weight":
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
            elif name.endswith(("running_var", "bn.weight")):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return model.eval()


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    inc._MEMO.clear()
    monkeypatch.delenv(inc.ENV_VAR, raising=False)
    yield
    inc._MEMO.clear()
    for f in tmp_path.iterdir():  # ~95 MB weight files: do not leave them in pytest's kept temp folders
        if f.suffix in (".pth", ".safetensors"):
            f.unlink()


@pytest.fixture(scope="module")
def net():
    return randomize(inc.InceptionV3FID(), seed=0)


@pytest.fixture(scope="module")
def images():
    return torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture(scope="module")
def ref_features(net, images):
    return inc.inception_features(images, weights=net)


@pytest.fixture(scope="module")
def pth_files(net, tmp_path_factory):
    """The random weights as a zip-format .pth (today's torch.save) and a legacy-format one (the
    format of 2018-era files such as the standard one)."""
    folder = tmp_path_factory.mktemp("weights")
    zip_path, legacy_path = folder / "random-zip.pth", folder / "random-legacy.pth"
    torch.save(net.state_dict(), zip_path)
    torch.save(net.state_dict(), legacy_path, _use_new_zipfile_serialization=False)
    yield {"zip": zip_path, "legacy": legacy_path}
    zip_path.unlink()
    legacy_path.unlink()


def as_standard(monkeypatch, path):
    """Make ``path`` count as the standard weights file (only its SHA-256 is compared)."""
    monkeypatch.setattr(inc, "STANDARD_SHA256", sha256(path))


# ------------------------------------------------------------------------------------------------
# architecture


def test_state_dict_matches_the_standard_file_layout():
    model = inc.InceptionV3FID()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = expected_shapes()
    assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
    assert got == want
    assert len(got) == 566  # 94 BasicConv2d x 6 tensors + fc weight and bias
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    # all float32 tensors plus 94 int64 counters: 95,542,320 bytes of payload, just under the
    # published size of the standard file (95,628,359 bytes; the rest is pickle/container overhead)
    payload = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert payload == 95_542_320 and 0 < inc.STANDARD_BYTES - payload < 0.002 * inc.STANDARD_BYTES
    named = model.state_dict()
    assert named["Mixed_7c.branch3x3dbl_2.conv.weight"].shape == (384, 448, 3, 3)
    assert named["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert named["Conv2d_1a_3x3.bn.running_var"].shape == (32,) and model.Conv2d_1a_3x3.bn.eps == 0.001
    assert model.Conv2d_1a_3x3.conv.bias is None and model.fc.out_features == 1008


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 32, 32)])
def test_output_shape(net, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    f = inc.inception_features(x, weights=net)
    assert f.shape == (2, 2048) and f.dtype == np.float64
    assert np.isfinite(f).all() and (f >= 0).all() and f.std() > 0  # post-ReLU averages, not degenerate


def test_grey_is_rgb_with_equal_channels(net):
    grey = torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    a = inc.inception_features(grey, weights=net)
    b = inc.inception_features(grey.repeat(1, 3, 1, 1), weights=net)
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# the TensorFlow-specific pooling


def hand_avg_pool_no_pad(x: np.ndarray) -> np.ndarray:
    """3x3 mean over the in-image neighbours only, by explicit loops."""
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            win = x[:, :, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
            out[:, :, i, j] = win.sum(axis=(2, 3)) / (win.shape[2] * win.shape[3])
    return out


def hand_max_pool(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = x[:, :, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].max(axis=(2, 3))
    return out


def test_tf_avg_pool_divides_by_in_image_pixels():
    x = torch.arange(1.0, 10.0, dtype=torch.float64).reshape(1, 1, 3, 3)
    got = inc.tf_avg_pool3x3(x)[0, 0]
    # corner (1,2,4,5)/4 = 3; top edge (1..6)/6 = 3.5; centre 45/9 = 5; bottom-right (5,6,8,9)/4 = 7
    assert got[0, 0] == 3.0 and got[0, 1] == 3.5 and got[1, 1] == 5.0 and got[2, 2] == 7.0
    assert F.avg_pool2d(x, 3, 1, 1)[0, 0, 0, 0] == 12 / 9  # torch's default counts the padding


@pytest.mark.parametrize("kind", ["A", "C", "E-avg", "E-max"])
def test_block_pool_branch(kind):
    torch.manual_seed(4)
    block, cin, pool_ch = {"A": (lambda: inc.InceptionA(5, pool_features=3), 5, 3),
                           "C": (lambda: inc.InceptionC(768, c7=8), 768, 192),
                           "E-avg": (lambda: inc.InceptionE(6, pool="avg"), 6, 192),
                           "E-max": (lambda: inc.InceptionE(6, pool="max"), 6, 192)}[kind]
    block = randomize(block().double(), seed=5)
    x = torch.randn((2, cin, 5, 4), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    pooled = (hand_max_pool if kind == "E-max" else hand_avg_pool_no_pad)(x.numpy())
    with torch.no_grad():
        got = block(x)[:, -pool_ch:]  # the pool branch comes last in the concatenation
        want = block.branch_pool(torch.from_numpy(pooled))
        other = block.branch_pool(F.avg_pool2d(x, 3, 1, 1))  # torch's default pooling, to be told apart
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (got - other).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------
# input pipeline


def hand_bilinear(x: np.ndarray, out: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize (source = (dst + 0.5) * in/out - 0.5, clamped at 0, edge
    pixels repeated): the convention of align_corners=False."""
    def taps(n_in):
        src = np.maximum((np.arange(out) + 0.5) * n_in / out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0
    r0, r1, wr = taps(x.shape[2])
    c0, c1, wc = taps(x.shape[3])
    rows = x[:, :, r0, :] * (1 - wr)[:, None] + x[:, :, r1, :] * wr[:, None]
    return rows[:, :, :, c0] * (1 - wc) + rows[:, :, :, c1] * wc


@pytest.mark.parametrize("hw", [(7, 5), (8, 8), (512, 400)])
def test_resize_is_bilinear_half_pixel(hw):
    x = torch.rand((2, 3, *hw), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = inc.fid_preprocess(x, dtype=torch.float64)
    assert got.shape == (2, 3, 299, 299)
    np.testing.assert_allclose((got.numpy() + 1) / 2, hand_bilinear(x.numpy(), 299), rtol=0, atol=1e-12)
    torch.testing.assert_close(got, 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1,
                               rtol=0, atol=1e-12)
    assert got.min() >= -1 and got.max() <= 1


def test_input_validation(net):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inc.inception_features(np.full((2, 3, 8, 8), 255.0), weights=net)
    with pytest.raises(ValueError, match="shape"):
        inc.inception_features(np.zeros((2, 2, 8, 8)), weights=net)
    with pytest.raises(ValueError, match="non-finite"):
        inc.inception_features(np.full((2, 3, 8, 8), np.nan), weights=net)
    with pytest.raises(ValueError, match="batch_size"):
        inc.inception_features(np.zeros((2, 3, 8, 8)), weights=net, batch_size=0)


def test_batch_size_and_training_flag(net, images, ref_features):
    net.train()
    try:
        f = inc.inception_features(images, weights=net, batch_size=1)
        assert net.training  # restored
    finally:
        net.eval()
    np.testing.assert_allclose(f, ref_features, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(inc.inception_features(images, weights=net), ref_features)  # deterministic


# ------------------------------------------------------------------------------------------------
# loading


def test_missing_file_names_path_hash_and_no_download(tmp_path, monkeypatch):
    path = tmp_path / "nowhere" / inc.STANDARD_FILE
    with pytest.raises(inc.InceptionWeightsMissing) as e:
        inc.load_weights(path)
    msg = str(e.value)
    for part in (str(path), inc.STANDARD_SHA256, inc.STANDARD_FILE, "never downloads", "pytorch-fid", inc.ENV_VAR):
        assert part in msg
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    with pytest.raises(FileNotFoundError, match=inc.ENV_VAR):  # no path and no variable
        inc.inception_features(np.zeros((2, 3, 8, 8)))
    monkeypatch.setenv(inc.ENV_VAR, str(path))
    with pytest.raises(FileNotFoundError, match=f"{path}.*{inc.ENV_VAR}"):
        inc.load_weights()


def test_wrong_hash_is_refused_before_deserialising(pth_files, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(inc.InceptionWeightsError) as e:
        inc.load_weights(pth_files["zip"])
    msg = str(e.value)
    assert inc.STANDARD_SHA256 in msg and sha256(pth_files["zip"]) in msg and "expected" in msg
    assert calls == []


class _Payload:
    """Unpickling this calls os.mkdir(target)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


@pytest.mark.parametrize("container", ["raw pickle", "torch.save"])
def test_malicious_pickle_with_matching_hash_is_refused(tmp_path, monkeypatch, container):
    marker = tmp_path / "payload_ran"
    pickle.loads(pickle.dumps(_Payload(str(marker))))  # control: the payload is live
    assert marker.is_dir()
    marker.rmdir()
    evil = tmp_path / inc.STANDARD_FILE
    if container == "raw pickle":
        evil.write_bytes(pickle.dumps({"fc.weight": _Payload(str(marker))}, protocol=2))
    else:
        torch.save({"fc.weight": _Payload(str(marker))}, evil)
    as_standard(monkeypatch, evil)
    with pytest.raises(inc.InceptionWeightsError, match="weights_only"):
        inc.load_weights(evil)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_standard_pth_loads_and_matches_the_module(pth_files, images, ref_features, monkeypatch, fmt):
    as_standard(monkeypatch, pth_files[fmt])
    model = inc.load_weights(pth_files[fmt])
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    np.testing.assert_array_equal(inc.inception_features(images, weights=model), ref_features)


def test_env_variable_and_memo(pth_files, images, ref_features, monkeypatch):
    as_standard(monkeypatch, pth_files["zip"])
    monkeypatch.setenv(inc.ENV_VAR, str(pth_files["zip"]))
    np.testing.assert_array_equal(inc.inception_features(images), ref_features)
    first = next(iter(inc._MEMO.values()))
    inc.inception_features(images[:1])
    assert next(iter(inc._MEMO.values())) is first  # not re-read and re-hashed
    monkeypatch.setattr(inc, "STANDARD_SHA256", "0" * 64)  # the expected hash is part of the memo key
    with pytest.raises(inc.InceptionWeightsError, match="0" * 64):
        inc.inception_features(images)


def test_strict_keys(tmp_path, net, monkeypatch):
    state = dict(net.state_dict())
    del state["Mixed_5b.branch_pool.conv.weight"]
    state["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    path = tmp_path / "bad_keys.pth"
    torch.save(state, path)
    as_standard(monkeypatch, path)
    with pytest.raises(inc.InceptionWeightsError,
                       match=r"Missing: Mixed_5b\.branch_pool\.conv\.weight\. Unexpected: AuxLogits\.fc\.weight"):
        inc.load_weights(path)
    state = dict(net.state_dict())
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, path)
    as_standard(monkeypatch, path)
    with pytest.raises(inc.InceptionWeightsError, match=r"fc\.weight \(1000, 2048\) \(expected \(1008, 2048\)\)"):
        inc.load_weights(path)


def test_safetensors_round_trip(pth_files, images, ref_features, tmp_path, monkeypatch):
    from safetensors import safe_open

    out = tmp_path / "inception.safetensors"
    with pytest.raises(inc.InceptionWeightsError, match="expected"):  # wrong hash: no conversion
        inc.convert_to_safetensors(pth_files["legacy"], out)
    assert not out.exists()
    as_standard(monkeypatch, pth_files["legacy"])
    assert inc.convert_to_safetensors(pth_files["legacy"], out) == str(out)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["source_sha256"] == inc.STANDARD_SHA256 and meta["format"] == inc.FORMAT
    assert meta["source_file"] == "random-legacy.pth"
    np.testing.assert_array_equal(inc.inception_features(images, weights=out), ref_features)

    # the recorded source hash is checked against the (here: real) standard hash
    monkeypatch.setattr(inc, "STANDARD_SHA256", "1" * 64)
    with pytest.raises(inc.InceptionWeightsError, match="converted from a file with SHA-256"):
        inc.load_weights(out)
    monkeypatch.setattr(inc, "STANDARD_SHA256", meta["source_sha256"])

    # a changed tensor is caught by the recorded digest
    data = bytearray(out.read_bytes())
    data[-5] ^= 0xFF
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(data))
    with pytest.raises(inc.InceptionWeightsError, match="changed since conversion"):
        inc.load_weights(tampered)

    # a safetensors file of unknown origin is refused
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in inc.InceptionV3FID().state_dict().items()}, str(foreign))
    with pytest.raises(inc.InceptionWeightsError, match="not one written by convert_to_safetensors"):
        inc.load_weights(foreign)


def test_pickle_named_safetensors_is_judged_by_content(pth_files, tmp_path):
    fake = tmp_path / "weights.safetensors"
    fake.write_bytes(pth_files["zip"].read_bytes())
    with pytest.raises(inc.InceptionWeightsError, match="not a safetensors|Refusing to deserialize"):
        inc.load_weights(fake)
