"""The Inception-v3 network of the standard FID protocol, run on weights the user supplies.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium") is the Frechet distance between Gaussian fits of the 2048-d ``pool3`` activations of
one particular network: the TensorFlow Inception graph of 2015-12-05 (Szegedy et al. 2016,
"Rethinking the Inception Architecture"). FID numbers are only comparable between papers when
they use exactly that network and input pipeline. Its weights are distributed for PyTorch by the
pytorch-fid project as ``pt_inception-2015-12-05-6726825d.pth`` (95,628,359 bytes, SHA-256 below);
torch-fidelity distributes the same bytes as ``weights-inception-2015-12-05-6726825d.pth``.

undiffuse never downloads anything: the user points ``load_weights(path)`` or the environment
variable ``UNDIFFUSE_INCEPTION_WEIGHTS`` at a copy of that file (or at a safetensors copy made by
``convert_to_safetensors``). Safety: a file that is not safetensors (judged by its content) is
deserialised only if its SHA-256 equals the standard one, and then only with
``torch.load(weights_only=True)`` from the very bytes that were hashed, so no code in it can run.
A safetensors copy records the SHA-256 of the file it was converted from and a digest of its
tensors; both are checked on load.

Network (``InceptionV3FID``): torchvision's Inception-v3 layer layout and parameter names, with the
three differences of the TensorFlow graph that pytorch-fid identified:

1. the average-pool branch of every A, C and E block averages only over the in-image part of the
   3x3 window (TensorFlow's ``SAME`` average pool; ``count_include_pad=False``);
2. the pool branch of the last E block (``Mixed_7c``) is a 3x3 **max** pool (stride 1, pad 1);
3. the classifier has 1008 outputs (``fc``; not used for FID, kept so the weights file loads strictly).

Every convolution is ``BasicConv2d``: conv (no bias) -> BatchNorm (eps 0.001) -> ReLU. No auxiliary
classifier. Input pipeline (pytorch-fid's): images in [0, 1] (grey repeated to RGB), bilinear
resize to 299 x 299 (``align_corners=False``, no antialiasing), ``2x - 1`` to [-1, 1]; the output
is the global average of ``Mixed_7c`` (N, 2048), computed in float32.

This follows pytorch-fid, the de-facto PyTorch reference, rather than the TensorFlow graph bit for
bit: the graph resizes with TF1's ``ResizeBilinear`` (not half-pixel centred) and normalises 8-bit
pixels p as (p - 128) / 128 rather than p / 127.5 - 1 (torch-fidelity emulates both). pytorch-fid
reports FID values within about 0.1% of the TensorFlow implementation because of such differences.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from undiffuse.utils.atomic import write_atomic

__all__ = ["InceptionV3FID", "load_weights", "convert_to_safetensors", "inception_features", "fid_preprocess",
           "InceptionWeightsError", "InceptionWeightsMissing", "STANDARD_FILE", "STANDARD_SHA256", "ENV_VAR"]

STANDARD_FILE = "pt_inception-2015-12-05-6726825d.pth"
STANDARD_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
STANDARD_BYTES = 95_628_359
STANDARD_SOURCE = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
ENV_VAR = "UNDIFFUSE_INCEPTION_WEIGHTS"
FORMAT = "undiffuse-inception-fid-v1"  # safetensors metadata tag written by convert_to_safetensors
INPUT_SIZE = 299
FEATURES = 2048
CLASSES = 1008
_MAX_BYTES = 1 << 30  # refuse to read more than 1 GiB into memory (the standard file is 95.6 MB)


class InceptionWeightsError(ValueError):
    """The FID Inception weights cannot be used; the message names the file and the reason."""


class InceptionWeightsMissing(InceptionWeightsError, FileNotFoundError):
    """No weights file at the path looked at (also a ``FileNotFoundError``)."""


# ----------------------------------------------------------------------------------------------
# network


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps=0.001) -> ReLU; ``**conv`` are ``nn.Conv2d`` options."""

    def __init__(self, cin: int, cout: int, kernel, **conv):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, bias=False, **conv)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def tf_avg_pool3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 average pool, stride 1, SAME padding, dividing by the number of in-image pixels only
    (TensorFlow's convention; torch's default would count the zero padding)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _row(cin, cout):  # 1x7 conv, output size kept
    return BasicConv2d(cin, cout, (1, 7), padding=(0, 3))


