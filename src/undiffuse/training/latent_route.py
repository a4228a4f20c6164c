"""Latent diffusion in one call: train an autoencoder on the images for a share of the budget,
then a diffusion model on its latents for the rest (Rombach et al. 2022's two stages).

This is the route that measured best for colour text-to-image on a CPU (BENCHMARKS.md, the emoji
sections): at equal time, a small autoencoder plus a U-Net on 8x8 latents beats the same
U-Net on pixel patches. ``undiffuse train --latent`` without ``--autoencoder``, ``undiffuse
demo --data emoji`` and ``benchmarks/emoji_t2i.py`` all go through :func:`train_latent_route`.

The autoencoder is written to ``OUT/autoencoder`` and reused when it is already there (a
resumed run does not train it again). Time counts both stages' training steps: with
``time_budget`` B, the autoencoder trains for ``ae_share * B`` seconds and the diffusion model
for B minus the seconds the autoencoder recorded, so a resumed run gets the same split. As
with checkpoints, the autoencoder's final evaluation and the encoding of the data (about ten
seconds for the emoji) are outside the budget; the result reports them.
"""
from __future__ import annotations

import os
import time

from undiffuse import data as _data
from undiffuse.config import resolve
from undiffuse.inference.codec import LatentCodec, LatentDataset, load_autoencoder
from undiffuse.nets.autoencoder import Autoencoder, AutoencoderConfig
from undiffuse.training.autoencoder import train_autoencoder
from undiffuse.training.loop import seeded
from undiffuse.training.trainer import Trainer

AE_SHARE = 0.3  # of the time budget (or of max_steps): the share the emoji ablation picked
AUTOENCODER = "autoencoder"  # its folder inside the run


def run_dataset(cfg):
    """The data a run trained on (``cfg``: its ``RunConfig``): its dataset, encoded by its
    autoencoder (checked against the recorded checksum) when it is a latent run."""
    dataset = _data.load(cfg.data.name, image_size=cfg.data.image_size, channels=cfg.data.channels,
                          sample_rate=cfg.data.sample_rate, representation=cfg.data.representation,
                          frames=cfg.data.frames)
    if cfg.latent.autoencoder is not None:
        dataset = LatentDataset(dataset, load_autoencoder(cfg.latent.autoencoder, expect_sha256=cfg.latent.sha256))
    return dataset


def latent_overrides(codec: LatentCodec) -> dict:
    """The config entries that record the autoencoder a latent run was trained on."""
    return {"latent.autoencoder": codec.path, "latent.sha256": codec.sha256,
            "latent.scale_factor": codec.scale_factor, "diffusion.sigma_data": 1.0}


def rest_of_budget(time_budget: float | None, max_steps: int | None, codec: LatentCodec,
                   ae_share: float = AE_SHARE) -> tuple[float | None, int | None]:
    """The diffusion stage's (time budget, max steps) out of the whole recipe's: the budget less
    the seconds the autoencoder recorded, the steps less its share (the same split on resume)."""
    if time_budget:
        time_budget = max(1.0, time_budget - float(codec.meta["training"]["seconds"]))
    if max_steps:
        max_steps = max(1, max_steps - max(1, round(max_steps * ae_share)))
    return time_budget, max_steps


def autoencoder_for(dataset, out: str, *, time_budget: float | None, max_steps: int | None, seed: int = 0,
                    ae_share: float = AE_SHARE, net_config: dict | None = None, log=print) -> LatentCodec:
    """The run's autoencoder: ``out/autoencoder`` when it exists, else trained for ``ae_share``
    of the budget (seconds, or steps when only ``max_steps`` is given; at least one step)."""
    folder = os.path.join(out, AUTOENCODER)
    if os.path.exists(os.path.join(folder, "autoencoder.json")):
        return load_autoencoder(folder)
    if not 0.0 < ae_share < 1.0:
        raise ValueError(f"ae_share must be in (0, 1), got {ae_share}")
    return train_autoencoder(dataset, folder, time_budget=time_budget and time_budget * ae_share,
                             max_steps=max(1, round(max_steps * ae_share)) if max_steps else None, seed=seed,
                             net_config=net_config, log=log)


def planned_codec(dataset, out: str, *, time_budget: float | None, ae_share: float = AE_SHARE,
                  net_config: dict | None = None) -> LatentCodec:
    """What :func:`autoencoder_for` would train, untrained: its shapes, its folder and, as its
    recorded seconds, its share of the budget; for ``train --dry-run``, which trains nothing.
    Its latents (and so ``latent.scale_factor``) mean nothing."""
    frame = tuple(dataset.shape[1:] if dataset.kind == "video" else dataset.shape)
    with seeded(0):
        net = Autoencoder(AutoencoderConfig(in_channels=frame[0], **(net_config or {})))
    meta = {"scale_factor": 1.0, "image_shape": list(frame), "latent_shape": list(net.latent_shape(frame)),
            "training": {"seconds": (time_budget or 0.0) * ae_share}, "data": {"name": dataset.name}}
    return LatentCodec(net, meta, path=os.path.abspath(os.path.join(out, AUTOENCODER)))


def train_latent_route(dataset, out: str, *, preset: str | None, overrides: dict | None = None,
                       ae_share: float = AE_SHARE, ae_net: dict | None = None, resume: str | None = "auto",
                       progress: bool = True, log=print) -> dict:
    """Train both stages into ``out``. ``overrides`` are config entries as for
    :func:`undiffuse.config.resolve` (``train.time_budget`` and ``train.max_steps`` are the
    whole recipe's); ``preset`` None picks the latent preset from the data. Returns the
    diffusion trainer's result plus ``autoencoder_seconds`` (its training steps, as it
    recorded them), ``autoencoder_wall`` (this call's time to train or load it, evaluation
    included), ``encode_seconds`` and ``train_seconds`` (both stages' training steps)."""
    over = dict(overrides or {})
    budget, max_steps = over.get("train.time_budget"), over.get("train.max_steps")
    seed = int(over.get("train.seed", 0))
    t0 = time.perf_counter()
    codec = autoencoder_for(dataset, out, time_budget=budget, max_steps=max_steps, seed=seed, ae_share=ae_share,
                            net_config=ae_net, log=log)
    t1 = time.perf_counter()
    latents = LatentDataset(dataset, codec)
    t2 = time.perf_counter()
    over["train.time_budget"], over["train.max_steps"] = rest_of_budget(budget, max_steps, codec, ae_share)
    cfg = resolve(preset, latents, {**over, **latent_overrides(codec)})
    result = Trainer(cfg, latents, out, resume=resume, progress=progress, log=log).fit()
    ae_seconds = float(codec.meta["training"]["seconds"])
    return {**result, "autoencoder_seconds": ae_seconds, "autoencoder_wall": t1 - t0, "encode_seconds": t2 - t1,
            "train_seconds": ae_seconds + result["elapsed"], "config": cfg, "codec": codec}
