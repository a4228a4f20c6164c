"""Sampling with control adapters: joining trained adapters (control runs of
``undiffuse train-control``) to the run they were trained for, and turning the user's images
into the control maps they read.

A control run holds its frozen base inside it, so ``sample --checkpoint CTRL`` works alone;
``sample --checkpoint RUN --control CTRL [--control CTRL2]`` joins several adapters (each with
its scale) to one base, and refuses an adapter trained for other weights (the SHA-256 each
control run recorded of its base's EMA file). Control images are read with Pillow, converted
to the base's image channels and, when their size differs from the maps the adapter was
trained on, resized (a note says so); each adapter's extractor then turns them into its map
(or, with ``is_map``, they are the maps already).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from undiffuse.data import control_maps
from undiffuse.io import checkpoint as ckpt
from undiffuse.nets.control import ControlAdapter, ControlledNet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ControlError(ValueError):
    """A control run or control image that cannot be used; the message names it."""


@dataclass(frozen=True)
class Adapter:
    extractor: str
    channels: int  # of its map
    map_size: int


def adapters_of(run) -> list[Adapter]:
    """The control maps a loaded run (``generate.LoadedRun``) reads: its adapters', or the one
    map a U-Net trained with the map concatenated reads (``train --control``); [] otherwise."""
    m, name = run.config.model, run.config.conditioning.control
    if m.get("kind") == "controlled":
        return [Adapter(a["extractor"], a["control_channels"], a["map_size"]) for a in m["adapters"]]
    if name:
        size = run.image_shape[-1]
        return [Adapter(name, control_maps.channels(name, run.image_shape[0]), size)]
    return []


def condition(run, maps: torch.Tensor) -> dict:
    """The network's condition for ``maps`` (from :func:`maps_for`): ``control`` for adapters,
    the maps on the sample grid as ``cond_image`` for a concatenating U-Net."""
    if run.config.model.get("kind") == "controlled":
        return {"control": maps}
    return {"cond_image": control_maps.to_grid(maps, run.shape[-1])}


def join(run, control_runs: list[str], scales: list[float]):
    """``run`` (a plain U-Net run, loaded) steered by the adapters of ``control_runs`` with
    ``scales``; its denoiser's network becomes a ``ControlledNet``, its config records them."""
    if run.config.model.get("kind") != "unet" or run.config.conditioning.control:
        raise ControlError(f"--control joins adapters to a plain U-Net run; {run.checkpoint!r} has a "
                           f"{run.config.model.get('kind')!r} network (a control run samples with its own adapter: "
                           f"give it as --checkpoint)")
    if len(scales) != len(control_runs):
        raise ControlError(f"--control-scale: {len(scales)} scale(s) for {len(control_runs)} --control run(s); give "
                           f"one per control run")
    adapters, specs = [], []
    for path in control_runs:
        loaded = ckpt.load_checkpoint(path)
        model = loaded["state_json"]["config"]["model"]
        if model.get("kind") != "controlled":
            raise ControlError(f"--control {path!r} is not a control run (its network is {model.get('kind')!r}); "
                               f"train one with `undiffuse train-control`")
        if model.get("base_sha256") != run.checksum:
            raise ControlError(f"--control {path!r} was trained for another base: it froze weights with SHA-256 "
                               f"{str(model.get('base_sha256'))[:16]}... ({model.get('base_run')}), --checkpoint "
                               f"{run.checkpoint!r} has {run.checksum[:16]}...")
        for i, spec in enumerate(model["adapters"]):
            adapter = ControlAdapter(model["base"], spec["control_channels"], spec["map_size"], spec["sample_size"])
            prefix = f"adapters.{i}."
            adapter.load_state_dict({k[len(prefix):]: v for k, v in loaded["ema"].items() if k.startswith(prefix)})
            adapters.append(adapter.to(next(run.denoiser.net.parameters()).device).eval().requires_grad_(False))
            specs.append({**spec, "source": os.path.abspath(path)})
    run.denoiser.net = ControlledNet(run.denoiser.net, adapters, list(scales)).eval()
    run.config.model = {"kind": "controlled", "base": run.config.model, "adapters": specs, "scales": list(scales),
                        "control_runs": [s["source"] for s in specs]}
    return run


