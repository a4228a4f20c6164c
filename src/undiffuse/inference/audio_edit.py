"""Editing a given clip with a sound run: its input, the gap to fill, and the way back to sound.

* :func:`read_clip`: a WAV/FLAC/OGG file at the run's rate (resampled), zero-padded at the end
  to the run's clip length; a longer clip is refused with both lengths named. The level is kept.
* :func:`gap_masks`: ``--gap START:END`` (seconds) as a mask in the run's representation
  (1 = keep): waveform samples, or for a mel run every frame whose analysis window reaches into
  the gap; plus the mask over samples.
* :func:`to_model`: the clip in the run's representation (back to sound: ``generate.to_sound``).
* :func:`splice`: the original outside the gap, the result inside, joined by raised-cosine
  cross-fades of :data:`CROSSFADE` seconds at each edge (a mel run's result comes back through
  Griffin-Lim, with phases of its own, so a hard cut would click).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from undiffuse.data.audio import read_audio, resample
from undiffuse.data.spectral import MelSpec

CROSSFADE = 0.01


def read_clip(path: str, audio: dict) -> tuple[torch.Tensor, float]:
    """``(1, 1, clip_samples)`` float32 waveform and the clip's own duration in seconds."""
    signal, rate = read_audio(path)
    x = resample(signal, rate, audio["sample_rate"])
    clip = audio["clip_samples"]
    if len(x) > clip:
        raise ValueError(f"--audio {path!r} is {len(x) / audio['sample_rate']:.3f} s long; the model makes clips of "
                         f"{clip / audio['sample_rate']:.3f} s ({clip} samples at {audio['sample_rate']} Hz): trim it")
    out = np.zeros(clip, np.float32)
    out[:len(x)] = np.clip(x, -1, 1)
    return torch.from_numpy(out)[None, None], len(x) / audio["sample_rate"]


def parse_gap(text: str, duration: float) -> tuple[float, float]:
    """``"0.3:0.5"`` -> (0.3, 0.5), checked against the clip's duration."""
    try:
        start, end = (float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--gap {text!r}: expected START:END in seconds, e.g. 0.3:0.5") from None
    if not (0 <= start < end <= duration + 1e-9):
        raise ValueError(f"--gap {text!r} is outside the clip: need 0 <= START < END <= {duration:.3f} s "
                         f"(the clip's length)")
    return start, end


def gap_masks(audio: dict, gap: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask in the representation ``(1, *shape)``, mask over samples ``(1, 1, T)``), 1 = keep."""
    rate, clip = audio["sample_rate"], audio["clip_samples"]
    lo, hi = int(math.floor(gap[0] * rate)), int(math.ceil(gap[1] * rate))
    samples = torch.ones(1, 1, clip)
    samples[..., lo:hi] = 0
    if audio["representation"] != "mel":
        return samples, samples
    spec = MelSpec.from_dict(audio["mel"])
    centres = torch.arange(spec.frames) * spec.hop
    reach = (centres + spec.n_fft // 2 > lo) & (centres - spec.n_fft // 2 < hi)
    frames = torch.ones(1, 1, spec.n_mels, spec.frames)
    frames[..., reach] = 0
    return frames, samples


def to_model(wave: torch.Tensor, audio: dict) -> torch.Tensor:
    """Waveforms ``(N, 1, T)`` in the run's representation."""
    if audio["representation"] == "mel":
        return MelSpec.from_dict(audio["mel"]).encode(wave)
    return wave


def splice(original: torch.Tensor, result: torch.Tensor, keep: torch.Tensor, rate: int) -> torch.Tensor:
    """``original`` where ``keep`` is 1, ``result`` elsewhere, with raised-cosine cross-fades of
    :data:`CROSSFADE` seconds reaching into the gap from each edge."""
    n = max(1, int(CROSSFADE * rate))
    k = keep.reshape(-1).clone()
    gap = torch.nonzero(k == 0).reshape(-1)
    if len(gap):
        lo, hi = int(gap[0]), int(gap[-1]) + 1
        ramp = 0.5 + 0.5 * torch.cos(torch.linspace(0, math.pi, n + 2)[1:-1])  # 1 -> 0
        width = min(n, (hi - lo) // 2)
        if lo > 0:
            k[lo:lo + width] = ramp[:width]
        if hi < len(k):
            k[hi - width:hi] = ramp[:width].flip(0)
    k = k.reshape(1, 1, -1)
    return k * original + (1 - k) * result
