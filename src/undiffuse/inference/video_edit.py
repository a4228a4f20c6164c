"""Prediction and interpolation with a video run: the given frames go to the network as its
``cond_frames`` (steering.frames), so the same model that generates clips also continues and
fills them, and the given frames come out exactly as given.

Clips are in model space ([-1, 1]) with shape (N, T, C, H, W). A prediction longer than the
run's clip length goes on window by window (as MCVD does): each window is given the last
``context`` frames made so far and adds ``T - context`` new ones. A latent run is given the
frames' latents (its autoencoder encodes them) and its output holds the given frames
themselves, not their decoded latents.
"""
from __future__ import annotations

import torch

from undiffuse.inference import generate as gen
from undiffuse.steering.frames import interpolation_mask, prediction_mask

Tensor = torch.Tensor


def check_clips(run: gen.LoadedRun, clips: Tensor, what: str = "video") -> Tensor:
    """``clips`` (N, t, C, H, W) checked against the run's frames (C, H, W); t may differ."""
    if run.kind != "video":
        raise ValueError(f"{run.checkpoint} makes {run.kind}s, not videos")
    frame = tuple(run.image_shape[1:])
    if clips.dim() != 5 or tuple(clips.shape[2:]) != frame:
        raise ValueError(f"{what}: frames of shape {tuple(clips.shape[2:]) if clips.dim() == 5 else tuple(clips.shape)} "
                         f"do not fit this run, which makes frames of (C, H, W) = {frame}")
    return clips


def predict(run: gen.LoadedRun, context: Tensor, frames: int, *, seed: int = 0, condition: dict | None = None,
            denoiser=None, **options) -> Tensor:
    """The ``context`` clips (N, c, C, H, W) followed by ``frames`` predicted frames: (N, c +
    frames, C, H, W). ``condition`` (class, prompt) and ``denoiser`` (guidance) as in
    :func:`generate.generate`; window w uses seeds ``seed + w * N + i``."""
    check_clips(run, context, "context")
    n, c = context.shape[:2]
    t = run.shape[0]
    mask = prediction_mask(t, c)  # refuses a context as long as the run's clips
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    clip, window = context, 0
    while clip.shape[1] < c + frames:
        given = torch.zeros(n, *run.shape)
        given[:, :c] = _encoded(run, clip[:, -c:])
        cond = {**(condition or {}), "cond_frames": given, "frame_mask": mask[None].expand(n, t)}
        out = gen.generate(run, n, seed=seed + window * n, condition=cond, denoiser=denoiser, **options)
        clip = torch.cat([clip, out[:, c:]], dim=1)
        window += 1
    return clip[:, :c + frames]


def _encoded(run: gen.LoadedRun, frames: Tensor) -> Tensor:
    """Frames as the run's network sees them: a latent run's scaled latents, else themselves."""
    return frames if run.decoder is None else run.decoder.encode(frames)


def interpolate(run: gen.LoadedRun, clips: Tensor, start: int, end: int, *, seed: int = 0,
                condition: dict | None = None, denoiser=None, **options) -> Tensor:
    """``clips`` (N, T, C, H, W) with frames ``start .. end - 1`` generated between the others."""
    check_clips(run, clips)
    n, t = clips.shape[:2]
    if t != run.shape[0]:
        raise ValueError(f"interpolation needs clips of this run's {run.shape[0]} frames, got {t}")
    mask = interpolation_mask(t, start, end)
    given = _encoded(run, clips) * mask[None, :, None, None, None]
    cond = {**(condition or {}), "cond_frames": given, "frame_mask": mask[None].expand(n, t)}
    out = gen.generate(run, n, seed=seed, condition=cond, denoiser=denoiser, **options)
    return torch.where(mask[None, :, None, None, None], clips, out)  # the given frames themselves (latent runs)
