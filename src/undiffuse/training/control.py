"""Training a control adapter on a frozen run (``undiffuse train-control``).

A control run is an ordinary run whose network is ``{"kind": "controlled"}`` (``nets.control``):
the base run's EMA weights, frozen, plus one adapter whose copy of the down path starts from
them and whose joins start at zero, so at step 0 it samples exactly like the base. It trains
through the diffusion trainer on the base's own data (latent runs: the same latents), its own
condition (classes, captions) with the base's dropout, plus ``control``: the extractor's maps
of the training images (``conditioning.control``), so resume, time budgets, EMA (and post-hoc
EMA), checkpoints and sample grids are the trainer's. The config records the base run and the
SHA-256 of the weights it froze, which sampling checks before joining an adapter to a base.

Defaults: the base's learning rate and batch, no horizontal flips (a flipped image would not
match its map), the budget's fit of warm-up, EMA and checkpoints (``training.budget``).
"""
from __future__ import annotations

import os

from undiffuse import nets
from undiffuse.config import RunConfig
from undiffuse.data import control_maps
from undiffuse.training.budget import fit_budget
from undiffuse.training.latent_route import run_dataset
from undiffuse.training.trainer import Trainer


def control_config(base, extractor: str, dataset, *, max_steps: int | None, time_budget: float | None,
                   overrides: dict | None = None) -> RunConfig:
    """The config of a control run on ``base`` (a ``generate.LoadedRun``)."""
    control_maps.check(extractor)
    if base.config.model.get("kind") != "unet":
        raise ValueError(f"control adapters are built for U-Net runs; {base.checkpoint!r} has a "
                         f"{base.config.model.get('kind')!r} network")
    if (max_steps is None) == (time_budget is None):
        raise ValueError("give exactly one of max_steps and time_budget")
    images = getattr(dataset, "pixels", dataset)
    d = base.config.to_dict()
    d["model"] = {"kind": "controlled", "base": base.config.model,
                  "adapters": [{"extractor": extractor,
                                "control_channels": control_maps.channels(extractor, images.shape[0]),
                                "map_size": images.shape[-1], "sample_size": dataset.shape[-1]}],
                  "scales": [1.0], "base_run": os.path.abspath(base.checkpoint), "base_sha256": base.checksum}
    d["conditioning"]["control"] = extractor
    d["data"]["hflip"] = False
    d["ema"]["posthoc"], d["ema"]["posthoc_every"] = [], 0
    d["train"].update(max_steps=max_steps, time_budget=time_budget, eval_every=0, keep_best=False)
    for key, value in (overrides or {}).items():
        sec, name = key.split(".", 1)
        d[sec][name] = value
    return RunConfig.from_dict(d)


def initial_weights(base, cfg: RunConfig) -> dict:
    """The control run's starting weights: the base frozen, the adapter's copy from it."""
    net = nets.build(cfg.model)
    net.base.load_state_dict(base.denoiser.net.state_dict())
    for adapter in net.adapters:
        adapter.load_base(net.base)
    return net.state_dict()


def train_control(base, extractor: str, out: str, *, max_steps: int | None = None, time_budget: float | None = None,
                  overrides: dict | None = None, resume: str | None = None, progress: bool = True, log=print) -> dict:
    """Train an adapter for ``extractor`` maps on ``base`` (a ``generate.LoadedRun``) into ``out``."""
    dataset = run_dataset(base.config)
    cfg = control_config(base, extractor, dataset, max_steps=max_steps, time_budget=time_budget, overrides=overrides)
    if resume is None:
        fit = fit_budget(cfg, tuple(dataset.shape), set(overrides or ()), default_preset=False)
        cfg = fit.config
        for reason in fit.reasons:
            log(f"budget: {reason}")
    trainer = Trainer(cfg, dataset, out, resume=resume, progress=progress, log=log,
                      init_weights=initial_weights(base, cfg))
    return trainer.fit()
