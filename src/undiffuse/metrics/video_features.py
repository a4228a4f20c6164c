"""The in-project moving-digits readers: a per-frame digit-set reader and a small clip classifier.

Both are trained here, deterministically (``trained.deterministic``, one thread), on the
training split of ``moving-digits`` (``data.video``) and cached as safetensors under
``$UNDIFFUSE_CACHE`` in a file named by a sha256 over the training pixels, the labels, the
recipe version and the hyperparameters (``trained.cached_network``), as ``mnist_features`` and
``speech_features`` do. Both read frames at 32x32: clips of another size are resized per frame
(bilinear with antialiasing). The digits are scaled with the frame (``round(0.44 * size)``
pixels), so a 64x64 frame resized to 32x32 shows the digits at the 32x32 training scale.

**Digit sets.** A frame holds one digit or two (which may overlap, combined by pixel-wise
max). Its *digit set* is one of 65 classes, the class names of ``moving-digits``: ``"0"`` ..
``"9"`` (one digit), then ``"a and b"`` for a <= b (``"0 and 0"``, ``"0 and 1"``, ...,
``"9 and 9"``; a pair of equal digits is its own class). :func:`set_index` maps ``(N, 2)``
digit pairs (-1 for "no second digit") to these indices.

**Frame reader** (``FrameNet``): frame (1, 32, 32) in [0, 1] -> three conv 3x3 + ReLU + 2x2
max-pool stages (16, 32, 32 channels) -> linear 512 -> 128, ReLU -> two heads: 10 digit
logits ``z`` and 2 count logits ``k`` (one or two digits). The logit of a set is the sum of
``z`` over its digits plus ``k`` of its size, so the softmax over the 65 sets is the multi-label
reading (ten independent "digit present" sigmoids and a count head) restricted to the sets that
exist: evidence for a digit is learned from every clip that holds it rather than per pair, a
pair of equal digits is told from one digit by the count, and the network trains through the
shared recipe (``trained.train_classifier``: cross-entropy over the 65 sets, AdamW, one-cycle,
random shifts of up to 2 px and N(0, 0.05^2) pixel noise). Training frames:
``frames_per_clip`` frames of every training clip, at phases that rotate from clip to clip.
Its held-out exact-set accuracy on frames of ``moving-digits:heldout`` (digit images it never
saw) is :func:`reader_accuracy`: two overlapping 14-px digits are read far less surely than
one, which is why ``metrics.video.identity`` asks for a plausible reading in every frame, not
the first choice.

**Clip classifier** (``ClipNet``, the role of I3D in FVD): each frame -> conv 5x5 stride 2 (16)
-> conv 3x3 stride 2 (32) -> conv 3x3 (32) + 2x2 max-pool = a 512-d map that keeps where the
digits are -> two temporal convolutions (kernel 3 over frames, 128 channels) -> the mean over
frames, beside its value at the first frame (the initial direction survives the bounces that
the mean mixes) -> linear 256 -> 128, ReLU = **the clip features** -> two heads: the clip's digit set
(65) and its motion direction (8 bins of the first digit's velocity angle, ``direction_bin``;
the first digit is the smaller class of the pair). The two heads are trained with one
cross-entropy over the 520 joint classes whose logits are ``set[a] + direction[b]``: the joint
softmax factorises, so that loss is exactly the sum of the two heads' cross-entropies, and the
shared recipe trains it unchanged. Clips enter the shared recipe as one-channel film strips
``(N, 1, T * 32, 32)`` (no random shift: ``shift`` is 0; pixel noise as for the frame reader).
Held-out accuracies: :func:`clip_classifier_accuracy`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from undiffuse import data as _data
from undiffuse.data.video import CLASS_NAMES, class_of
from undiffuse.utils.cache import cache_dir

from .trained import cached_network, deterministic, train_classifier

__all__ = [
    "DIRECTIONS",
    "SET_NAMES",
    "SIDE",
    "ClipNet",
    "FrameNet",
    "clip_classifier_accuracy",
    "clip_features",
    "digit_set",
    "direction_bin",
    "frame_probabilities",
    "reader_accuracy",
    "set_index",
    "to_side",
]

SIDE = 32  # both networks read frames at 32x32
DIRECTIONS = 8  # motion-direction bins of the clip classifier (45 degrees each)
SET_NAMES = CLASS_NAMES  # the 65 digit sets, in moving-digits' class order
_PAIR_INDEX = np.array([[class_of((a, b)) for b in range(10)] for a in range(10)], np.int64)

READER_RECIPE = "undiffuse-moving-digits-frame-reader-v1"
READER_HPARAMS = {"channels": 16, "features": 128, "epochs": 6, "batch": 64, "lr": 3e-3, "weight_decay": 1e-4,
                  "shift": 2, "pixel_noise": 0.05, "seed": 0, "threads": 1, "frames_per_clip": 4,
                  "dataset": {"image_size": 32, "frames": 16}}
CLIP_RECIPE = "undiffuse-moving-digits-clip-classifier-v1"
CLIP_HPARAMS = {"channels": 16, "features": 128, "epochs": 4, "batch": 32, "lr": 5e-3, "weight_decay": 1e-4,
                "shift": 0, "pixel_noise": 0.05, "seed": 0, "threads": 1,
                "dataset": {"image_size": 32, "frames": 16}}

_MEMO_READER: dict = {}
_MEMO_CLIP: dict = {}
_PATHS: dict = {}  # (network, cache folder, settings) -> weights file
_DIGESTS: dict = {}  # (split, settings) -> sha256 of the data, so a call does not render the data again


# ----------------------------------------------------------------------------------------------
# digit sets and directions


def set_index(digits) -> np.ndarray:
    """Digit-set class indices (into ``SET_NAMES``) of ``(N, 2)`` digit pairs, -1 = no second digit."""
    d = np.asarray(digits, np.int64).reshape(-1, 2)
    if d.size and (d[:, 0].min() < 0 or d.max() > 9 or d.min() < -1):
        raise ValueError(f"digits must be 0..9 (and -1 for no second digit), got {d.min()}..{d.max()}")
    return np.where(d[:, 1] < 0, d[:, 0], _PAIR_INDEX[d[:, 0], d[:, 1].clip(min=0)])


def digit_set(index: int) -> tuple[int, ...]:
    """The digits of a set class: ``digit_set(3) == (3,)``, ``digit_set(set_index([[7, 3]])[0]) == (3, 7)``."""
    a, _, b = SET_NAMES[int(index)].partition(" and ")
    return (int(a),) if not b else (int(a), int(b))


def direction_bin(velocity) -> np.ndarray:
    """8 direction bins of ``(..., 2)`` velocities (row, col): bin k is centred on the angle
    ``atan2(v_row, v_col) = k * 45 degrees`` (0 = moving right, 2 = down, 4 = left, 6 = up)."""
    v = np.asarray(velocity, np.float64)
    return (np.round(np.arctan2(v[..., 0], v[..., 1]) / (2 * np.pi / DIRECTIONS)).astype(np.int64)) % DIRECTIONS


def first_digit_direction(digits, velocities) -> np.ndarray:
    """Direction bins of each clip's first digit: the smaller class of a pair (the first of two equal
    digits), so the label does not depend on the order the clip lists its digits in."""
    d, v = np.asarray(digits, np.int64), np.asarray(velocities, np.float64)
    second = (d[:, 1] >= 0) & (d[:, 1] < d[:, 0])
    return direction_bin(np.where(second[:, None], v[:, 1], v[:, 0]))


# ----------------------------------------------------------------------------------------------
# networks


def _set_structure() -> tuple[torch.Tensor, torch.Tensor]:
    """Which digits each of the 65 sets holds ``(65, 10)`` and how many ``(65, 2)``, as 0/1 floats."""
    present, count = torch.zeros(len(SET_NAMES), 10), torch.zeros(len(SET_NAMES), 2)
    for k in range(len(SET_NAMES)):
        ds = digit_set(k)
        present[k, list(ds)] = 1.0
        count[k, len(ds) - 1] = 1.0
    return present, count


class FrameNet(nn.Module):
    """Per-frame digit-set reader; ``features`` gives the 128-d penultimate activations.

    The head scores each digit (10 "present" logits ``z``) and the count (2 logits ``k``: one or
    two digits); the logit of a set is ``sum of z over its digits + k[its size]``, so
    ``softmax`` over the 65 sets is the multi-label reading (independent digit sigmoids and a count
    head, up to a per-frame constant) restricted to the sets that exist, and evidence for a digit
    is learned from every clip that holds it, not per pair."""

    def __init__(self, channels: int = 16, features: int = 128):
        super().__init__()
        c = channels
        self.convs = nn.ModuleList([nn.Conv2d(1, c, 3, padding=1), nn.Conv2d(c, 2 * c, 3, padding=1),
                                    nn.Conv2d(2 * c, 2 * c, 3, padding=1)])
        self.fc = nn.Linear(2 * c * (SIDE // 8) ** 2, features)
        self.digit_head = nn.Linear(features, 10)
        self.count_head = nn.Linear(features, 2)
        present, count = _set_structure()
        self.register_buffer("present", present, persistent=False)
        self.register_buffer("count", count, persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), 1, SIDE, SIDE).to(self.fc.weight.dtype)
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.digit_head(f) @ self.present.T.to(f.dtype) + self.count_head(f) @ self.count.T.to(f.dtype)


class ClipNet(nn.Module):
    """Clip classifier: per-frame convolutions, temporal convolutions, mean over frames.

    Input: clips ``(N, T, 32, 32)`` or the same memory as film strips ``(N, 1, T * 32, 32)``;
    ``forward`` gives the 520 joint logits ``set[a] + direction[b]`` (index ``a * 8 + b``)."""

    def __init__(self, channels: int = 16, features: int = 128, classes: int = len(SET_NAMES),
                 directions: int = DIRECTIONS):
        super().__init__()
        c = channels
        self.conv1 = nn.Conv2d(1, c, 5, stride=2, padding=2)  # 32 -> 16
        self.conv2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)  # 16 -> 8
        self.conv3 = nn.Conv2d(2 * c, 2 * c, 3, padding=1)  # 8 -> 8, then pooled to 4
        self.time1 = nn.Conv1d(2 * c * 16, features, 3, padding=1)
        self.time2 = nn.Conv1d(features, features, 3, padding=1)
        self.fc = nn.Linear(2 * features, features)
        self.set_head = nn.Linear(features, classes)
        self.direction_head = nn.Linear(features, directions)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        x = x.reshape(-1, 1, SIDE, SIDE).to(self.fc.weight.dtype)  # (N * T, 1, 32, 32)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # (N * T, 2c, 4, 4)
        x = x.reshape(n, -1, x[0].numel()).transpose(1, 2)  # (N, 2c * 16, T)
        x = F.relu(self.time2(F.relu(self.time1(x))))  # (N, features, T)
        return F.relu(self.fc(torch.cat([x.mean(2), x[:, :, 0]], 1)))  # the whole clip and its start

    def heads(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.set_head(f), self.direction_head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, d = self.heads(self.features(x))
        return (s[:, :, None] + d[:, None, :]).flatten(1)  # (N, 65 * 8): log-softmax = sum of the two heads'


# ----------------------------------------------------------------------------------------------
# inputs


def to_side(clips, name: str = "samples") -> torch.Tensor:
    """Clips ``(N, T, 1, H, W)`` in [0, 1] -> float64 ``(N, T, 32, 32)``: each frame resized
    bilinearly with antialiasing when it is not 32x32."""
    x = clips.detach().cpu().to(torch.float64) if isinstance(clips, torch.Tensor) \
        else torch.as_tensor(np.asarray(clips, np.float64))
    if x.ndim != 5 or x.shape[2] != 1 or min(x.shape[3:]) < 8 or len(x) < 1:
        raise ValueError(f"{name}: the moving-digits readers need greyscale clips (N, T, 1, H, W) with H, W >= 8, "
                         f"got shape {tuple(x.shape)}")
    n, t = x.shape[:2]
    frames = x.reshape(n * t, 1, *x.shape[3:])
    if tuple(x.shape[3:]) != (SIDE, SIDE):
        frames = F.interpolate(frames, size=(SIDE, SIDE), mode="bilinear", align_corners=False, antialias=True)
    return frames.reshape(n, t, SIDE, SIDE)


def _dataset_clips(split: str, settings: dict):
    """The clips (float32 (N, T, 32, 32) in [0, 1]) and the dataset of a moving-digits split."""
    ds = _data.load(split, **settings)
    if tuple(ds.shape[1:]) == (1, SIDE, SIDE):
        return ds.storage[:, :, 0].to(torch.float32) / float(ds.max_value), ds
    return to_side(ds.to_unit(ds.get(slice(None))), split).to(torch.float32), ds


def _data_digest(split: str, settings: dict) -> str:
    """sha256 over a split's stored clips and ground truth (what the networks are trained on)."""
    key = (split, json.dumps(settings, sort_keys=True))
    if key not in _DIGESTS:
        ds = _data.load(split, **settings)
        h = hashlib.sha256()
        for t in (ds.storage, ds.labels, ds.digits, ds.velocities):
            h.update(np.ascontiguousarray(t.numpy()).tobytes())
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _weights_path(name: str, recipe: str, hp: dict) -> str:
    """The cache file of a network: named by a sha256 over its training data, recipe and settings."""
    key = (name, cache_dir(), json.dumps(hp, sort_keys=True))
    if key not in _PATHS:
        h = hashlib.sha256(f"{_data_digest('moving-digits', hp['dataset'])}|{recipe}|{key[2]}".encode())
        _PATHS[key] = os.path.join(cache_dir(), f"{name}_{h.hexdigest()[:20]}.safetensors")
    return _PATHS[key]


