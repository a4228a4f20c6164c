"""Sound as data: clips of a fixed length at one sample rate, as waveforms or log-mel spectrograms.

An audio :class:`~undiffuse.data.base.Dataset` has ``kind == "audio"`` and its
``info["audio"]`` (:func:`audio_info`) says what a sample is:

* ``representation "wave"``: shape ``(1, clip_samples)``, stored as 16-bit PCM, ``get``
  returns floats in ``[-1, 1)``;
* ``representation "mel"``: shape ``(1, n_mels, frames)``, the normalised log-mel of each clip
  (:class:`~undiffuse.data.spectral.MelSpec`), stored as float32 in ``[-1, 1]``; a sample turns
  back into sound through :func:`to_waveform`.

Clips are fitted to the clip length by :func:`fit_clip`: silence at both ends (frames of 10 ms
quieter than 40 dB below the loudest) is trimmed, the sound is scaled to a peak of
:data:`PEAK` and centred in the clip. A sound longer than the clip is refused by the caller.

The default rate is 8 kHz with clips of 8192 samples (1.024 s): speech is intelligible in the
telephone band (300-3400 Hz, below 4 kHz), and a network over 8192 samples costs half of one
over 16384. ``sample_rate`` 16000 gives 16384-sample clips.
"""
from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly

from undiffuse.data.base import DataError, Dataset, DataWarning
from undiffuse.data.captions import folder_captions, is_caption_file
from undiffuse.data.images import IMAGE_EXTENSIONS
from undiffuse.data.spectral import MelSpec

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
REPRESENTATIONS = ("wave", "mel")
SAMPLE_RATES = (8000, 16000)
PEAK = 0.9
SILENCE_DB = -40.0


def clip_samples_for(sample_rate: int) -> int:
    """The clip length at a sample rate: the power of two at or just above one second."""
    if sample_rate not in SAMPLE_RATES:
        raise DataError(f"sample rate {sample_rate!r} is not supported; allowed: "
                        f"{', '.join(map(str, SAMPLE_RATES))}")
    return 1 << math.ceil(math.log2(sample_rate))


