"""``spoken-digits``: the words "zero" to "nine" spoken by Debian's speech engines.

Voices (:func:`voices`), all English:

* **espeak-ng**: 8 accents (American, British, Scottish, Lancaster, received pronunciation,
  West Midlands, Caribbean, New York City) x 10 voice variants (male m1-m7, female f1, f2, f4
  and f5 are drawn below; the variant sets pitch range, formants and breathiness): 80 voices.
  Each says each digit :data:`ESPEAK_TAKES` times, at a speed (words per minute) and a base
  pitch drawn per take from a generator seeded by the voice, digit and take.
* **flite**: its built-in voices ``kal``, ``kal16``, ``awb``, ``rms`` and ``slt``, each saying
  each digit :data:`FLITE_TAKES` times with a drawn duration stretch and mean pitch.

Held out for evaluation (``spoken-digits:heldout``): every espeak-ng voice with variant ``m3``
or ``f4`` (16 voices) and flite's ``awb``: :data:`HELDOUT`. ``spoken-digits`` is the rest,
``spoken-digits:all`` both. Labels are the digits 0-9.

Each take is rendered to a WAV by the engine (a few milliseconds), resampled to the sample
rate, trimmed of silence, peak-normalised and centred in the clip (``data.audio.fit_clip``).
The clips are cached by content (engine versions, voices, recipe, rate) under
``$UNDIFFUSE_CACHE/spoken-digits``; the first build of 3,000 clips takes about half a minute.

Licences: espeak-ng is GPL-3.0-or-later and flite is BSD-style (CMU, with the voices' own
free licences); the sounds they produce are not covered by the programs' licences.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from undiffuse.data.audio import clip_samples_for, fit_clip, make_dataset, resample, to_pcm16
from undiffuse.data.base import DataError, Dataset
from undiffuse.utils.atomic import write_atomic
from undiffuse.utils.cache import cache_dir

RECIPE = "spoken-digits-v1"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f4")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
ESPEAK_TAKES = 3
FLITE_TAKES = 12
HELDOUT = ("espeak-ng:*+m3", "espeak-ng:*+f4", "flite:awb")
SPLITS = ("train", "heldout", "all")
INSTALL = "sudo apt-get install espeak-ng flite"
LICENCE = "speech rendered by espeak-ng (GPL-3.0-or-later) and flite (BSD-style, CMU)"


@dataclass(frozen=True)
class Take:
    """One rendering: engine, voice, digit and the drawn prosody."""

    engine: str
    voice: str
    digit: int
    speed: float   # espeak-ng: words per minute; flite: duration stretch
    pitch: float   # espeak-ng: 0-99 base pitch; flite: mean F0 in Hz

    @property
    def voice_id(self) -> str:
        return f"{self.engine}:{self.voice}"

    @property
    def heldout(self) -> bool:
        return is_heldout(self.voice_id)


def is_heldout(voice_id: str) -> bool:
    engine, voice = voice_id.split(":", 1)
    for rule in HELDOUT:
        r_engine, r_voice = rule.split(":", 1)
        if engine == r_engine and (voice == r_voice or (r_voice.startswith("*") and voice.endswith(r_voice[1:]))):
            return True
    return False


def voices() -> list[str]:
    """Every voice id, ``engine:voice``."""
    return [f"espeak-ng:{a}+{v}" for a in ACCENTS for v in VARIANTS] + [f"flite:{v}" for v in FLITE_VOICES]


def takes(voice_ids: list[str] | None = None) -> list[Take]:
    """Every take of the recipe, in a fixed order, with its drawn prosody."""
    out = []
    for vid in voice_ids or voices():
        engine, voice = vid.split(":", 1)
        for digit in range(10):
            n = ESPEAK_TAKES if engine == "espeak-ng" else FLITE_TAKES
            for k in range(n):
                seed = int.from_bytes(hashlib.sha256(f"{vid}|{digit}|{k}".encode()).digest()[:8], "little")
                rng = np.random.default_rng(seed)
                if engine == "espeak-ng":
                    speed, pitch = float(rng.integers(130, 211)), float(rng.integers(25, 76))
                else:
                    speed, pitch = float(rng.uniform(0.8, 1.25)), float(rng.uniform(90, 190))
                out.append(Take(engine, voice, digit, round(speed, 3), round(pitch, 1)))
    return out


def _command(t: Take, path: str) -> list[str]:
    if t.engine == "espeak-ng":
        return ["espeak-ng", "-v", t.voice, "-s", str(int(t.speed)), "-p", str(int(t.pitch)), "-w", path, WORDS[t.digit]]
    return ["flite", "-voice", t.voice, "--setf", f"duration_stretch={t.speed}", "--setf",
            f"int_f0_target_mean={t.pitch}", "-t", WORDS[t.digit], "-o", path]


def render(t: Take, sample_rate: int, clip_samples: int, workdir: str) -> np.ndarray | None:
    """One take as a fitted float64 clip, or None if it came out silent or too long."""
    path = os.path.join(workdir, f"{t.engine}-{t.voice}-{t.digit}-{t.speed}-{t.pitch}.wav".replace("+", "_"))
    run = subprocess.run(_command(t, path), capture_output=True, timeout=60)
    if run.returncode != 0 or not os.path.exists(path):
        raise DataError(f"spoken-digits: {' '.join(_command(t, path))} failed (exit {run.returncode}): "
                        f"{run.stderr.decode(errors='replace').strip()[:300]}")
    with open(path, "rb") as f:
        data = f.read()
    os.remove(path)
    with wave.open(io.BytesIO(data)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    if width != 2:
        raise DataError(f"spoken-digits: {t.engine} wrote {8 * width}-bit audio; expected 16-bit PCM")
    x = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).mean(axis=1) / 32768.0
    return fit_clip(resample(x, rate, sample_rate), sample_rate, clip_samples)


def engine_versions() -> dict[str, str]:
    """The installed engines' version lines; a :class:`DataError` says how to install a missing one."""
    missing = [e for e in ("espeak-ng", "flite") if shutil.which(e) is None]
    if missing:
        raise DataError(f"spoken-digits needs the speech engines espeak-ng and flite; {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not installed. Install them with: {INSTALL}")
    out = {}
    for engine in ("espeak-ng", "flite"):
        run = subprocess.run([engine, "--version"], capture_output=True, text=True, timeout=30)
        out[engine] = " ".join((run.stdout + run.stderr).split())[:200]
    return out


