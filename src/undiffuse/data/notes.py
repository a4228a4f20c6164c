"""``notes`` and ``chords``: procedural instrument sounds, synthesised in numpy (always available,
nothing installed).

``notes[:pitch|:timbre|:envelope|:octave]``: every combination of 12 pitch classes (C, C#, ... B),
3 octaves (3-5, so
130.8 Hz to 987.8 Hz at equal temperament, A4 = 440 Hz), 5 timbres and 3 envelopes, in
:data:`TAKES` takes that draw a detune (+-15 cents), a duration (0.35-0.9 s) and a level from
a generator seeded by the combination: 12 x 3 x 5 x 3 x 4 = 2,160 clips. The suffix chooses
the class labels (default: the pitch class); every factor of each clip is in ``info["factors"]``.

``chords[:quality|:root|:timbre]``: triads of :data:`QUALITIES` (major, minor, diminished,
augmented, suspended fourth) on each of the 12 roots, in each timbre and envelope, in
:data:`CHORD_TAKES` takes that draw the root's octave (3 or 4), the inversion (root position,
first or second), the detune of each note, the duration and the level: 12 x 5 x 5 x 3 x 2 =
1,800 clips, labelled by quality unless the suffix says otherwise.

Every clip has three captions, each naming all its factors ("C#4 on a clarinet, fading in", "A minor
chord on a bell, struck") in at most 16 word pieces (the text encoder's default length), so
``--conditioning text`` learns from them.

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
from undiffuse.data.base import DataError, Dataset

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
OCTAVES = (3, 4, 5)
TIMBRES = ("sine", "clarinet", "saw", "bell", "pluck")
ENVELOPES = ("percussive", "sustained", "swell")
TAKES = 4
QUALITIES = {"major": (0, 4, 7), "minor": (0, 3, 7), "diminished": (0, 3, 6), "augmented": (0, 4, 8),
             "sus4": (0, 5, 7)}
CHORD_TAKES = 2
NOTE_LABELS = ("pitch", "timbre", "envelope", "octave")
CHORD_LABELS = ("quality", "root", "timbre")
SPOKEN = {"C#": "C sharp", "D#": "D sharp", "F#": "F sharp", "G#": "G sharp", "A#": "A sharp"}
INSTRUMENT = {"sine": "a sine tone", "clarinet": "a clarinet", "saw": "a sawtooth synth", "bell": "a bell",
              "pluck": "a plucked string"}
MANNER = {"percussive": ("struck", "percussive"), "sustained": ("held", "sustained"), "swell": ("swelling", "fading in")}
LICENCE = "synthesised by undiffuse (no third-party material)"
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


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256("|".join(map(str, key)).encode()).digest()[:8], "little"))


def _tone(freqs, timbre: str, envelope: str, duration: float, level: float, rng, sample_rate: int) -> np.ndarray:
    t = np.arange(int(duration * sample_rate)) / sample_rate
    x = np.zeros_like(t)
    for f in freqs:
        phases = rng.uniform(0, 2 * np.pi, size=64)
        x = x + sum(a * np.exp(-d * t) * np.sin(2 * np.pi * fk * t + phases[i])
                    for i, (fk, a, d) in enumerate(_partials(timbre, f, sample_rate / 2)))
    return x * _envelope(envelope, t, duration) * level


def synthesise(pitch_class: int, octave: int, timbre: str, envelope: str, take: int, sample_rate: int) -> np.ndarray:
    """One note as a float64 signal (before fitting to the clip)."""
    rng = _rng(pitch_class, octave, timbre, envelope, take)
    f = frequency(pitch_class, octave) * 2 ** (rng.uniform(-15, 15) / 1200)
    duration = rng.uniform(0.35, 0.9)
    phases = rng.uniform(0, 2 * np.pi, size=64)
    t = np.arange(int(duration * sample_rate)) / sample_rate
    x = sum(a * np.exp(-d * t) * np.sin(2 * np.pi * fk * t + phases[i])
            for i, (fk, a, d) in enumerate(_partials(timbre, f, sample_rate / 2)))
    return x * _envelope(envelope, t, duration) * rng.uniform(0.5, 1.0)


def chord_pitches(root: int, quality: str, octave: int, inversion: int) -> list[tuple[int, int]]:
    """(pitch class, octave) of a triad's notes, lowest first; an inversion moves the lowest
    ``inversion`` notes up an octave."""
    notes = [(root + i) for i in QUALITIES[quality]]  # semitones above C of the root's octave
    for k in range(inversion):
        notes[k] += 12
    return [(n % 12, octave + n // 12) for n in sorted(notes)]


def synthesise_chord(root: int, quality: str, timbre: str, envelope: str, take: int,
                     sample_rate: int) -> np.ndarray:
    """One triad as a float64 signal: its notes detuned apart, summed and scaled to one note's level."""
    rng = _rng("chord", root, quality, timbre, envelope, take)
    octave, inversion = int(rng.integers(3, 5)), int(rng.integers(0, 3))
    freqs = [frequency(pc, o) * 2 ** (rng.uniform(-8, 8) / 1200) for pc, o in chord_pitches(root, quality, octave,
                                                                                             inversion)]
    return _tone(freqs, timbre, envelope, rng.uniform(0.5, 0.9), rng.uniform(0.5, 1.0) / 3, rng, sample_rate)