# ----------------------------------------------------------------------------------------------
# the frame reader


def _frame_phases(n: int, t: int, k: int) -> np.ndarray:
    """``k`` frame indices per clip, evenly spaced, the phase rotating from clip to clip: (n, k)."""
    k = min(k, t)
    stride = t // k
    return (np.arange(n)[:, None] % stride + stride * np.arange(k)[None, :]) % t


def reader_data(split: str = "moving-digits", hp: dict | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The reader's frames (float32 (M, 1, 32, 32) in [0, 1]) and digit-set labels from ``split``:
    ``frames_per_clip`` frames of every clip (``_frame_phases``)."""
    hp = READER_HPARAMS if hp is None else hp
    clips, ds = _dataset_clips(split, hp["dataset"])
    idx = _frame_phases(len(clips), clips.shape[1], hp["frames_per_clip"])
    frames = clips[torch.arange(len(clips))[:, None], torch.as_tensor(idx)]  # (N, k, 32, 32)
    labels = np.repeat(ds.labels.numpy(), idx.shape[1])
    return frames.reshape(-1, 1, SIDE, SIDE), labels


def _train_reader(frames: torch.Tensor, labels, hp: dict) -> FrameNet:
    with deterministic(hp["threads"]):
        net = FrameNet(hp["channels"], hp["features"])
        return train_classifier(net, frames, torch.as_tensor(labels, dtype=torch.int64), hp)


def _reader() -> FrameNet:
    """The trained frame reader (float32: its readings are compared, not summed into statistics):
    memoised, else loaded from the cache, else trained."""
    hp = READER_HPARAMS
    return cached_network(_MEMO_READER, _weights_path("video_frame_reader", READER_RECIPE, hp),
                          lambda: FrameNet(hp["channels"], hp["features"]),
                          lambda: _train_reader(*reader_data(hp=hp), hp),
                          {"recipe": READER_RECIPE, "hparams": hp}, "moving-digits frame reader")["net"]


def frame_probabilities(clips, *, batch_size: int = 1024) -> np.ndarray:
    """The frame reader's probabilities of the 65 digit sets (``SET_NAMES``) in every frame of
    clips ``(N, T, 1, H, W)`` in [0, 1]: ``(N, T, 65)`` float64."""
    x = to_side(clips)
    n, t = x.shape[:2]
    net = _reader()
    flat = x.reshape(n * t, 1, SIDE, SIDE).to(torch.float32)
    with torch.no_grad():
        probs = torch.cat([torch.softmax(net(flat[i:i + batch_size]).double(), 1)
                           for i in range(0, len(flat), batch_size)])
    return probs.numpy().reshape(n, t, -1)


def reader_accuracy(split: str = "moving-digits:heldout") -> dict:
    """The frame reader's exact-set accuracy on every frame of ``split`` (default: the clips made
    of held-out digit images), for all frames and for one- and two-digit clips."""
    clips, ds = _dataset_clips(split, READER_HPARAMS["dataset"])
    read = frame_probabilities(clips[:, :, None]).argmax(2)
    truth = ds.labels.numpy()
    hit = read == truth[:, None]
    two = np.asarray(ds.digits)[:, 1] >= 0
    return {"frames": float(hit.mean()), "one_digit": float(hit[~two].mean()) if (~two).any() else None,
            "two_digits": float(hit[two].mean()) if two.any() else None, "clips": len(clips)}


# ----------------------------------------------------------------------------------------------
# the clip classifier


def clip_data(split: str = "moving-digits", hp: dict | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The clip classifier's film strips (float32 (N, 1, T * 32, 32)) and joint labels
    ``set * 8 + direction`` from ``split``."""
    hp = CLIP_HPARAMS if hp is None else hp
    clips, ds = _dataset_clips(split, hp["dataset"])
    labels = ds.labels.numpy() * DIRECTIONS + first_digit_direction(ds.digits, ds.velocities)
    return clips.reshape(len(clips), 1, -1, SIDE), labels


