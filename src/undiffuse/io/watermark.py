"""An invisible watermark for generated images: keyed, tiled, spread-spectrum, with a 32-bit payload.

Why our own: `invisible-watermark` (dwtDctSvd) failed JPEG q75 and a 10% crop at chance
level on upscaled digits and needs OpenCV (see README, Serving). This one is NumPy only.

Design (spread-spectrum watermarking, Cox et al. 1997, "Secure spread spectrum watermarking
for multimedia"; periodic tiling against cropping as in Kutter 1998, "Watermarking resisting
to translation, rotation and scaling"; detection by phase-only correlation, Kuglin and Hines
1975, the "SPOMF" detector of Kalker et al.):

* From the key, ``1 + BITS`` orthonormal patterns on a ``TILE x TILE`` torus are drawn, each
  a random mix of the spatial frequencies between ``BAND[0]`` and ``BAND[1]`` cycles per
  pixel (periods of 3.6 to 11 px, where upscaled digits and sample grids have little content
  of their own; the part above 1/4 is lost to a half-size round trip, the rest survives it
  and JPEG q75). Band and residual filter were chosen by measurement on the three image
  sources of benchmarks/watermark_robustness.py. Pattern 0 is the *sync*; patterns 1..32
  carry one payload bit each (sign +1 / -1).
* The mark ``w = sqrt(SYNC_SHARE) p0 + sqrt((1 - SYNC_SHARE) / BITS) sum_k s_k p_k`` is tiled
  over the whole image at its own pixel grid and added to the luminance (the same amount to
  R, G and B, so colours keep their chroma), scaled to a target PSNR (default 40 dB).
* Detection folds a residual of the luminance (minus a 7x7 median, clipped to +-2 grey
  levels) onto one tile: the mean over all positions equal modulo ``TILE``; a crop only
  shifts the fold cyclically. It whitens the fold (every in-band frequency keeps its phase,
  magnitude 1, which removes the image content's coloured spectrum) and correlates it with
  the sync at every cyclic shift via the FFT. The whitened correlation at one shift is
  ~ N(0, 1) on an unmarked image, so the threshold is the Bonferroni bound over the
  ``TILE**2`` shifts for a target false-positive rate (``FALSE_POSITIVE``, 1e-4):
  ``score > THRESHOLD`` (about 5.2). The empirical rate on unmarked images and random keys
  is measured in benchmarks/watermark_robustness.py.
* At the best shift, the sign of each bit pattern's (linear, un-whitened) correlation is the
  decoded bit. Given an expected payload (e.g. from the PNG's provenance record), ``match``
  is the correlation of the whole payload part: ~ N(0, 1) for an unrelated payload
  (payloads are hash prefixes, which differ from each other in ~16 of 32 bits; one differing
  in only a few bits would correlate too). No error-correcting code: blind decoding of all
  32 bits fails more often than detection (see BENCHMARKS.md), the ``match`` test much less.

The payload is the first 32 bits of the model's weights SHA-256 (:func:`payload_of`).

**Key.** Patterns come from a key string: by default the project key ``DEFAULT_KEY``, or
``$UNDIFFUSE_WATERMARK_KEY`` when set, or the ``key`` argument. The default key is public
(it is in this file), so anyone can detect the mark and also, with effort, remove or forge
it: the mark says "undiffuse made this, with these weights" to cooperative readers, it is not
proof against an adversary. Use a private key to make removal and forgery harder.

Not robust to: rescaling that is not undone (the tile is in image pixels), rotation,
heavy cropping to under one tile, strong noise or blur. Images smaller than ``MIN_SIZE`` on
either side are not marked (:func:`embed` raises :class:`TooSmall`).
"""
from __future__ import annotations

import hashlib
import math
import os
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.stats import norm

KEY_ENV = "UNDIFFUSE_WATERMARK_KEY"
DEFAULT_KEY = "undiffuse-watermark-v1"
TILE = 32                 # period of the mark in image pixels (one tile: TILE x TILE)
BAND = (3.0 / 32, 9.0 / 32)  # spatial frequencies used, cycles per pixel (radial)
BITS = 32                 # payload bits
SYNC_SHARE = 0.5          # share of the mark's energy in the sync pattern
PSNR_DB = 40.0            # default strength: the mark's PSNR before rounding and clipping
FALSE_POSITIVE = 1e-4     # target false-positive rate of `detect` per image
MIN_SIZE = 64             # smallest side embed() marks (at 32 px detection fails even on clean images)
RESIDUAL_CLIP = 2.0       # grey levels; see _residual
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luminance weights (as JPEG uses)


