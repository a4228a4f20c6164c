"""``notes``: procedural instrument notes, synthesised in numpy (always available, nothing installed).

Every combination of 12 pitch classes (C, C#, ... B; the class labels), 3 octaves (3-5, so
130.8 Hz to 987.8 Hz at equal temperament, A4 = 440 Hz), 5 timbres and 3 envelopes, in
:data:`TAKES` takes that draw a detune (+-15 cents), a duration (0.35-0.9 s) and a level from
a generator seeded by the combination: 12 x 3 x 5 x 3 x 4 = 2,160 clips. The timbre, envelope
and octave of each clip are in ``info["factors"]``.

Timbres (partials above 0.45 of the sample rate are left out, so nothing aliases):

* ``sine``: the fundamental alone;
* ``clarinet``: odd harmonics at 1/k amplitude;
* ``saw``: every harmonic at 1/k;
* ``bell``: the inharmonic partials 0.56, 0.92, 1.19, 1.71, 2, 2.74, 3, 3.76 x f, higher ones
  decaying faster;
* ``pluck``: harmonics at 1/k^1.5, each decaying at a rate growing with k (a plucked string).

Envelopes: ``percussive`` (5 ms attack, exponential decay), ``sustained`` (20 ms attack,
decay to 70 %, 60 ms release), ``swell`` (a raised-cosine rise over 60 % of the note).
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np

from undiffuse.data.audio import clip_samples_for, fit_clip, make_dataset, to_pcm16
from undiffuse.data.base import Dataset

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
OCTAVES = (3, 4, 5)
TIMBRES = ("sine", "clarinet", "saw", "bell", "pluck")
ENVELOPES = ("percussive", "sustained", "swell")
TAKES = 4
BELL = (0.56, 0.92, 1.19, 1.71, 2.0, 2.74, 3.0, 3.76)


def frequency(pitch_class: int, octave: int) -> float:
    """Equal temperament with A4 = 440 Hz."""
    return 440.0 * 2 ** ((pitch_class - 9) / 12 + (octave - 4))


def _partials(timbre: str, f: float, nyquist: float) -> list[tuple[float, float, float]]:
    """(frequency, amplitude, extra decay per second) of each partial below 0.9 x Nyquist."""
    if timbre == "sine":
        parts = [(f, 1.0, 0.0)]
    elif timbre == "clarinet":
        parts = [(k * f, 1.0 / k, 0.0) for k in range(1, 40, 2)]
    elif timbre == "saw":
        parts = [(k * f, 1.0 / k, 0.0) for k in range(1, 40)]
    elif timbre == "bell":
        parts = [(r * f, 1.0 / (1 + i), 1.5 * r) for i, r in enumerate(BELL)]
    else:
        parts = [(k * f, 1.0 / k ** 1.5, 2.0 * k) for k in range(1, 40)]
    return [p for p in parts if p[0] < 0.9 * nyquist]


def _envelope(kind: str, t: np.ndarray, duration: float) -> np.ndarray:
    if kind == "percussive":
        return np.minimum(t / 0.005, 1.0) * np.exp(-t * 5.0 / duration)
    if kind == "sustained":
        attack = np.minimum(t / 0.02, 1.0)
        body = np.where(t < 0.12, 1.0 - 0.3 * (t - 0.02).clip(0) / 0.1, 0.7)
        release = np.clip((duration - t) / 0.06, 0.0, 1.0)
        return attack * body * release
    rise = 0.5 - 0.5 * np.cos(np.pi * np.clip(t / (0.6 * duration), 0.0, 1.0))
    return rise * np.clip((duration - t) / 0.05, 0.0, 1.0)


def synthesise(pitch_class: int, octave: int, timbre: str, envelope: str, take: int, sample_rate: int) -> np.ndarray:
    """One note as a float64 signal (before fitting to the clip)."""
    seed = int.from_bytes(hashlib.sha256(f"{pitch_class}|{octave}|{timbre}|{envelope}|{take}".encode()).digest()[:8],
                          "little")
    rng = np.random.default_rng(seed)
    f = frequency(pitch_class, octave) * 2 ** (rng.uniform(-15, 15) / 1200)
    duration = rng.uniform(0.35, 0.9)
    t = np.arange(int(duration * sample_rate)) / sample_rate
    phases = rng.uniform(0, 2 * np.pi, size=64)
    x = sum(a * np.exp(-d * t) * np.sin(2 * np.pi * fk * t + phases[i])
            for i, (fk, a, d) in enumerate(_partials(timbre, f, sample_rate / 2)))
    return x * _envelope(envelope, t, duration) * rng.uniform(0.5, 1.0)


def load_notes(spec: str, sample_rate: int, representation: str) -> Dataset:
    """Every note of the recipe, fitted to the clip (``data.audio.fit_clip``)."""
    pcm, labels, f = _render(sample_rate)
    info = {"factors": {"octave": f[:, 0].tolist(), "timbre": [TIMBRES[i] for i in f[:, 1]],
                        "envelope": [ENVELOPES[i] for i in f[:, 2]]},
            "licence": "synthesised by undiffuse (no third-party material)"}
    source = (f"{len(pcm)} synthesised notes (12 pitch classes x {len(OCTAVES)} octaves x {len(TIMBRES)} timbres x "
              f"{len(ENVELOPES)} envelopes x {TAKES} takes) at {sample_rate} Hz, {pcm.shape[1]}-sample clips")
    return make_dataset(spec, pcm, labels, list(NOTE_NAMES), source, sample_rate, representation, info=info)


@functools.lru_cache(maxsize=2)
def _render(sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every note as int16 clips, its pitch class and its (octave, timbre, envelope) indices;
    memoised in the process (a few seconds of synthesis)."""
    clip = clip_samples_for(sample_rate)
    clips, labels, factors = [], [], []
    for pc in range(12):
        for octave in OCTAVES:
            for ti, timbre in enumerate(TIMBRES):
                for ei, envelope in enumerate(ENVELOPES):
                    for take in range(TAKES):
                        fitted = fit_clip(synthesise(pc, octave, timbre, envelope, take, sample_rate), sample_rate, clip)
                        clips.append(to_pcm16(fitted))
                        labels.append(pc)
                        factors.append((octave, ti, ei))
    pcm = np.stack(clips)
    pcm.flags.writeable = False
    return pcm, np.array(labels, dtype=np.int64), np.array(factors)
