"""Sound files: 16-bit PCM WAV with the generation parameters in the file, read back exactly,
and spectrogram pictures of clips.

A WAV written here carries its metadata in the RIFF ``LIST/INFO`` chunk (libsndfile through
``soundfile``): ``ISFT`` (software) ``undiffuse``, ``INAM`` (title) the parameters line, and
``ICMT`` (comment) a JSON object ``{"parameters": ..., "provenance": ...}``. Any player ignores
the chunk; :func:`read_wav` returns it with the samples.

The samples are ``round(x * 32768)`` clipped to the int16 range, so a clip of int16 values
divided by 32768 survives a write and a read bit for bit.
"""
from __future__ import annotations

import io
import json

import numpy as np
import soundfile
import torch

SOFTWARE = "undiffuse"


def wav_bytes(wave: np.ndarray, sample_rate: int, metadata: dict | None = None, title: str | None = None) -> bytes:
    """One clip ``(T,)`` or ``(1, T)`` in [-1, 1] as WAV bytes (16-bit PCM, mono)."""

    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    with soundfile.SoundFile(buf, "w", samplerate=int(sample_rate), channels=1, subtype="PCM_16", format="WAV") as f:
        f.software = SOFTWARE
        if title:
            f.title = title
        if metadata is not None:
            f.comment = json.dumps(metadata, sort_keys=True, default=str)
        f.write(pcm)
    return buf.getvalue()


def read_wav(path_or_bytes) -> tuple[np.ndarray, int, dict]:
    """``(samples float64 in [-1, 1), sample rate, metadata)``; the metadata is the comment's
    JSON (empty if the file has none or it is not JSON)."""

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    with soundfile.SoundFile(src) as f:
        rate = f.samplerate
        x = f.read(dtype="int16", always_2d=True).mean(axis=1) / 32768.0
        comment = f.comment
    try:
        meta = json.loads(comment) if comment else {}
    except json.JSONDecodeError:
        meta = {}
    return x, rate, meta if isinstance(meta, dict) else {}


def spectrogram(wave: np.ndarray, sample_rate: int, floor_db: float = -80.0) -> np.ndarray:
    """A clip's log-magnitude spectrogram as an RGB picture ``(H, W, 3)`` uint8, low frequencies
    at the bottom: 32 ms Hann windows with 8 ms hops, ``floor_db`` to 0 dB of full scale on the
    magma colour map."""
    from matplotlib import colormaps  # for the colour map only

    x = torch.as_tensor(np.asarray(wave, dtype=np.float32).reshape(-1))
    n_fft = 32 * sample_rate // 1000
    hop = n_fft // 4
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), center=True, return_complex=True).abs()
    db = 20 * torch.log10(spec / (n_fft / 4) + 1e-10)
    unit = ((db - floor_db) / -floor_db).clamp(0, 1).flip(0).numpy()
    return (colormaps["magma"](unit)[..., :3] * 255).round().astype(np.uint8)