def build(sample_rate: int, voice_ids: list[str] | None = None, workers: int | None = None) -> dict:
    """Render (or read from the cache) every take: ``pcm`` (N, clip) int16, ``labels``, ``voice``
    (index into ``voices``), ``voices`` and ``dropped`` (takes that came out too long)."""
    clip = clip_samples_for(sample_rate)
    voice_ids = list(voice_ids or voices())
    key = json.dumps({"recipe": RECIPE, "engines": engine_versions(), "voices": voice_ids, "rate": sample_rate,
                      "clip": clip, "takes": [ESPEAK_TAKES, FLITE_TAKES]}, sort_keys=True)
    path = os.path.join(cache_dir(), "spoken-digits", hashlib.sha256(key.encode()).hexdigest()[:20] + ".npz")
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    all_takes = takes(voice_ids)
    with tempfile.TemporaryDirectory(prefix="undiffuse-speech-") as tmp, \
            ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        clips = list(pool.map(lambda t: render(t, sample_rate, clip, tmp), all_takes))
    keep = [i for i, c in enumerate(clips) if c is not None]
    out = {"pcm": np.stack([to_pcm16(clips[i]) for i in keep]),
           "labels": np.array([all_takes[i].digit for i in keep], dtype=np.int64),
           "voice": np.array([voice_ids.index(all_takes[i].voice_id) for i in keep], dtype=np.int64),
           "voices": np.array(voice_ids), "dropped": np.array(len(all_takes) - len(keep))}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, lambda tmp: _savez(tmp, out))
    return out


def _savez(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_spoken_digits(spec: str, sample_rate: int, representation: str) -> Dataset:
    """``spoken-digits[:train|heldout|all]`` in a representation (``data.audio``)."""
    split = spec.split(":", 1)[1] if ":" in spec else "train"
    if split not in SPLITS:
        raise DataError(f"{spec}: unknown split {split!r}; allowed: spoken-digits, "
                        + ", ".join(f"spoken-digits:{s}" for s in SPLITS[1:]))
    built = build(sample_rate)
    names = [str(v) for v in built["voices"]]
    held = np.array([is_heldout(names[v]) for v in built["voice"]])
    keep = {"train": ~held, "heldout": held, "all": np.ones_like(held)}[split]
    voices_kept = sorted({names[v] for v in built["voice"][keep]})
    info = {"licence": LICENCE, "voices": voices_kept, "split": split, "recipe": RECIPE}
    source = (f"{int(keep.sum())} spoken digits ({split} split: {len(voices_kept)} voices of espeak-ng and flite) "
              f"at {sample_rate} Hz, {clip_samples_for(sample_rate)}-sample clips")
    return make_dataset(spec, built["pcm"][keep], built["labels"][keep], list(WORDS), source, sample_rate,
                        representation, info=info)
