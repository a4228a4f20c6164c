"""Video metrics for moving digits: arrays in, numbers out.

Clips are float arrays ``(N, T, C, H, W)`` in [0, 1] (``undiffuse sample --format npz`` writes
them so); the digit metrics need ``C == 1``. :func:`evaluate_video` runs them all:

* ``fd`` (:func:`per_frame_fd`): Frechet distance of all frames, pooled over time, in the
  ``mnist5k`` classifier's 64-d features (``metrics.mnist_features``). That classifier reads
  1x28x28 digits, so every frame is resized to 28x28 (bilinear with antialiasing) first: at
  32x32 a 14-px digit becomes about 12 px, smaller than the ~20 px of a centred MNIST digit,
  and the features see the digits *in a scene*, so this compares frame sets with frame sets
  (never with mnist5k itself).
* ``clip_fd`` (:func:`clip_fd`): Frechet distance of whole clips in the 128-d features of the
  in-project clip classifier (``metrics.video_features.ClipNet``, trained to read the digit set
  and the motion direction): the role FVD's I3D plays, which does not exist offline.
* ``identity`` (:func:`identity`): the share of clips that keep their digits: the per-frame
  reader (``video_features.FrameNet``) reads the clip's digit set as its first choice in every
  frame; ``identity_tolerant``: it finds the set plausible (probability >= 1 %) in every frame.
  With requested sets, the set must be the requested one. ``adherence``: the share whose most-read set is the requested.
* ``motion`` (:func:`motion`): the mean per-clip RMS distance, in pixels of the frame, between
  the tracked digit centroids and the best constant-velocity bouncing path (see
  :func:`motion_residuals` for the tracker, the fit and their limits).
* :func:`prediction_scores`: PSNR and SSIM of predicted frames against the true future per
  horizon, beside the copy-last-frame baseline.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from undiffuse.data.base import Dataset
from undiffuse.data.video import DIGIT_SHARE, SPEED_SHARE, VideoDataset, bounce

from . import video_features as vf
from .frechet import frechet_distance, gaussian_stats
from .mnist_features import mnist_features

__all__ = [
    "adherence",
    "clip_fd",
    "evaluate_video",
    "fit_bounce",
    "identity",
    "motion",
    "motion_residuals",
    "per_frame_fd",
    "prediction_scores",
    "psnr",
    "read_sets",
    "ssim",
    "track",
]

MNIST_SIDE = 28
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # Wang et al. 2004, section III-C
PSNR_CAP = 100.0  # dB, for frames equal to within 1e-10 mean squared error
IDENTITY_FLOOR = 0.01  # a frame "reads" a digit set when the reader gives it at least this probability


def _clips(x, name: str, *, grey: bool = True) -> np.ndarray:
    """Validated float64 clips ``(N, T, C, H, W)`` in [0, 1]."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 5 or len(arr) < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: expected clips (N, T, C, H, W), got shape {arr.shape}")
    if grey and arr.shape[2] != 1:
        raise ValueError(f"{name}: the digit metrics read greyscale clips (C = 1), got C = {arr.shape[2]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain non-finite values")
    if arr.min() < -1e-6 or arr.max() > 1 + 1e-6:
        raise ValueError(f"{name} must be in [0, 1], got values in [{arr.min():.4g}, {arr.max():.4g}]")
    return np.minimum(np.maximum(arr, 0.0, out=arr), 1.0, out=arr)


def _frames_28(clips: np.ndarray) -> np.ndarray:
    """Every frame of greyscale clips as (N * T, 1, 28, 28), resized bilinearly with antialiasing."""
    n, t, _, h, w = clips.shape
    x = torch.from_numpy(clips.reshape(n * t, 1, h, w))
    if (h, w) != (MNIST_SIDE, MNIST_SIDE):
        x = F.interpolate(x, size=(MNIST_SIDE, MNIST_SIDE), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1).numpy()


def _fd(fs: np.ndarray, fr: np.ndarray) -> float:
    if len(fs) < 2 or len(fr) < 2:
        raise ValueError(f"need at least 2 items in each set, got {len(fs)} and {len(fr)}")
    return frechet_distance(*gaussian_stats(fs), *gaussian_stats(fr))