def _col(cin, cout):  # 7x1 conv, output size kept
    return BasicConv2d(cin, cout, (7, 1), padding=(3, 0))


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avg-pool->1x1; out 224 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(tf_avg_pool3x3(x))], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1->3x3->3x3/2 | max-pool 3x3/2; out 480 + cin channels."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (c7 inner channels); out 768 channels."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = _row(c7, c7)
        self.branch7x7_3 = _col(c7, 192)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = _col(c7, c7)
        self.branch7x7dbl_3 = _row(c7, c7)
        self.branch7x7dbl_4 = _col(c7, c7)
        self.branch7x7dbl_5 = _row(c7, 192)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(tf_avg_pool3x3(x))], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction: 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | max-pool 3x3/2; out 512 + cin channels."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = _row(192, 192)
        self.branch7x7x3_3 = _col(192, 192)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs; out 2048 channels. ``pool``: "avg" (TF-style, Mixed_7b)
    or "max" (3x3 max pool, stride 1, pad 1: the FID graph's Mixed_7c)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = tf_avg_pool3x3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(s), self.branch3x3_2b(s),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


def fid_preprocess(images01: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, 1 or 3, H, W) in [0, 1] -> (N, 3, 299, 299) in [-1, 1]: grey repeated to RGB, bilinear
    resize (half-pixel centres, ``align_corners=False``, no antialiasing), then ``2x - 1``."""
    if images01.ndim != 4 or images01.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1, H, W) or (N, 3, H, W), got {tuple(images01.shape)}")
    x = images01.to(dtype)
    if x.shape[1] == 1:  # to RGB first, as pytorch-fid's PIL loader does (interpolation numerics
        x = x.repeat(1, 3, 1, 1)  # in float32 depend on the channel count)
    x = F.interpolate(x.contiguous(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (2 * x - 1).contiguous()  # standard (NCHW) layout, whatever the input's strides


class InceptionV3FID(nn.Module):
    """FID Inception-v3 (module docstring). ``forward(images01)``: (N, 1|3, H, W) in [0, 1] ->
    (N, 2048) pool3 features. Parameter names and shapes are those of the standard weights file."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURES, CLASSES)  # ImageNet logits (1008 = TF graph's classes); unused for FID

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        x = fid_preprocess(images01, self.fc.weight.dtype)  # (N, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,  # -> (N, 768, 17, 17)
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):  # -> (N, 2048, 8, 8)
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # pool3: global average, (N, 2048)


# ----------------------------------------------------------------------------------------------
# weights: locate, verify, load


def _missing_message(path: str | None, source: str) -> str:
    where = f"No file at {path!r} ({source})." if path else \
        f"No weights file given: pass a path or set the environment variable {ENV_VAR}."
    return (f"{where} The FID Inception feature space needs the standard weights file {STANDARD_FILE} "
            f"(SHA-256 {STANDARD_SHA256}, {STANDARD_BYTES:,} bytes). undiffuse never downloads it: get it "
            f"yourself from pytorch-fid's GitHub release, {STANDARD_SOURCE}, then pass its path or set {ENV_VAR}; "
            f"optionally keep a no-pickle copy with undiffuse.metrics.inception.convert_to_safetensors.")


def resolve_path(path=None) -> str:
    """The weights path: ``path`` if given, else ``$UNDIFFUSE_INCEPTION_WEIGHTS``; raises
    ``InceptionWeightsMissing`` (naming the path looked at) if there is no such file."""
    source = "given path"
    if path is None:
        path, source = os.environ.get(ENV_VAR) or None, f"from ${ENV_VAR}"
    if path is None:
        raise InceptionWeightsMissing(_missing_message(None, ""))
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InceptionWeightsMissing(_missing_message(path, source))
    return path


def _read_hashed(path: str) -> tuple[bytes, str]:
    """The file's bytes and their SHA-256, read once in 1 MiB chunks (what is hashed is what is loaded)."""
    size = os.path.getsize(path)
    if size > _MAX_BYTES:
        raise InceptionWeightsError(f"{path} is {size:,} bytes; the standard weights file has {STANDARD_BYTES:,}. "
                                    "Refusing to read it.")
    h, chunks = hashlib.sha256(), []
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            chunks.append(chunk)
    return b"".join(chunks), h.hexdigest()


def _safetensors_header(data: bytes) -> dict | None:
    """The parsed JSON header if ``data`` is a safetensors file (by content), else None."""
    if len(data) < 10:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n + 8 > len(data) or data[8:9] != b"{":
        return None
    try:
        return json.loads(data[8:8 + n])
    except ValueError:
        return None


def tensors_digest(state: dict) -> str:
    """SHA-256 over the sorted names, dtypes, shapes and raw bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _check_state(state, path: str, model: InceptionV3FID) -> dict:
    """Strict check of a loaded state dict against the network: names, shapes, finiteness."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise InceptionWeightsError(f"{path} does not hold a flat state dict of named tensors")
    want = model.state_dict()
    missing, unexpected = [k for k in want if k not in state], [k for k in state if k not in want]
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "") or "none"
        raise InceptionWeightsError(f"{path}: parameter names do not match the FID Inception network. "
                                    f"Missing: {show(missing)}. Unexpected: {show(unexpected)}.")
    bad = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in want.items()
           if state[k].shape != v.shape]
    if bad:
        raise InceptionWeightsError(f"{path}: wrong tensor shapes: {'; '.join(bad[:8])}")
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise InceptionWeightsError(f"{path}: non-finite values in {', '.join(nonfinite[:8])}")
    return state


