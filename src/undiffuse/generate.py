"""Sampling from trained runs, and writing the results (PNG grid, per-image PNGs with their
generation parameters in PNG text metadata, or an ``.npz`` array).

Image ``i`` of a call with ``seed`` uses the starting noise and (for stochastic samplers)
the fresh noise of seed ``seed + i``, so it is the same image whatever the batch size or
the number of images requested.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from . import checkpoint as ckpt
from ._io import write_atomic
from .config import RunConfig, build_denoiser
from .precond import Denoiser
from .sampling import noise as make_noise
from .sampling import sample

FORMATS = ("png", "npz")


@dataclass
class LoadedRun:
    denoiser: Denoiser
    config: RunConfig
    checkpoint: str       # the checkpoint folder the weights came from
    step: int
    weights: str          # "ema" or "model"
    shape: tuple          # per-sample shape (C, H, W) or (D,)
    kind: str             # "image" or "vector"


def load_run(path: str, *, weights: str = "ema", device: str = "cpu") -> LoadedRun:
    """Load a run folder (its latest complete checkpoint) or a checkpoint folder."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    loaded = ckpt.load_checkpoint(path, device=device)
    state = loaded["state_json"]
    cfg = RunConfig.from_dict(state["config"])
    den = build_denoiser(cfg).to(device).eval()
    den.net.load_state_dict(loaded[weights])
    den.net.requires_grad_(False)
    m = cfg.model
    if m["kind"] == "mlp":
        shape, kind = (m["dim"],), "vector"
    else:
        shape, kind = (m["in_channels"], *state["sample_size"]), "image"
    return LoadedRun(den, cfg, loaded["path"], state["step"], weights, tuple(shape), kind)


def generate(run: LoadedRun, num: int, *, seed: int = 0, sampler: str | None = None, steps: int | None = None,
             schedule: str | None = None, batch_size: int = 256, progress: bool = False, calibration=None,
             **options) -> torch.Tensor:
    """``num`` samples in model space (images in [-1, 1]), float32 on the CPU.

    ``calibration`` (a ``calibrate.Calibration``) replaces sampler, steps and schedule by its
    fitted solver and sigmas.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    s = run.config.sample
    if calibration is not None:
        kw = {**calibration.sample_kwargs(), **options}
    else:
        kw = dict(sampler=sampler or s.sampler, steps=steps or s.steps, schedule=schedule or s.schedule,
                  sigma_min=s.sigma_min, sigma_max=s.sigma_max, **options)
    device = next(run.denoiser.net.parameters()).device
    out = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num, unit="img", desc="sample")
    for start in range(0, num, batch_size):
        seeds = list(range(seed + start, seed + min(start + batch_size, num)))
        z = make_noise((len(seeds), *run.shape), seed=seeds, device=device)
        x = sample(run.denoiser, z, seed=seeds, **kw)
        out.append(x.float().cpu())
        if bar is not None:
            bar.update(len(seeds))
    if bar is not None:
        bar.close()
    return torch.cat(out)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model-space images in [-1, 1] to [0, 1] (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W, C) uint8, rounded."""
    return (x01.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)


def grid(images_u8: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (rows*(H+pad)+pad, ...) image on white."""
    n, h, w, c = images_u8.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = (n + nrow - 1) // nrow
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images_u8):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return out


def _pil(arr: np.ndarray, scale: int = 1):
    from PIL import Image

    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_png(path: str, arr: np.ndarray, *, text: dict[str, str] | None = None, scale: int = 1) -> None:
    """Write an (H, W, C) uint8 array as PNG, atomically, with optional text chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    img = _pil(arr, scale)
    write_atomic(path, lambda tmp: img.save(tmp, format="PNG", pnginfo=info), suffix=".png")


def parameters_text(params: dict) -> str:
    """One line, ``key: value, ...``, the form image tools read from the ``parameters`` chunk."""
    return ", ".join(f"{k}: {v}" for k, v in params.items())


def save_images(out: str, x01: torch.Tensor, params: dict, *, seed: int, individual: bool = True,
                grid_scale: int = 4) -> list[str]:
    """Write ``out/grid.png`` and ``out/000000.png``...; each image's PNG carries its own seed."""
    os.makedirs(out, exist_ok=True)
    u8 = to_uint8(x01)
    meta = {"parameters": parameters_text({**params, "seed": f"{seed}..{seed + len(u8) - 1}"}),
            "undiffuse": json.dumps({**params, "seed": seed, "count": len(u8)})}
    paths = [os.path.join(out, "grid.png")]
    save_png(paths[0], grid(u8), text=meta, scale=grid_scale)
    if individual:
        for i, img in enumerate(u8):
            p = {**params, "seed": seed + i}
            path = os.path.join(out, f"{i:06d}.png")
            save_png(path, img, text={"parameters": parameters_text(p), "undiffuse": json.dumps(p)})
            paths.append(path)
    return paths


def save_npz(path: str, samples: np.ndarray, params: dict) -> None:
    """``samples`` array plus a JSON string ``parameters``; written atomically."""
    def _write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, samples=samples, parameters=np.array(json.dumps(params)))

    write_atomic(path, _write, suffix=".npz")


def scatter(points: np.ndarray, size: int = 256, extent: float | None = None) -> np.ndarray:
    """A 2-D point set as an (size, size, 1) uint8 density picture (dark = many points)."""
    p = np.asarray(points, np.float64)[:, :2]
    lim = extent or float(np.abs(p).max() * 1.05 + 1e-9)
    hist, _, _ = np.histogram2d(p[:, 1], p[:, 0], bins=size, range=[[-lim, lim], [-lim, lim]])
    dens = np.log1p(hist[::-1]) / max(np.log1p(hist.max()), 1e-9)
    return (255 * (1 - dens)).round().astype(np.uint8)[..., None]