def per_frame_fd(samples, reference) -> float:
    """Frechet distance between all frames of ``samples`` and all frames of ``reference``
    (greyscale clips ``(N, T, 1, H, W)`` in [0, 1]) in the ``mnist5k`` classifier's features;
    each frame is resized to 28x28 (bilinear, antialiased) because that classifier reads 28x28."""
    s, r = _clips(samples, "samples"), _clips(reference, "reference")
    return _fd(mnist_features(_frames_28(s)), mnist_features(_frames_28(r)))


def clip_fd(samples, reference) -> float:
    """Frechet distance between the clip classifier's features of two clip sets (FVD's role)."""
    s, r = _clips(samples, "samples"), _clips(reference, "reference")
    return _fd(vf.clip_features(s), vf.clip_features(r))


# ----------------------------------------------------------------------------------------------
# identity and adherence


def read_sets(samples) -> np.ndarray:
    """The digit set (index into ``video_features.SET_NAMES``) the frame reader reads in every
    frame: ``(N, T)`` int64."""
    return vf.frame_probabilities(_clips(samples, "samples")).argmax(2)


def _modal(read: np.ndarray) -> np.ndarray:
    """Each clip's most-read set (ties: the smaller index): (N,)."""
    votes = (read[..., None] == np.arange(len(vf.SET_NAMES))).sum(1)
    return votes.argmax(1)


def _requested(requested, n: int) -> np.ndarray:
    """Requested sets as indices: ``(N,)`` class indices, ``(N, 2)`` digit pairs (-1: no second
    digit) or class names (``"3"``, ``"3 and 7"``)."""
    req = np.asarray(requested)
    if req.dtype.kind in "US":
        unknown = sorted({str(r) for r in req.reshape(-1)} - set(vf.SET_NAMES))
        if unknown:
            raise ValueError(f"requested digit sets {unknown[:5]} are not moving-digits classes; allowed: "
                             f"'0' .. '9', '0 and 0' .. '9 and 9'")
        req = np.array([vf.SET_NAMES.index(str(r)) for r in req.reshape(-1)])
    elif req.ndim == 2 and req.shape[1:] == (2,):
        req = vf.set_index(req)
    req = req.astype(np.int64).reshape(-1)
    if len(req) != n:
        raise ValueError(f"requested sets: {len(req)} for {n} clips; give one per clip")
    if req.min(initial=0) < 0 or req.max(initial=0) >= len(vf.SET_NAMES):
        raise ValueError(f"requested set indices must be in 0..{len(vf.SET_NAMES) - 1}, got {req.min()}..{req.max()}")
    return req


def _identity_of(probs: np.ndarray, requested=None, strict: bool = False) -> float:
    """See :func:`identity`; ``probs`` (N, T, 65)."""
    read = probs.argmax(2)
    target = _modal(read) if requested is None else _requested(requested, len(read))
    if strict:
        ok = (read == target[:, None]).all(1)
    else:
        p_target = np.take_along_axis(probs, target[:, None, None], 2)[..., 0]  # (N, T)
        ok = (p_target >= IDENTITY_FLOOR).all(1) & (_modal(read) == target)
    return float(ok.mean())


def identity(samples, requested=None, *, strict: bool = True) -> float:
    """Share of clips that keep their digits (issue 21's definition): the per-frame reader
    (``video_features.FrameNet``) reads the clip's digit set (the set it reads most often; with
    ``requested``, one set per clip, the requested set) as its first choice in every frame.

    ``strict=False`` is a tolerant form: the set must be the most read and get a probability of at
    least ``IDENTITY_FLOOR`` (1 %) in every frame. The reader reads two overlapping 14-px digits far
    less surely than one, so real two-digit clips often fail the strict form; a clip whose digits
    change midway fails both. ``reader_accuracy`` and ``evaluate_video``'s ``reference`` give the
    real-data values, which bound what a model can score."""
    return _identity_of(vf.frame_probabilities(_clips(samples, "samples")), requested, strict)


def adherence(samples, requested) -> float:
    """Share of clips whose most-read digit set (over their frames) is the requested one."""
    read = read_sets(samples)
    return float((_modal(read) == _requested(requested, len(read))).mean())


# ----------------------------------------------------------------------------------------------
# motion: tracking and the bouncing fit