def mel_spec_for(sample_rate: int) -> MelSpec:
    """The log-mel settings of a sample rate: 32 ms windows, 16 ms hops, 64 mel bands."""
    clip = clip_samples_for(sample_rate)
    n_fft = 256 * sample_rate // 8000
    return MelSpec(sample_rate=sample_rate, clip_samples=clip, n_fft=n_fft, hop=n_fft // 2, n_mels=64)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling of a 1-D float signal (a Kaiser-windowed low-pass, scipy)."""
    if rate_in == rate_out:
        return x.astype(np.float64)
    ratio = Fraction(rate_out, rate_in)
    return resample_poly(x.astype(np.float64), ratio.numerator, ratio.denominator)


def trim_silence(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """``x`` without its leading and trailing 10 ms frames quieter than :data:`SILENCE_DB` below
    the loudest frame (empty if ``x`` is silent)."""
    frame = max(1, sample_rate // 100)
    n = len(x) // frame
    if n == 0:
        return x[:0] if not np.any(x) else x
    rms = np.sqrt(np.mean(x[:n * frame].reshape(n, frame) ** 2, axis=1))
    if rms.max() <= 0:
        return x[:0]
    loud = np.nonzero(rms >= rms.max() * 10 ** (SILENCE_DB / 20))[0]
    return x[loud[0] * frame:min(len(x), (loud[-1] + 1) * frame)]


def fit_clip(x: np.ndarray, sample_rate: int, clip_samples: int) -> np.ndarray | None:
    """Trimmed, peak-normalised to :data:`PEAK` and centred in ``clip_samples`` zeros (float64);
    None if the sound is silent or longer than the clip."""
    x = trim_silence(np.asarray(x, dtype=np.float64), sample_rate)
    if len(x) == 0 or len(x) > clip_samples:
        return None
    out = np.zeros(clip_samples)
    start = (clip_samples - len(x)) // 2
    out[start:start + len(x)] = x * (PEAK / np.abs(x).max())
    return out


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Floats in [-1, 1] -> int16 (rounded, clipped)."""
    return np.clip(np.round(np.asarray(x) * 32768.0), -32768, 32767).astype(np.int16)


def audio_info(sample_rate: int, representation: str, mel: MelSpec | None = None) -> dict:
    """What a run records of its audio: rate, clip length, representation and mel settings."""
    info = {"sample_rate": sample_rate, "clip_samples": clip_samples_for(sample_rate),
            "representation": representation}
    if representation == "mel":
        info["mel"] = (mel or mel_spec_for(sample_rate)).to_dict()
    return info


def make_dataset(name: str, pcm: np.ndarray, labels, class_names, source: str, sample_rate: int,
                 representation: str, info: dict | None = None, captions=None) -> Dataset:
    """An audio Dataset from int16 clips ``(N, clip_samples)`` in the chosen representation."""
    if representation not in REPRESENTATIONS:
        raise DataError(f"audio representation {representation!r} is not supported; allowed: "
                        f"{', '.join(REPRESENTATIONS)}")
    a = audio_info(sample_rate, representation)
    wave = torch.tensor(pcm, dtype=torch.int16)[:, None]  # a copy: the caller may keep (and memoise) its array
    lab = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
    extra = {**(info or {}), "audio": a}
    if representation == "wave":
        return Dataset(name, "audio", (1, a["clip_samples"]), lab, list(class_names), source, wave, 32768.0,
                       captions=captions, info=extra)
    mel = MelSpec.from_dict(a["mel"])
    spec = torch.cat([mel.encode(wave[i:i + 256].to(torch.float32) / 32768.0) for i in range(0, len(wave), 256)])
    return Dataset(name, "audio", mel.shape, lab, list(class_names), source + f"; log-mel {mel.n_mels}x{mel.frames}",
                   spec, None, captions=captions, info=extra)


def to_waveform(x: torch.Tensor, audio: dict, iterations: int = 64) -> torch.Tensor:
    """Samples in a run's representation -> waveforms ``(B, 1, clip_samples)`` in [-1, 1]."""
    if audio["representation"] == "mel":
        return MelSpec.from_dict(audio["mel"]).decode(x, iterations=iterations)
    return x.reshape(len(x), 1, -1).clamp(-1, 1).to(torch.float32)


# ----------------------------------------------------------------------------- folders


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """A file's mono float64 signal and its sample rate; a :class:`DataError` names the file and
    the reason when it cannot be read or holds no samples."""

    try:
        data, rate = soundfile.read(path, dtype="float64", always_2d=True)
    except Exception as e:  # libsndfile raises RuntimeError / LibsndfileError for corrupt data
        raise DataError(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from e
    if data.size == 0:
        raise DataError(f"{path}: the file holds no audio samples")
    return data.mean(axis=1), int(rate)


def audio_folder(spec: str, root: str, sample_rate: int, representation: str, strict: bool) -> Dataset:
    """Every usable sound file under ``root`` (sorted; class sub-folders as labels, captions as for
    images), resampled, trimmed and centred in the clip. Bad, silent or too-long files are
    skipped with a warning naming them (an error with ``strict``)."""
    clip = clip_samples_for(sample_rate)

    def bad(rel: str, reason: str) -> None:
        if strict:
            raise DataError(f"{os.path.join(root, rel)}: {reason}")
        warnings.warn(f"{os.path.join(root, rel)}: skipped ({reason})", DataWarning, stacklevel=3)

    files = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                   for d, dirs, fs in os.walk(root) for f in fs
                   if not f.startswith(".") and not any(p.startswith(".") for p in os.path.relpath(d, root).split(os.sep)[1:]))
    found = [f for f in files if os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS]
    labelled = bool(found) and all(f.count("/") == 1 for f in found)
    class_names = sorted({f.split("/")[0] for f in found}) if labelled else []
    clips, labels, kept = [], [], []
    for rel in files:
        if rel not in found:
            if not is_caption_file(rel):
                bad(rel, f"unsupported file type; expected {', '.join(AUDIO_EXTENSIONS)}")
            continue
        try:
            signal, rate = read_audio(os.path.join(root, rel))
        except DataError as e:
            bad(rel, str(e).split(": ", 1)[1])
            continue
        fitted = fit_clip(resample(signal, rate, sample_rate), sample_rate, clip)
        if fitted is None:
            bad(rel, f"silent, or longer than the clip of {clip} samples ({clip / sample_rate:.3f} s) "
                     f"after trimming silence")
            continue
        clips.append(to_pcm16(fitted))
        kept.append(rel)
        if labelled:
            labels.append(class_names.index(rel.split("/")[0]))
    if not clips:
        raise DataError(f"{spec}: no usable sound files found (searched recursively for {', '.join(AUDIO_EXTENSIONS)})")
    captions = folder_captions(root, kept, strict)
    return make_dataset(spec, np.stack(clips), labels if labelled else None, class_names,
                        f"{len(clips)} clips from folder {root}" + (f", {len(class_names)} classes" if labelled else ""),
                        sample_rate, representation, captions=captions)


def is_audio_folder(path: str) -> bool:
    """Whether a folder holds sound files (and no images) at any depth."""
    sounds = images = False
    for _, _, fs in os.walk(path):
        for f in fs:
            ext = os.path.splitext(f)[1].lower()
            sounds |= ext in AUDIO_EXTENSIONS
            images |= ext in IMAGE_EXTENSIONS
    return sounds and not images