def note_captions(pitch_class: int, octave: int, timbre: str, envelope: str) -> list[str]:
    """Wordings of one note, each naming its pitch, octave, timbre and envelope."""
    name = NOTE_NAMES[pitch_class]
    said, (verb, manner) = SPOKEN.get(name, name), MANNER[envelope]
    return [f"{name}{octave} on {INSTRUMENT[timbre]}, {manner}",
            f"{INSTRUMENT[timbre]} playing {said} in octave {octave}, {verb}",
            f"{timbre}, {name}{octave}, {envelope}"]


def chord_captions(root: int, quality: str, timbre: str, envelope: str) -> list[str]:
    """Wordings of one chord, each naming its root, quality, timbre and envelope."""
    name = NOTE_NAMES[root]
    said, verb = SPOKEN.get(name, name), MANNER[envelope][0]
    kind = "suspended fourth" if quality == "sus4" else quality
    return [f"{said} {kind} chord on {INSTRUMENT[timbre]}, {verb}",
            f"{INSTRUMENT[timbre]} playing a {name} {quality} triad, {verb}",
            f"{timbre}, {name} {quality} chord, {envelope}"]


def _label_choice(spec: str, allowed: tuple[str, ...]) -> str:
    name, _, label = spec.partition(":")
    label = label or allowed[0]
    if label not in allowed:
        raise DataError(f"{spec}: unknown labels {label!r}; allowed: "
                        + ", ".join(f"{name}:{a}" for a in allowed) + f" ({name} alone means {name}:{allowed[0]})")
    return label


def load_notes(spec: str, sample_rate: int, representation: str) -> Dataset:
    """Every note of the recipe, fitted to the clip (``data.audio.fit_clip``), labelled by the
    factor the suffix names."""
    label = _label_choice(spec, NOTE_LABELS)
    pcm, pitch, f = _render(sample_rate)
    factors = {"pitch": [NOTE_NAMES[p] for p in pitch], "octave": f[:, 0].tolist(),
               "timbre": [TIMBRES[i] for i in f[:, 1]], "envelope": [ENVELOPES[i] for i in f[:, 2]]}
    labels, names = {"pitch": (pitch, NOTE_NAMES), "timbre": (f[:, 1], TIMBRES), "envelope": (f[:, 2], ENVELOPES),
                     "octave": (f[:, 0] - OCTAVES[0], [str(o) for o in OCTAVES])}[label]
    caps = [note_captions(int(p), int(o), TIMBRES[t], ENVELOPES[e]) for p, (o, t, e) in zip(pitch, f)]
    source = (f"{len(pcm)} synthesised notes (12 pitch classes x {len(OCTAVES)} octaves x {len(TIMBRES)} timbres x "
              f"{len(ENVELOPES)} envelopes x {TAKES} takes, labelled by {label}) at {sample_rate} Hz, "
              f"{pcm.shape[1]}-sample clips")
    return make_dataset(spec, pcm, labels, list(names), source, sample_rate, representation, captions=caps,
                        info={"factors": factors, "labels": label, "licence": LICENCE})


def load_chords(spec: str, sample_rate: int, representation: str) -> Dataset:
    """Every chord of the recipe, fitted to the clip, labelled by the factor the suffix names."""
    label = _label_choice(spec, CHORD_LABELS)
    pcm, f = _render_chords(sample_rate)
    qualities = list(QUALITIES)
    factors = {"root": [NOTE_NAMES[i] for i in f[:, 0]], "quality": [qualities[i] for i in f[:, 1]],
               "timbre": [TIMBRES[i] for i in f[:, 2]], "envelope": [ENVELOPES[i] for i in f[:, 3]]}
    labels, names = {"quality": (f[:, 1], qualities), "root": (f[:, 0], NOTE_NAMES), "timbre": (f[:, 2], TIMBRES)}[label]
    caps = [chord_captions(int(r), qualities[q], TIMBRES[t], ENVELOPES[e]) for r, q, t, e in f]
    source = (f"{len(pcm)} synthesised triads (12 roots x {len(QUALITIES)} qualities x {len(TIMBRES)} timbres x "
              f"{len(ENVELOPES)} envelopes x {CHORD_TAKES} takes, labelled by {label}) at {sample_rate} Hz, "
              f"{pcm.shape[1]}-sample clips")
    return make_dataset(spec, pcm, labels, list(names), source, sample_rate, representation, captions=caps,
                        info={"factors": factors, "labels": label, "licence": LICENCE})


@functools.lru_cache(maxsize=2)
def _render_chords(sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Every chord as int16 clips and its (root, quality, timbre, envelope) indices; memoised."""
    clip = clip_samples_for(sample_rate)
    clips, factors = [], []
    for root in range(12):
        for qi, quality in enumerate(QUALITIES):
            for ti, timbre in enumerate(TIMBRES):
                for ei, envelope in enumerate(ENVELOPES):
                    for take in range(CHORD_TAKES):
                        x = synthesise_chord(root, quality, timbre, envelope, take, sample_rate)
                        clips.append(to_pcm16(fit_clip(x, sample_rate, clip)))
                        factors.append((root, qi, ti, ei))
    pcm = np.stack(clips)
    pcm.flags.writeable = False
    return pcm, np.array(factors)


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
