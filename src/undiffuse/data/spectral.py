"""Log-mel spectrograms of waveforms and their inversion to sound, in torch alone.

A :class:`MelSpec` fixes every setting of the transform, so a run records it and a sample is
turned back into sound exactly as its training data was made:

* short-time Fourier transform with a periodic Hann window (``torch.stft``, centred, reflect
  padding), power spectrum;
* triangular filters on the HTK mel scale ``m = 2595 log10(1 + f / 700)``, each scaled to unit
  area over frequency (so a filter's output is a mean power, whatever its width);
* ``10 log10`` of the mel power, then a fixed affine map of ``[db_min, db_max]`` to ``[-1, 1]``
  (values below ``db_min`` are clamped; the bounds are data-independent, so two datasets share
  one scale).

``frames = clip_samples // hop``: the centred STFT's last frame (which sees mostly padding) is
dropped, so a 8192-sample clip with hop 128 gives exactly 64 frames.

Inversion: mel power -> linear power by non-negative least squares per frame (a projected
gradient on the filter matrix, started from its pseudo-inverse), then phase by fast Griffin-Lim
(Perraudin, Balazs & Sondergaard 2013: the Griffin & Lim 1984 projection with momentum 0.99).
Phase is not stored, so a round trip does not return the waveform; its error is stated as the
spectral convergence of the re-analysed mel spectrogram (tests/test_spectral.py).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class MelSpec:
    sample_rate: int = 8000
    clip_samples: int = 8192
    n_fft: int = 256
    hop: int = 128
    n_mels: int = 64
    f_min: float = 40.0
    f_max: float | None = None   # None: the Nyquist frequency
    db_min: float = -80.0        # maps to -1 (and everything quieter)
    db_max: float = 20.0         # maps to +1

    def __post_init__(self):
        if self.hop <= 0 or self.n_fft < self.hop or self.clip_samples % self.hop:
            raise ValueError(f"mel settings: need 0 < hop <= n_fft and hop dividing clip_samples, got "
                             f"hop={self.hop}, n_fft={self.n_fft}, clip_samples={self.clip_samples}")
        top = self.sample_rate / 2 if self.f_max is None else self.f_max
        if not 0 <= self.f_min < top <= self.sample_rate / 2:
            raise ValueError(f"mel settings: need 0 <= f_min < f_max <= sample_rate / 2, got f_min={self.f_min}, "
                             f"f_max={top}, sample_rate={self.sample_rate}")
        if self.db_max <= self.db_min:
            raise ValueError(f"mel settings: db_max ({self.db_max}) must exceed db_min ({self.db_min})")

    @property
    def frames(self) -> int:
        return self.clip_samples // self.hop

    @property
    def shape(self) -> tuple[int, int, int]:
        """One sample's shape: ``(1, n_mels, frames)``."""
        return (1, self.n_mels, self.frames)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MelSpec":
        return cls(**d)

    def filterbank(self) -> Tensor:
        """``(n_mels, n_fft // 2 + 1)`` float64 triangles of unit area on the STFT bins."""
        return mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min,
                              self.sample_rate / 2 if self.f_max is None else self.f_max)

    # ------------------------------------------------------------------ analysis

    def power(self, wave: Tensor) -> Tensor:
        """Waveforms ``(B, 1, T)`` or ``(B, T)`` -> power spectra ``(B, n_fft // 2 + 1, frames)``."""
        w = wave.reshape(len(wave), -1).to(torch.float64)
        spec = torch.stft(w, self.n_fft, self.hop, window=self._window(w), center=True,
                          pad_mode="reflect", return_complex=True)
        return spec.abs().square()[..., :w.shape[-1] // self.hop]

    def mel_db(self, wave: Tensor) -> Tensor:
        """Waveforms -> mel power in decibels ``(B, n_mels, frames)`` (float64, floored at -200 dB)."""
        mel = torch.einsum("mf,bft->bmt", self.filterbank(), self.power(wave))
        return 10 * torch.log10(mel.clamp_min(1e-20))

    def encode(self, wave: Tensor) -> Tensor:
        """Waveforms -> normalised log-mel ``(B, 1, n_mels, frames)`` in ``[-1, 1]`` (float32)."""
        x = (self.mel_db(wave) - self.db_min) / (self.db_max - self.db_min) * 2 - 1
        return x.clamp(-1, 1).to(torch.float32)[:, None]

    def decibels(self, x: Tensor) -> Tensor:
        """Normalised log-mel (any shape) back to decibels (float64)."""
        return (x.to(torch.float64).clamp(-1, 1) + 1) / 2 * (self.db_max - self.db_min) + self.db_min

    # ------------------------------------------------------------------ synthesis

    def decode(self, x: Tensor, iterations: int = 64, seed: int = 0) -> Tensor:
        """Normalised log-mel ``(B, 1, n_mels, frames)`` -> waveforms ``(B, 1, clip_samples)`` in
        ``[-1, 1]`` (float32), by linear-power recovery and fast Griffin-Lim."""
        mel = 10 ** (self.decibels(x.reshape(len(x), self.n_mels, -1)) / 10)
        mel = torch.where(x.reshape(mel.shape) <= -1, torch.zeros_like(mel), mel)  # silence stays silent
        magnitude = mel_to_power(mel, self.filterbank()).sqrt()
        wave = griffin_lim(magnitude, self.n_fft, self.hop, self.clip_samples, iterations, seed)
        return wave.clamp(-1, 1).to(torch.float32)[:, None]

    def _window(self, like: Tensor) -> Tensor:
        return torch.hann_window(self.n_fft, periodic=True, dtype=like.dtype, device=like.device)


def hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """Triangular filters with centres evenly spaced in mel, each of unit area in Hz, sampled
    on the ``n_fft // 2 + 1`` STFT bin frequencies: ``(n_mels, n_fft // 2 + 1)`` float64."""
    edges_mel = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs - lo) / (mid - lo)
    fall = (hi - freqs) / (hi - mid)
    tri = torch.clamp(torch.minimum(rise, fall), min=0.0)
    return tri * (2.0 / (hi - lo))  # a triangle of height 1 over [lo, hi] has area (hi - lo) / 2