class TooSmall(ValueError):
    """The image is smaller than ``MIN_SIZE`` on a side; it is not marked."""


def _threshold(p: float = FALSE_POSITIVE, shifts: int = TILE * TILE) -> float:
    """Bonferroni: P(max over shifts of N(0, 1) > t) <= shifts * Q(t) = p."""
    return float(norm.isf(p / shifts))


THRESHOLD = _threshold()


def key_of(key: str | None = None) -> str:
    """The key in force: ``key``, else ``$UNDIFFUSE_WATERMARK_KEY``, else ``DEFAULT_KEY``."""
    return key if key is not None else (os.environ.get(KEY_ENV) or DEFAULT_KEY)


def payload_of(model_sha256: str) -> int:
    """The 32-bit payload naming a model: the first 8 hex digits of its weights' SHA-256."""
    return int(model_sha256[:BITS // 4], 16)


def _band_mask() -> np.ndarray:
    f = np.fft.fftfreq(TILE)
    r = np.hypot(f[:, None], f[None, :])  # (TILE, TILE) radial frequency, cycles per pixel
    return (r >= BAND[0]) & (r <= BAND[1])


@lru_cache(maxsize=8)
def patterns(key: str) -> np.ndarray:
    """(1 + BITS, TILE, TILE) orthonormal (unit-RMS, mutually orthogonal) band-limited
    patterns drawn from ``key``: row 0 the sync, rows 1.. the payload bits."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:16], "little")
    rng = np.random.default_rng(seed)
    mask = _band_mask()
    spec = (rng.standard_normal((1 + BITS, TILE, TILE)) + 1j * rng.standard_normal((1 + BITS, TILE, TILE))) * mask
    pats = np.fft.ifft2(spec).real.reshape(1 + BITS, -1)  # real part: Hermitian, so still in band
    q, _ = np.linalg.qr(pats.T)  # orthonormalise (a linear mix of in-band patterns stays in band)
    q = q.T * math.sqrt(TILE * TILE)  # unit RMS per pattern
    q.setflags(write=False)
    return q.reshape(1 + BITS, TILE, TILE)


def _bits(payload: int) -> np.ndarray:
    return np.array([1.0 if (payload >> (BITS - 1 - k)) & 1 else -1.0 for k in range(BITS)])


def mark_tile(payload: int, key: str | None = None) -> np.ndarray:
    """The unit-RMS (TILE, TILE) mark for ``payload``."""
    p = patterns(key_of(key))
    return math.sqrt(SYNC_SHARE) * p[0] + math.sqrt((1 - SYNC_SHARE) / BITS) * np.tensordot(_bits(payload), p[1:], 1)


def _luma(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, np.float64)
    if a.ndim == 2:
        return a
    if a.shape[-1] in (1, 2):  # grey, grey + alpha
        return a[..., 0]
    return a[..., :3] @ LUMA


def embed(image: np.ndarray, payload: int, *, key: str | None = None, psnr: float = PSNR_DB) -> np.ndarray:
    """``image`` (H, W), (H, W, 1|2|3|4) uint8 with the mark of ``payload`` added (same shape
    and dtype). The mark's amplitude is set so that PSNR before rounding is ``psnr`` dB.
    Raises :class:`TooSmall` under ``MIN_SIZE`` pixels on a side."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"embed() takes uint8 images, got {img.dtype}")
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIZE:
        raise TooSmall(f"{w}x{h} is under the watermark's minimum of {MIN_SIZE}x{MIN_SIZE} pixels")
    if not 20 <= psnr <= 60:
        raise ValueError(f"psnr must be in 20..60 dB, got {psnr}")
    amp = 255.0 / 10 ** (psnr / 20)  # RMS of the mark in grey levels
    tile = mark_tile(payload, key) * amp
    delta = np.tile(tile, (h // TILE + 1, w // TILE + 1))[:h, :w]  # (H, W), periodic from the origin
    out = img.astype(np.float64)
    if out.ndim == 2:
        out += delta
    else:
        colour = 3 if out.shape[-1] >= 3 else 1  # leave alpha alone
        out[..., :colour] += delta[..., None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _residual(y: np.ndarray) -> np.ndarray:
    """What the detector correlates: the luminance minus its 7x7 median (which keeps edges and
    the flat blocks of nearest-upscaled grids, so the residual is mostly the mark), clipped to
    +-RESIDUAL_CLIP grey levels (a limiter: edges and texture then count no more than the mark
    does where the image is flat). Chosen over a Gaussian high-pass with local normalisation,
    which missed the mark on upscaled sample grids (benchmarks/watermark_robustness.py)."""
    return np.clip(y - ndimage.median_filter(y, size=7, mode="reflect"), -RESIDUAL_CLIP, RESIDUAL_CLIP)


def _fold(y: np.ndarray) -> np.ndarray:
    """The mean of ``y`` over all pixels equal modulo TILE, minus the image mean: (TILE, TILE)."""
    h, w = y.shape
    ii, jj = np.arange(h) % TILE, np.arange(w) % TILE
    idx = (ii[:, None] * TILE + jj[None, :]).ravel()
    sums = np.bincount(idx, weights=(y - y.mean()).ravel(), minlength=TILE * TILE)
    counts = np.bincount(idx, minlength=TILE * TILE)
    return (sums / np.maximum(counts, 1)).reshape(TILE, TILE)


def correlations(image: np.ndarray, key: str | None = None, *, phase_only: bool = True) -> np.ndarray:
    """(1 + BITS, TILE, TILE): the normalised correlation of each pattern with the in-band fold
    of ``image`` at every cyclic shift; ~ N(0, 1) per entry on unmarked images.

    ``phase_only``: whiten the fold first (every in-band frequency to magnitude 1), which makes
    the null exactly standard whatever the image's spectrum: the sync statistic. Without it
    the correlation is linear in the image, so the orthogonal patterns do not leak into each
    other (phase-only whitening mixes them: ~3% of bits would flip even on a clean image),
    normalised by its null standard deviation ``sqrt(sum_f |z_f|^2 |p_f|^2)``: the bits."""
    p = patterns(key_of(key))
    z = np.fft.fft2(_fold(_residual(_luma(image)))) * _band_mask()
    ph = np.fft.fft2(p) * _band_mask()  # (1 + BITS, TILE, TILE)
    if phase_only:
        z = z / np.maximum(np.abs(z), 1e-12) * _band_mask()
    norm = np.sqrt((np.abs(z[None]) ** 2 * np.abs(ph) ** 2).sum(axis=(1, 2)))  # null std
    return np.fft.ifft2(z[None] * np.conj(ph)).real * (TILE * TILE) / np.maximum(norm, 1e-12)[:, None, None]


def detect(image: np.ndarray, *, key: str | None = None, expected: int | None = None) -> dict:
    """Look for the mark in ``image`` (uint8 or float array, grey or RGB(A)).

    Returns ``{"detected", "score", "threshold", "shift", "payload", "payload_hex",
    "bit_margin", "size"}``; with ``expected`` (a payload, e.g. :func:`payload_of` of the
    record's checksum) also ``"match"`` (the payload's correlation, ~ N(0, 1) when wrong),
    ``"match_threshold"``, ``"payload_matches"`` and ``"bit_errors"``. ``bit_margin`` is the
    smallest |correlation| of a payload bit: under ~1, some decoded bits are guesses."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    c = correlations(img, key)
    dy, dx = np.unravel_index(int(np.argmax(c[0])), c[0].shape)
    score = float(c[0, dy, dx])
    bits = correlations(img, key, phase_only=False)[1:, dy, dx]  # linear: no cross-talk between bits
    payload = int("".join("1" if b > 0 else "0" for b in bits), 2)
    out = {"detected": score > THRESHOLD, "score": round(score, 3), "threshold": round(THRESHOLD, 3),
           "shift": [int(dy), int(dx)], "payload": payload, "payload_hex": f"{payload:0{BITS // 4}x}",
           "bit_margin": round(float(np.abs(bits).min()), 3), "size": [int(w), int(h)]}
    if expected is not None:
        s = _bits(expected)
        match = float(s @ bits / math.sqrt(BITS))
        out.update(match=round(match, 3), match_threshold=MATCH_THRESHOLD,
                   payload_matches=bool(out["detected"] and match > MATCH_THRESHOLD),
                   bit_errors=int((np.sign(bits) != s).sum()))
    return out


MATCH_THRESHOLD = round(_threshold(FALSE_POSITIVE, 1), 3)  # one test, at the detected shift


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) between two uint8 images."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def mark(image: np.ndarray, model_sha256: str | None, *, enabled: bool = True,
         key: str | None = None) -> tuple[np.ndarray, str]:
    """What the writers of PNGs call: ``(image, status)`` with the mark of the model's payload
    embedded (``status`` ``"embedded"``), or the image unchanged with status ``"off"``
    (``enabled=False``) or ``"too small"`` (under ``MIN_SIZE`` px; metadata only). Without a
    checksum (no model known) the payload is 0."""
    if not enabled:
        return image, "off"
    if min(np.asarray(image).shape[:2]) < MIN_SIZE:
        return image, "too small"
    return embed(image, payload_of(model_sha256) if model_sha256 else 0, key=key), "embedded"
