"""The in-project spoken-digit classifier: features, class probabilities and scores for sound.

It plays the part of the classifier-based FID of DiffWave's SC09 results: a small CNN over the
log-mel spectrogram of a clip (``data.spectral``, 64 bands x 64 frames), trained on the
training voices of ``spoken-digits`` at the clips' sample rate and checked on the held-out
voices (:func:`heldout_accuracy`). Its 128-d penultimate activations are the features of
``fd``, its readings give class ``adherence`` and :func:`inception_score`.

Before the transform every clip is scaled to the data's peak level (``data.audio.PEAK``), so
a quiet or loud sample is read like the training clips; a silent clip stays silent.

Training (``trained.train_classifier``, deterministic on one thread): the normalised log-mel
mapped to [0, 1], shifted by up to 3 frames / bands, with N(0, 0.03^2) noise, 15 epochs of
AdamW under a one-cycle schedule. Weights are cached by content hash (the training clips,
recipe and settings) under ``$UNDIFFUSE_CACHE``; training takes about a minute on one core.
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
from undiffuse.data.audio import PEAK, mel_spec_for
from undiffuse.utils.cache import cache_dir

from .trained import cached_network, deterministic, train_classifier

RECIPE = "undiffuse-spoken-digit-features-v1"
HPARAMS = {"channels": 32, "features": 128, "epochs": 15, "batch": 64, "lr": 2e-3, "weight_decay": 1e-4,
           "shift": 3, "pixel_noise": 0.03, "seed": 0, "threads": 1}

_MEMO: dict = {}


class SpeechNet(nn.Module):
    """Three conv + pool stages over a (1, 64, 64) log-mel picture, then a 128-d feature layer."""

    def __init__(self, channels: int = 32, features: int = 128, classes: int = 10):
        super().__init__()
        c = channels
        self.convs = nn.ModuleList([nn.Conv2d(1, c, 3, padding=1), nn.Conv2d(c, 2 * c, 3, padding=1),
                                    nn.Conv2d(2 * c, 4 * c, 3, padding=1)])
        self.fc = nn.Linear(4 * c * 8 * 8, features)
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.fc.weight.dtype)
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def log_mel(waves, sample_rate: int) -> torch.Tensor:
    """Waveforms ``(N, 1, T)`` or ``(N, T)`` -> the classifier's input ``(N, 1, 64, 64)`` in [0, 1]."""
    w = torch.as_tensor(np.asarray(waves), dtype=torch.float64).reshape(len(waves), -1)
    spec = mel_spec_for(sample_rate)
    if w.shape[1] != spec.clip_samples:
        raise ValueError(f"clips of {w.shape[1]} samples cannot be read at {sample_rate} Hz; the classifier reads "
                         f"{spec.clip_samples}-sample clips")
    peak = w.abs().amax(dim=1, keepdim=True)
    w = torch.where(peak > 0, w * (PEAK / peak.clamp_min(1e-12)), w)
    out = [spec.encode(w[i:i + 256]) for i in range(0, len(w), 256)]
    return (torch.cat(out) + 1) / 2


def _training_set(sample_rate: int):
    ds = _data.load("spoken-digits", sample_rate=sample_rate)
    return ds.get(slice(None)), ds.labels


def weights_path(sample_rate: int) -> str:
    waves, labels = _training_set(sample_rate)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray((waves * 32768).round().numpy().astype(np.int16)).tobytes())
    h.update(labels.numpy().astype(np.int64).tobytes())
    h.update(f"{RECIPE}|{sample_rate}|{json.dumps(HPARAMS, sort_keys=True)}".encode())
    return os.path.join(cache_dir(), f"speech_features_{h.hexdigest()[:20]}.safetensors")


def _train(sample_rate: int, hp: dict = HPARAMS) -> SpeechNet:
    waves, labels = _training_set(sample_rate)
    with deterministic(hp["threads"]):
        net = SpeechNet(hp["channels"], hp["features"])
        return train_classifier(net, log_mel(waves, sample_rate).to(torch.float32), labels, hp)


def _extractor(sample_rate: int) -> SpeechNet:
    entry = cached_network(_MEMO, weights_path(sample_rate),
                           lambda: SpeechNet(HPARAMS["channels"], HPARAMS["features"]), lambda: _train(sample_rate),
                           {"recipe": RECIPE, "hparams": HPARAMS, "sample_rate": sample_rate}, "spoken-digit feature")
    if "net64" not in entry:
        entry["net64"] = copy.deepcopy(entry["net"]).double().eval()
    return entry["net64"]


def _run(waves, sample_rate: int, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    net = _extractor(sample_rate)  # trained outside no_grad when not cached yet
    x = log_mel(waves, sample_rate)
    feats, probs = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            f = net.features(x[i:i + batch_size])
            feats.append(f)
            probs.append(torch.softmax(net.head(f), dim=1))
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def speech_features(waves, sample_rate: int = 8000) -> np.ndarray:
    """128-d features (float64) of waveforms ``(N, 1, T)`` in [-1, 1]."""
    return _run(waves, sample_rate)[0]


def speech_probabilities(waves, sample_rate: int = 8000) -> np.ndarray:
    """``(N, 10)`` class probabilities (digit 0-9) of waveforms."""
    return _run(waves, sample_rate)[1]


def inception_score(probs: np.ndarray) -> float:
    """``exp(mean KL(p(y|x) || p(y)))``: 1 for identical readings, up to the number of classes
    for confident readings spread evenly over the classes."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    marginal = p.mean(axis=0, keepdims=True)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))


def heldout_accuracy(sample_rate: int = 8000) -> float:
    """The classifier's accuracy on the held-out voices (``spoken-digits:heldout``)."""
    ds = _data.load("spoken-digits:heldout", sample_rate=sample_rate)
    probs = speech_probabilities(ds.get(slice(None)).numpy(), sample_rate)
    return float((probs.argmax(1) == ds.labels.numpy()).mean())