def _train_clip(strips: torch.Tensor, labels, hp: dict) -> ClipNet:
    with deterministic(hp["threads"]):
        net = ClipNet(hp["channels"], hp["features"])
        return train_classifier(net, strips, torch.as_tensor(labels, dtype=torch.int64), hp)


def _clip_net() -> ClipNet:
    hp = CLIP_HPARAMS
    entry = cached_network(_MEMO_CLIP, _weights_path("video_clip_classifier", CLIP_RECIPE, hp),
                           lambda: ClipNet(hp["channels"], hp["features"]), lambda: _train_clip(*clip_data(hp=hp), hp),
                           {"recipe": CLIP_RECIPE, "hparams": hp}, "moving-digits clip classifier")
    if "net64" not in entry:
        entry["net64"] = copy.deepcopy(entry["net"]).double().eval()
    return entry["net64"]


def clip_features(clips, *, batch_size: int = 64) -> np.ndarray:
    """The clip classifier's 128-d features (float64) of clips ``(N, T, 1, H, W)`` in [0, 1]."""
    x = to_side(clips)
    net = _clip_net()
    with torch.no_grad():
        return torch.cat([net.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def clip_classifier_accuracy(split: str = "moving-digits:heldout") -> dict:
    """The clip classifier's held-out accuracies on ``split``: digit set, motion direction, both."""
    strips, labels = clip_data(split)
    net = _clip_net()
    with torch.no_grad():
        s, d = zip(*(net.heads(net.features(strips[i:i + 64].double())) for i in range(0, len(strips), 64)))
    s, d = torch.cat(s).argmax(1).numpy(), torch.cat(d).argmax(1).numpy()
    ok_s, ok_d = s == labels // DIRECTIONS, d == labels % DIRECTIONS
    return {"set": float(ok_s.mean()), "direction": float(ok_d.mean()), "both": float((ok_s & ok_d).mean()),
            "clips": len(labels)}