def mel_to_power(mel: Tensor, fb: Tensor, iterations: int = 200) -> Tensor:
    """Non-negative ``P`` with ``fb @ P`` close to ``mel`` (least squares, per frame): projected
    gradient descent from the clamped pseudo-inverse solution. ``mel`` is ``(B, n_mels, frames)``."""
    step = 1.0 / torch.linalg.matrix_norm(fb, ord=2) ** 2
    p = (torch.linalg.pinv(fb) @ mel).clamp_min(0)
    for _ in range(iterations):
        p = (p - step * (fb.T @ (fb @ p - mel))).clamp_min(0)
    return p


def griffin_lim(magnitude: Tensor, n_fft: int, hop: int, length: int, iterations: int = 64, seed: int = 0,
                momentum: float = 0.99) -> Tensor:
    """Waveforms ``(B, length)`` whose STFT magnitude approaches ``magnitude`` ``(B, bins, frames)``
    (frames may be one short of the centred STFT's; the missing last frame is left free)."""
    b, bins, frames = magnitude.shape
    full = length // hop + 1
    window = torch.hann_window(n_fft, periodic=True, dtype=magnitude.dtype)
    # the starting phases: drawn once per call from ``seed`` and shared by every row, so a row's
    # result does not depend on the batch it came in
    phase = torch.rand(1, bins, full, generator=torch.Generator().manual_seed(seed), dtype=magnitude.dtype)
    phase = phase.expand(b, -1, -1) * 2 * math.pi
    target = torch.cat([magnitude, torch.zeros(b, bins, full - frames, dtype=magnitude.dtype)], -1)
    free = torch.zeros(full, dtype=torch.bool)
    free[frames:] = True
    spec = torch.polar(target, phase)
    previous = torch.zeros_like(spec)
    for _ in range(iterations):
        wave = torch.istft(spec, n_fft, hop, window=window, center=True, length=length)
        rebuilt = torch.stft(wave, n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True)
        accelerated = rebuilt + momentum * (rebuilt - previous)
        previous = rebuilt
        unit = accelerated / accelerated.abs().clamp_min(1e-12)
        spec = torch.where(free, rebuilt, target * unit)
    return torch.istft(spec, n_fft, hop, window=window, center=True, length=length)