def _two_means(w: np.ndarray, pos: np.ndarray, init: np.ndarray, iters: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Weighted 2-means (Lloyd) per row of ``w`` (M, P) over pixel positions ``pos`` (P, 2), from
    centres ``init`` (M, 2, 2): the centres and their masses (M, 2); an empty cluster keeps its start."""
    c = init.copy()
    total, total_sum = w.sum(1), w @ pos  # (M,), (M, 2)
    for _ in range(iters):
        # nearer to centre 0: |p - c0|^2 <= |p - c1|^2, i.e. p . (c1 - c0) <= (|c1|^2 - |c0|^2) / 2
        diff = c[:, 1] - c[:, 0]  # (M, 2)
        near = (diff @ pos.T) <= 0.5 * ((c[:, 1] ** 2).sum(1) - (c[:, 0] ** 2).sum(1))[:, None]  # (M, P)
        w0 = w * near
        m0, s0 = w0.sum(1), w0 @ pos
        mass = np.stack([m0, total - m0], 1)  # (M, 2)
        sums = np.stack([s0, total_sum - s0], 1)  # (M, 2, 2)
        c = np.where(mass[..., None] > 1e-9, sums / np.maximum(mass, 1e-300)[..., None], c)
    return c, mass


def _principal_split(w: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Start centres for 2-means: the weighted mean +- one standard deviation along the principal axis."""
    m = w.sum(1, keepdims=True).clip(min=1e-300)
    mu = (w @ pos) / m  # (M, 2)
    d = pos[None] - mu[:, None]  # (M, P, 2)
    cov = np.einsum("mp,mpi,mpj->mij", w, d, d) / m[..., None]
    lam, vec = np.linalg.eigh(cov)
    step = np.sqrt(lam[:, 1:].clip(min=0)) * vec[:, :, 1]  # (M, 2)
    return np.stack([mu - step, mu + step], 1)


def track(clips: np.ndarray, counts, threshold: float = 0.1) -> np.ndarray:
    """Digit centroids ``(N, T, 2, 2)`` (frame, digit slot, (row, col)); NaN where absent.

    Pixel weights are ``max(x - threshold, 0)`` (a faint background then pulls no centroid).
    One digit: the weighted centroid of the frame. Two digits: weighted 2-means on the pixel
    positions, started at frame 0 from a split along the principal axis and in later frames
    from each digit's constant-velocity prediction; the two centres are then matched to the
    predictions (the cheaper of the two pairings); a prediction that leaves a centre without
    pixels restarts that frame from the principal split. A frame without weight gives NaN.

    Limits: overlapping digits form one blob that 2-means cuts arbitrarily, biasing both
    centres towards each other (and possibly swapping them), so two-digit clips score above 0
    even when real; :func:`motion_residuals` reports one- and two-digit clips apart."""
    x = clips[:, :, 0]
    n, t, h, w = x.shape
    counts = np.asarray(counts).reshape(-1)
    pos = np.stack(np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"),
                   -1).reshape(-1, 2)  # (P, 2) row, col
    wts = (x - threshold).clip(min=0).reshape(n, t, -1)  # (N, T, P)
    out = np.full((n, t, 2, 2), np.nan)
    one = counts == 1
    mass = wts[one].sum(-1, keepdims=True)  # (n1, T, 1)
    out[one, :, 0] = np.where(mass > 0, (wts[one] @ pos) / mass.clip(min=1e-300), np.nan)
    two = np.nonzero(counts == 2)[0]
    for i in range(0, len(two), 256):  # (clips, pixels, 2) distances per chunk
        rows = two[i:i + 256]
        out[rows] = _track_two(wts[rows], pos)
    return out


def _track_two(w2: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Two-digit tracks (see :func:`track`) of pixel weights ``w2`` (M, T, P): (M, T, 2, 2)."""
    m, t = w2.shape[:2]
    out = np.full((m, t, 2, 2), np.nan)
    prev = prev2 = None
    for k in range(t):
        init = _principal_split(w2[:, k], pos) if prev is None else prev + (prev - prev2 if prev2 is not None else 0.0)
        c, mass = _two_means(w2[:, k], pos, init)
        lost = (mass <= 1e-9).any(1)  # a prediction off the digits: start again from the principal split
        if prev is not None and lost.any():
            c[lost], mass[lost] = _two_means(w2[lost, k], pos, _principal_split(w2[lost, k], pos))
        swap = ((c[:, ::-1] - init) ** 2).sum((1, 2)) < ((c - init) ** 2).sum((1, 2))
        c = np.where(swap[:, None, None], c[:, ::-1], c)
        mass = np.where(swap[:, None], mass[:, ::-1], mass)
        empty = w2[:, k].sum(1) <= 0
        out[:, k] = np.where(empty[:, None, None] | (mass[..., None] <= 0), np.nan, c)
        prev2, prev = prev, np.where(empty[:, None, None], init, c)
    return out


def fit_bounce(y, span: float, lo_range: tuple[float, float], max_speed: float, *,
               grid_step: float = 0.5, speed_step: float = 0.1, refine: int = 5) -> tuple[np.ndarray, dict]:
    """Least-squares constant-velocity bouncing paths through 1-D tracks ``y`` (M, T) (NaN = missing).

    The model is ``data.video.bounce``'s: ``p(t) = lo + L - |((a + v t) mod 2L) - L|``, a point
    moving at ``v`` px per frame reflected by walls at ``lo`` and ``lo + L``; ``L = span`` is known
    (frame side minus digit box), the wall ``lo`` (the digit's centroid inside its box) is fitted
    within ``lo_range``, ``|v| <= max_speed``. Fit: a grid over the unfolded start ``a``
    (``grid_step`` px over one period) and ``v`` (``speed_step``), with ``lo`` in closed form
    (the clipped mean residual), then ``refine`` rounds of exact least squares over
    ``(lo, a, v)`` with the reflection pattern of the current fit held fixed (the path is linear
    in them between reflections), each kept only if it lowers the error.
    Returns the fitted paths (M, T) and the parameters ``{"lo", "a", "v"}``."""
    y = np.asarray(y, np.float64)
    m, t = y.shape
    period = 2.0 * span
    times = np.arange(t, dtype=np.float64)
    valid = np.isfinite(y)
    y0 = np.where(valid, y, 0.0)
    nvalid = valid.sum(1).clip(min=1)
    a_grid = np.arange(0.0, period, grid_step)
    v_grid = np.linspace(-max_speed, max_speed, 2 * int(np.ceil(max_speed / speed_step)) + 1)
    ga, gv = (g.reshape(-1) for g in np.meshgrid(a_grid, v_grid, indexing="ij"))
    shapes = bounce(ga, gv, t, 0.0, span).T  # (G, T): paths with lo = 0

    def _score(lo, a, v):
        path = lo[:, None] + bounce(a, v, t, 0.0, span).T
        return path, (((y0 - path) * valid) ** 2).sum(1)

    # grid: sse(lo) = sum (y - f - lo)^2 over valid frames, expanded into matrix products (M, G)
    vf_ = valid.astype(np.float64)
    s_y, s_yy = y0.sum(1, keepdims=True), (y0 ** 2).sum(1, keepdims=True)
    best = np.empty((m, 3))
    for i in range(0, m, 1024):
        sl = slice(i, i + 1024)
        s_f, s_ff, s_yf = vf_[sl] @ shapes.T, vf_[sl] @ (shapes ** 2).T, y0[sl] @ shapes.T
        n_ = nvalid[sl, None]
        lo = ((s_y[sl] - s_f) / n_).clip(*lo_range)
        sse = s_yy[sl] - 2 * s_yf + s_ff - 2 * lo * (s_y[sl] - s_f) + n_ * lo ** 2
        g = sse.argmin(1)
        best[sl] = np.stack([lo[np.arange(len(g)), g], ga[g], gv[g]], 1)
    lo, a, v = best.T.copy()
    path, sse = _score(lo, a, v)
    for _ in range(refine):
        u = a[:, None] + v[:, None] * times  # (M, T) unfolded
        k = np.floor(u / period)
        up = (u - period * k) <= span
        s = np.where(up, 1.0, -1.0)
        c = np.where(up, -period * k, period * (k + 1))
        X = np.stack([np.ones_like(s), s, s * times], 2) * valid[..., None]  # y = lo + s a + s v t + c
        target = (y0 - c) * valid
        theta = np.einsum("mij,mj->mi", np.linalg.pinv(X), target)  # (M, 3)
        nlo = theta[:, 0].clip(*lo_range)
        clipped = nlo != theta[:, 0]
        if clipped.any():  # lo on its bound: refit (a, v) with lo fixed
            t2 = np.einsum("mij,mj->mi", np.linalg.pinv(X[clipped][..., 1:]),
                           (target[clipped] - nlo[clipped, None] * valid[clipped]))
            theta[clipped, 1:] = t2
        na, nv = theta[:, 1], theta[:, 2].clip(-max_speed, max_speed)
        npath, nsse = _score(nlo, na, nv)
        better = nsse < sse - 1e-12
        lo, a, v = np.where(better, nlo, lo), np.where(better, na, a), np.where(better, nv, v)
        path, sse = np.where(better[:, None], npath, path), np.where(better, nsse, sse)
    return path, {"lo": lo, "a": np.mod(a, period), "v": v}


def _geometry(h: int, w: int, max_speed: float | None) -> tuple[np.ndarray, int, float]:
    box = round(DIGIT_SHARE * h)  # moving-digits' digit box (data.video)
    if min(h, w) <= box:
        raise ValueError(f"frames of {h}x{w} leave no room for a {box}-px digit to move")
    return np.array([h - box, w - box], np.float64), box, (2 * SPEED_SHARE * max(h, w) if max_speed is None
                                                          else float(max_speed))


def motion_residuals(samples, counts=None, *, threshold: float = 0.1, max_speed: float | None = None,
                     min_frames: int = 4) -> dict:
    """Per-clip RMS residual (pixels of the frame) of tracked centroids against their best
    constant-velocity bouncing paths.

    ``counts``: digits per clip (1 or 2); by default the size of the digit set the frame reader
    reads most often in the clip. Tracking (:func:`track`), then per digit and axis a bouncing fit
    (:func:`fit_bounce`; walls ``frame side - round(0.44 * side)`` px apart, as ``data.video``
    draws them; speed at most ``max_speed`` px per frame per axis, default twice the data's
    speed); for two digits the slots are then re-matched frame by frame to the fitted paths
    (the cheaper pairing) and refitted once. The clip's score is
    ``sqrt(mean over frames and digits of (row residual^2 + col residual^2))``; NaN when a digit
    has fewer than ``min_frames`` tracked frames (e.g. blank frames).

    Returns ``residual`` (N,), ``counts`` (N,), ``centroids`` (N, T, 2, 2) and ``paths`` (the fits)."""
    x = _clips(samples, "samples")
    n, t, _, h, w = x.shape
    if t < min_frames:
        raise ValueError(f"motion needs clips of at least {min_frames} frames (3 parameters per axis), got {t}")
    if counts is None:
        counts = np.array([len(vf.digit_set(k)) for k in _modal(read_sets(x))])
    counts = np.asarray(counts, np.int64).reshape(-1)
    if len(counts) != n or not np.isin(counts, (1, 2)).all():
        raise ValueError(f"counts must give 1 or 2 digits for each of the {n} clips, got {np.unique(counts)}")
    spans, box, vmax = _geometry(h, w, max_speed)
    cent = track(x, counts, threshold)
    paths = np.full_like(cent, np.nan)
    for rounds in range(2):
        for axis in (0, 1):
            series = cent[..., axis].transpose(0, 2, 1).reshape(-1, t)  # (N * 2, T): clip, slot
            use = np.isfinite(series).sum(1) >= min_frames
            fitted = np.full_like(series, np.nan)
            if use.any():
                fitted[use] = fit_bounce(series[use], spans[axis], (0.0, float(box)), vmax)[0]
            paths[..., axis] = fitted.reshape(n, 2, t).transpose(0, 2, 1)
        if rounds == 1 or not (counts == 2).any():
            break
        keep = np.nansum((cent - paths) ** 2, (2, 3))  # (N, T)
        swap = np.nansum((cent[:, :, ::-1] - paths) ** 2, (2, 3))
        flip = (swap < keep) & (counts == 2)[:, None]
        cent = np.where(flip[..., None, None], cent[:, :, ::-1], cent)
    sq = ((cent - paths) ** 2).sum(-1)  # (N, T, 2): NaN where not tracked or not fitted
    slots = np.arange(2)[None, :] < counts[:, None]  # (N, 2)
    fitted_ok = (np.isfinite(paths[..., 0]).any(1) | ~slots).all(1)
    sq = np.where(slots[:, None, :], sq, np.nan).reshape(n, -1)
    used = np.isfinite(sq).sum(1)
    res = np.where(fitted_ok & (used > 0), np.sqrt(np.nansum(sq, 1) / np.maximum(used, 1)), np.nan)
    return {"residual": res, "counts": counts, "centroids": cent, "paths": paths}


def motion(samples, counts=None, **options) -> float:
    """Mean per-clip RMS residual in pixels (:func:`motion_residuals`) over the clips that could be
    tracked; NaN when none could."""
    res = motion_residuals(samples, counts, **options)["residual"]
    return float(np.nanmean(res)) if np.isfinite(res).any() else float("nan")


# ----------------------------------------------------------------------------------------------
# prediction: PSNR and SSIM per horizon


def psnr(a, b) -> np.ndarray:
    """PSNR in dB of frames in [0, 1] (peak 1), per frame over the last three axes (C, H, W):
    ``10 log10(1 / MSE)``, capped at 100 dB."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a - b) ** 2).mean((-3, -2, -1))
    return np.minimum(10 * np.log10(1.0 / np.maximum(mse, 1e-300)), PSNR_CAP)


def _gaussian_window(dtype=torch.float64) -> torch.Tensor:
    r = torch.arange(SSIM_WINDOW, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-r ** 2 / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def ssim(a, b) -> np.ndarray:
    """Mean SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13) of frames in [0, 1] (data range
    1), per frame over the last three axes (C, H, W), averaged over channels: local means,
    variances and covariance under an 11x11 Gaussian window of sigma 1.5 (population moments),
    ``C1 = (0.01)^2``, ``C2 = (0.03)^2``, averaged over the positions where the window fits in
    the frame. This is ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1)``."""
    x = torch.from_numpy(np.array(a, np.float64))  # copies: the inputs may be read-only views
    y = torch.from_numpy(np.array(b, np.float64))
    if x.shape != y.shape or x.ndim < 3:
        raise ValueError(f"ssim needs two arrays of the same shape (..., C, H, W), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"ssim needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} (the Gaussian window), got {h}x{w}")
    x, y = x.reshape(-1, 1, h, w), y.reshape(-1, 1, h, w)
    g = _gaussian_window()

    def blur(z):  # separable valid convolution: (B, 1, h - 10, w - 10)
        return F.conv2d(F.conv2d(z, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    per_channel = smap.mean((1, 2, 3)).reshape(lead)
    return per_channel.mean(-1).numpy()  # (...) over the leading axes without C


def prediction_scores(pred, truth, context: int) -> dict:
    """PSNR and SSIM of predicted future frames per horizon, and the copy-last-frame baseline.

    ``truth``: the true clips ``(N, T, C, H, W)`` in [0, 1]; the first ``context`` frames were
    given. ``pred``: the predicted clips, either whole ``(N, T, ...)`` (its first ``context``
    frames are ignored) or the future only ``(N, T - context, ...)``. Horizon ``h`` (1 ..
    ``T - context``) is frame ``context + h - 1``. The baseline predicts every future frame as
    the last given one (frame ``context - 1``). Per horizon, each number is the mean over clips
    of the per-frame PSNR (dB, peak 1, capped at 100) or SSIM (:func:`ssim`).

    Returns lists per horizon: ``horizon``, ``psnr``, ``ssim``, ``copy_last_psnr``,
    ``copy_last_ssim``; and ``context``, ``clips``."""
    y = _clips(truth, "truth", grey=False)
    p = _clips(pred, "pred", grey=False)
    n, t = y.shape[:2]
    if not isinstance(context, (int, np.integer)) or not 1 <= context < t:
        raise ValueError(f"context must be an integer from 1 to {t - 1} (the clips have {t} frames), got {context!r}")
    future = y[:, context:]
    if p.shape == y.shape:
        p = p[:, context:]
    if p.shape != future.shape:
        raise ValueError(f"pred has shape {p.shape}; expected the whole clips {y.shape} or the {t - context} future "
                         f"frames {future.shape}")
    copy = np.broadcast_to(y[:, context - 1:context], future.shape)
    return {"horizon": list(range(1, t - context + 1)),
            "psnr": psnr(p, future).mean(0).tolist(), "ssim": ssim(p, future).mean(0).tolist(),
            "copy_last_psnr": psnr(copy, future).mean(0).tolist(),
            "copy_last_ssim": ssim(copy, future).mean(0).tolist(), "context": int(context), "clips": int(n)}


# ----------------------------------------------------------------------------------------------
# everything at once


def _as_reference(reference) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference clips in [0, 1] and their digit counts when known (a moving-digits dataset)."""
    if isinstance(reference, Dataset):
        x = reference.to_unit(reference.get(slice(None))).numpy()
        known = isinstance(reference, VideoDataset) and reference.digits is not None
        return _clips(x, "reference"), (1 + (reference.digits[:, 1] >= 0).numpy()) if known else None
    return _clips(reference, "reference"), None


def _motion_summary(res: dict) -> dict:
    r, c = res["residual"], res["counts"]

    def mean(sel):
        return float(np.nanmean(r[sel])) if np.isfinite(r[sel]).any() else None

    return {"motion": mean(np.ones(len(r), bool)), "motion_one": mean(c == 1), "motion_two": mean(c == 2),
            "motion_tracked": float(np.isfinite(r).mean())}


def _identity_scores(probs: np.ndarray) -> dict:
    read = probs.argmax(2)
    return {"identity": _identity_of(probs, strict=True), "identity_tolerant": _identity_of(probs),
            "identity_frames": float((read == _modal(read)[:, None]).mean())}


def evaluate_video(samples, reference, labels=None, *, reference_scores: bool = True) -> dict:
    """All the video scores of ``samples`` against ``reference`` (clips ``(N, T, 1, H, W)`` in
    [0, 1], or a moving-digits :class:`~undiffuse.data.base.Dataset` for the reference).

    Keys: ``fd`` (per frame), ``clip_fd``, ``identity``, ``identity_tolerant`` (:func:`identity`),
    ``identity_frames`` (the share of frames read as their clip's most-read set), ``motion`` (with ``motion_one`` / ``motion_two`` for
    clips read as one / two digits, and ``motion_tracked``, the share of clips that could be
    tracked); with ``labels`` (requested digit sets: class indices, digit pairs or names)
    ``adherence`` and ``identity_requested``. ``reference_scores`` adds ``reference``: the same
    identity and motion numbers for the reference clips, the real-data floor and ceiling.
    ``protocol`` says how each was measured."""
    t0 = time.perf_counter()
    s = _clips(samples, "samples")
    r, ref_counts = _as_reference(reference)
    if s.shape[1:] != r.shape[1:]:
        raise ValueError(f"samples are clips of shape {s.shape[1:]} but the reference has {r.shape[1:]}; they must "
                         "match")
    out = {"fd": per_frame_fd(s, r), "clip_fd": clip_fd(s, r)}
    probs = vf.frame_probabilities(s)
    out.update(_identity_scores(probs))
    modal = _modal(probs.argmax(2))
    if labels is not None:
        req = _requested(labels, len(s))
        out["adherence"] = float((modal == req).mean())
        out["identity_requested"] = _identity_of(probs, req, strict=True)
    counts = np.array([len(vf.digit_set(k)) for k in modal])
    out.update(_motion_summary(motion_residuals(s, counts)))
    if reference_scores:
        ref_probs = vf.frame_probabilities(r)
        if ref_counts is None:
            ref_counts = np.array([len(vf.digit_set(k)) for k in _modal(ref_probs.argmax(2))])
        out["reference"] = {**_identity_scores(ref_probs), **_motion_summary(motion_residuals(r, ref_counts))}
    out["protocol"] = {
        "samples": len(s), "reference_count": len(r), "clip_shape": list(s.shape[1:]),
        "fd": "Frechet distance of all frames in the mnist5k classifier's 64-d features (frames resized to 28x28, "
              "antialiased)",
        "clip_fd": "Frechet distance of whole clips in the in-project clip classifier's 128-d features (digit set "
                   "+ motion direction; FVD's role)",
        "identity": f"share of clips whose most-read digit set is the per-frame reader's (65 sets) first choice in "
                    f"every frame (identity_tolerant: it gets probability >= {IDENTITY_FLOOR:g} in every frame; "
                    f"identity_frames: share of frames whose first choice it is); compare with reference",
        "motion": "mean per-clip RMS (px) of tracked centroids against the best constant-velocity bouncing path; "
                  "digit count from the reader (reference: from the dataset when known)",
        "seconds": round(time.perf_counter() - t0, 2)}
    if labels is not None:
        out["protocol"]["adherence"] = "share of clips whose most-read digit set is the requested one"
    return out
