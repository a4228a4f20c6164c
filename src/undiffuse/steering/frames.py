"""Given frames: one video model that generates, predicts and interpolates (MCVD's masked
conditioning, Voleti et al. 2022).

A video network built with ``frame_cond`` reads ``cond_frames`` (B, T, C, H, W) and
``frame_mask`` (B, T) bool: the frames that are known. Training draws a task per clip
(:func:`frame_tasks`): nothing given (generation), the first k frames (prediction), both ends
(interpolation), or a random subset. At sampling time the caller says which frames are given
(:func:`prediction_mask`, :func:`interpolation_mask`) and :class:`KeepGiven` wraps the
denoiser: it passes the frames to the network and returns them unchanged where they are
given, so a sampler's last step to sigma 0 lands on them; :func:`paste` then writes them over
the result so the output holds them bit for bit whatever the sampler.
"""
from __future__ import annotations

from typing import Callable

import torch

from undiffuse.steering.guidance import _Wrapper

Tensor = torch.Tensor

# Training mix of tasks, by share of clips: generation, prediction, interpolation, random subset.
TASKS = {"generate": 0.4, "predict": 0.35, "interpolate": 0.15, "random": 0.1}


def frame_tasks(n: int, frames: int, generator: torch.Generator) -> Tensor:
    """``(n, frames)`` bool masks of given frames, a task per clip drawn with :data:`TASKS`'
    shares: prediction gives the first k (1 <= k <= frames / 2), interpolation the first k1 and
    last k2 (each 1 .. frames / 4, at least one frame missing), random each frame with
    probability 1/2 (never all). Draws a fixed number of values from ``generator``."""
    u = torch.rand(n, 4, generator=generator)
    coin = torch.rand(n, frames, generator=generator) < 0.5
    t = torch.arange(frames)
    edges = torch.tensor(list(TASKS.values())).cumsum(0)
    task = torch.searchsorted(edges, u[:, 0] * edges[-1], right=True).clamp(max=len(TASKS) - 1)
    k = 1 + (u[:, 1] * max(1, frames // 2)).long()
    k1 = 1 + (u[:, 2] * max(1, frames // 4)).long()
    k2 = 1 + (u[:, 3] * max(1, frames // 4)).long()
    predict = t[None] < k[:, None]
    interpolate = (t[None] < k1[:, None]) | (t[None] >= frames - k2[:, None])
    mask = torch.zeros(n, frames, dtype=torch.bool)
    mask = torch.where((task == 1)[:, None], predict, mask)
    mask = torch.where((task == 2)[:, None], interpolate, mask)
    mask = torch.where((task == 3)[:, None], coin, mask)
    return mask & ~mask.all(1, keepdim=True)  # at least one frame is generated


def prediction_mask(frames: int, context: int) -> Tensor:
    """The first ``context`` of ``frames`` given, as a ``(frames,)`` bool mask."""
    if not 0 < context < frames:
        raise ValueError(f"context must be 1 .. {frames - 1} frames for clips of {frames}, got {context}")
    return torch.arange(frames) < context


def interpolation_mask(frames: int, start: int, end: int) -> Tensor:
    """Frames ``start .. end - 1`` missing (generated), the others given."""
    if not 0 <= start < end <= frames or (start == 0 and end == frames):
        raise ValueError(f"missing frames {start}:{end} must lie inside 0:{frames} and leave a frame given")
    t = torch.arange(frames)
    return (t < start) | (t >= end)


class KeepGiven(_Wrapper):
    """The wrapped denoiser with its given frames kept: called with ``cond_frames`` (B, T, C, H, W)
    in model space and ``frame_mask`` (B, T), it passes both to the network and returns the
    given frames unchanged where the mask is on; called without them, it is the inner denoiser."""

    def __init__(self, denoiser: Callable):
        self.inner = denoiser

    def __call__(self, x: Tensor, sigma: Tensor, cond_frames: Tensor | None = None,
                 frame_mask: Tensor | None = None, **cond) -> Tensor:
        if cond_frames is None:
            return self.inner(x, sigma, **cond)
        if frame_mask is None:
            raise ValueError("cond_frames needs frame_mask (B, T): which frames are given")
        d = self.inner(x, sigma, cond_frames=cond_frames, frame_mask=frame_mask, **cond)
        return paste(d, cond_frames, frame_mask)


def with_given(cond: dict, x0: Tensor) -> dict:
    """Training conditions with ``cond_frames``: the clean clips ``x0`` where ``frame_mask`` is on."""
    if "frame_mask" not in cond:
        return cond
    return {**cond, "cond_frames": x0 * cond["frame_mask"][:, :, None, None, None].to(x0.dtype)}


def paste(x: Tensor, frames: Tensor, mask: Tensor) -> Tensor:
    """``x`` with the given frames written over it."""
    frames, mask = _rows(frames, len(x)).to(x), _rows(mask.bool(), len(x)).to(x.device)
    return torch.where(mask[:, :, None, None, None], frames, x)


def _rows(t: Tensor, batch: int) -> Tensor:
    return t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 and batch > 1 else t