def set_scales(run, scales: list[float]) -> None:
    """The scales of a control run's own adapters (one per adapter)."""
    net = run.denoiser.net
    if not isinstance(net, ControlledNet):
        raise ControlError(f"--control-scale sets the strength of control adapters; {run.checkpoint!r} reads its map "
                           f"concatenated to the input (train --control), which has no scale")
    if len(scales) != len(net.adapters):
        raise ControlError(f"--control-scale: {len(scales)} scale(s) for {len(net.adapters)} adapter(s)")
    net.scales = list(scales)
    run.config.model["scales"] = list(scales)


def image_files(paths: list[str]) -> list[str]:
    """The files of ``paths`` in order (a folder: its images, sorted by name)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(f for f in os.listdir(p) if f.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise ControlError(f"--control-image {p!r} is a folder with no images ({', '.join(IMAGE_SUFFIXES)})")
            out += [os.path.join(p, f) for f in found]
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise ControlError(f"--control-image {p!r} does not exist")
    return out


def _open(source, what: str) -> Image.Image:
    """A file path, raw bytes or an open PIL image, loaded."""
    if isinstance(source, Image.Image):
        return source
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            return im
    except (UnidentifiedImageError, OSError) as e:
        raise ControlError(f"{what} is not an image Pillow can read ({e})") from None


def read_images(sources: list, channels: int, size: int, *, nearest: bool = False, note=print,
                what: str = "--control-image") -> torch.Tensor:
    """``sources`` (file paths, image bytes or PIL images) as (N, channels, size, size) float32
    in [0, 1] (RGBA kept for the mask extractor when ``channels`` is 3 and the image has alpha)."""
    out = []
    for f in sources:
        img = _open(f, f"{what} {f!r}" if isinstance(f, str) else what)
        alpha = channels == 3 and ("A" in img.getbands() or "transparency" in img.info)
        img = img.convert("L" if channels == 1 else ("RGBA" if alpha else "RGB"))
        if img.size != (size, size):
            note(f"{what} {f if isinstance(f, str) else ''}: {img.size[0]}x{img.size[1]} resized to the adapter's "
                 f"{size}x{size}")
            img = img.resize((size, size), Image.NEAREST if nearest else Image.BICUBIC)
        arr = np.asarray(img, np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if alpha:  # white behind transparent pixels (the model's own background for emoji), alpha kept last
            arr = np.concatenate([arr[:3] * arr[3:] + (1 - arr[3:]), arr[3:]])
        out.append(torch.from_numpy(np.ascontiguousarray(arr)))
    channels_seen = {t.shape[0] for t in out}
    if len(channels_seen) > 1:  # some with alpha, some without: drop alpha everywhere
        out = [t[:3] for t in out]
    return torch.stack(out)


def maps_for(run, files: list, *, is_map: bool = False, note=print, what: str = "--control-image") -> torch.Tensor:
    """The ``control`` condition of ``run`` for ``files`` (paths, image bytes or PIL images):
    each adapter's map, concatenated."""
    adapters = adapters_of(run)
    if not adapters:
        raise ControlError(f"{run.checkpoint!r} has no control adapter: give --control CTRL (a run from "
                           f"`undiffuse train-control`) or sample without --control-image")
    image_channels = run.image_shape[0]
    maps = []
    for a in adapters:
        if is_map:
            m = read_images(files, a.channels if a.channels in (1, 3) else image_channels, a.map_size, nearest=True,
                            note=note, what=what)[:, :a.channels]
        else:
            images = read_images(files, image_channels, a.map_size, note=note, what=what)
            if a.extractor != "mask":
                images = images[:, :image_channels]
            m = control_maps.extract(a.extractor, images)
        maps.append(m)
    return torch.cat(maps, 1)