def _read_state(path: str) -> tuple[dict, str]:
    """Verified tensors of a weights file and the SHA-256 of the standard file they come from."""
    data, digest = _read_hashed(path)
    header = _safetensors_header(data)
    if header is not None:
        meta = header.get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            raise InceptionWeightsError(f"{path} is a safetensors file but not one written by convert_to_safetensors "
                                        f"(metadata format {meta.get('format')!r}, expected {FORMAT!r}), so its "
                                        "origin cannot be checked.")
        if meta.get("source_sha256") != STANDARD_SHA256:
            raise InceptionWeightsError(f"{path} was converted from a file with SHA-256 {meta.get('source_sha256')}, "
                                        f"not from the standard weights {STANDARD_FILE} (SHA-256 {STANDARD_SHA256}).")
        try:
            state = load_safetensors(data)
        except Exception as e:  # truncated or malformed payload
            raise InceptionWeightsError(f"{path} is a damaged safetensors file: {e}") from None
        got = tensors_digest(state)
        if got != meta.get("tensors_sha256"):
            raise InceptionWeightsError(f"{path}: tensor contents changed since conversion (digest {got}, "
                                        f"recorded {meta.get('tensors_sha256')}).")
        return state, STANDARD_SHA256
    if digest != STANDARD_SHA256:
        raise InceptionWeightsError(f"{path} is not the standard FID Inception weights file {STANDARD_FILE}: "
                                    f"SHA-256 expected {STANDARD_SHA256}, got {digest}. It is not a safetensors "
                                    "copy from convert_to_safetensors either. Refusing to deserialize it; FID is "
                                    "only comparable with exactly the standard weights.")
    try:  # only tensors and plain containers: no class or function in the pickle can be called
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InceptionWeightsError(f"{path}: refused by torch.load(weights_only=True), which allows only "
                                    f"tensors and plain containers: {type(e).__name__}: {e}") from None
    return state, digest


def load_weights(path=None) -> InceptionV3FID:
    """The FID Inception network with verified weights (eval mode, parameters frozen).

    ``path``: a copy of ``pt_inception-2015-12-05-6726825d.pth`` (checked by SHA-256 before it is
    deserialised, then read with ``torch.load(weights_only=True)``) or a safetensors copy written by
    ``convert_to_safetensors``; default ``$UNDIFFUSE_INCEPTION_WEIGHTS``. Nothing is downloaded.
    Raises ``InceptionWeightsMissing`` (a ``FileNotFoundError``) or ``InceptionWeightsError``.
    """
    path = resolve_path(path)
    model = InceptionV3FID()
    state, _ = _read_state(path)
    model.load_state_dict(_check_state(state, path, model), strict=True)
    return model.eval().requires_grad_(False)


def convert_to_safetensors(pth, out) -> str:
    """Write a safetensors copy of the standard weights file ``pth`` to ``out`` (atomically).

    ``pth`` must pass the same checks as in ``load_weights``. The metadata records the original's
    SHA-256 and a digest of the tensors; ``load_weights`` verifies both. Returns ``out``.
    """
    pth, out = resolve_path(pth), os.fspath(out)
    state, source = _read_state(pth)
    state = _check_state(state, pth, InceptionV3FID())
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"format": FORMAT, "source_file": os.path.basename(pth), "source_sha256": source,
            "tensors_sha256": tensors_digest(state)}
    write_atomic(out, lambda tmp: save_file(state, tmp, metadata=meta), suffix=".safetensors.tmp")
    return out


# ----------------------------------------------------------------------------------------------
# features

_MEMO: dict = {}


def _cached_model(path) -> InceptionV3FID:
    """``load_weights(path)``, memoised on the file's identity and the expected hash (one at a time)."""
    path = resolve_path(path)
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size, STANDARD_SHA256)
    if key not in _MEMO:
        model = load_weights(path)
        _MEMO.clear()
        _MEMO[key] = model
    return _MEMO[key]


def _as_images(images01) -> torch.Tensor:
    if isinstance(images01, torch.Tensor):
        x = images01.detach().cpu()
    else:
        arr = np.asarray(images01)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"images must be a numeric array or tensor, got dtype {arr.dtype}")
        x = torch.from_numpy(arr.astype(np.float64, copy=False))
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise ValueError(f"images: expected shape (N, 1, H, W) or (N, 3, H, W) with N >= 1, got {tuple(x.shape)}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("images contain non-finite values (nan or inf)")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return x


def inception_features(images01, weights=None, batch_size: int = 64, device: str | None = None) -> np.ndarray:
    """pool3 features (float64 numpy, (N, 2048)) of the FID Inception network.

    ``images01``: array or tensor (N, 1|3, H, W) in [0, 1]. ``weights``: a weights path, an
    ``InceptionV3FID`` module, or None for ``$UNDIFFUSE_INCEPTION_WEIGHTS`` (loaded once per file
    and kept). Runs in eval mode without gradients in float32 (the standard), batch by batch;
    the same input and batch size give the same features. Values for one image may differ in the
    last float32 bits between batch sizes (CPU kernels choose their blocking by batch size).
    ``device``: where the network runs (moved there and kept; default: where it is).
    """
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = _as_images(images01)
    model = weights if isinstance(weights, InceptionV3FID) else _cached_model(weights)
    if device is not None:
        model.to(device)
    where = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = [model(x[i:i + batch_size].to(where)).double().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()
