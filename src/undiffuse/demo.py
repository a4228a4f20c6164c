"""The README's main job: train the default digits preset on this machine, sample a grid with
a fast sampler, and score the samples honestly.

Scores (``scores.json``):

* ``fd_digits``: Frechet distance between ``num`` samples and the 1,797 real digits in the
  features of a small digits classifier (``metrics.fd_digits``), next to two reference points
  of the same feature space: the real set split in two halves (the floor) and the real images
  with Gaussian pixel noise of sd 0.15;
* ``copy_rate``: share of samples that are near-copies of a training image (nearest training
  distance below a third of that image's own nearest-neighbour spacing).
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from . import data as _data
from . import generate as gen
from .config import resolve
from .metrics import fd_digits, nearest_copies
from .metrics.copies import copy_pairs_grid
from .train import Trainer
from ._io import write_json


def score_digits(x01: torch.Tensor, dataset) -> dict:
    real = dataset.to_unit(dataset.get(torch.arange(len(dataset))))
    copies = nearest_copies(x01.reshape(len(x01), -1), real.reshape(len(real), -1))
    return {"fd_digits": fd_digits(x01.numpy()), "copy_rate": copies["copy_rate"], "copies": copies["copies"],
            "protocol": {"samples": len(x01), "reference": f"scikit-learn digits ({len(real)} images)",
                         "features": "undiffuse digits classifier, 64-d penultimate layer",
                         "copy_rule": f"nearest training distance < {copies['threshold']:.3g} x that image's "
                                      "nearest-neighbour spacing (pixels)"}}, copies


def run(out: str, *, time_budget: float | None = 300.0, max_steps: int | None = None, num: int = 1797,
        seed: int = 0, overrides: dict | None = None, progress: bool = True, log=print) -> dict:
    dataset = _data.load("digits")
    over = {"train.time_budget": time_budget, "train.max_steps": max_steps, "train.seed": seed,
            **(overrides or {})}
    cfg = resolve("digits", dataset, over)
    t0 = time.time()
    trainer = Trainer(cfg, dataset, out, resume="auto", progress=progress, log=log)
    result = trainer.fit()
    train_s = time.time() - t0
    loaded = gen.load_run(out)
    t1 = time.time()
    x = gen.generate(loaded, num, seed=seed, progress=progress)
    sample_s = time.time() - t1
    x01 = gen.to_unit(x)
    params = {"checkpoint": os.path.abspath(loaded.checkpoint), "step": loaded.step, "weights": "ema",
              "sampler": cfg.sample.sampler, "steps": cfg.sample.steps, "schedule": cfg.sample.schedule}
    gen.save_images(os.path.join(out, "samples"), x01[:64], params, seed=seed, individual=False)
    scores, copies = score_digits(x01, dataset)
    real = dataset.to_unit(dataset.get(torch.arange(len(dataset))))
    pairs = copy_pairs_grid(x01, real, copies, k=16)
    gen.save_png(os.path.join(out, "closest_pairs.png"),
                 (np.asarray(pairs).reshape(*pairs.shape[:2], -1) * 255).round().astype(np.uint8), scale=4)
    info = loaded.denoiser.net
    scores.update({
        "steps_trained": result["step"], "train_seconds": round(result["elapsed"], 1),
        "wall_seconds": {"train": round(train_s, 1), "sample": round(sample_s, 1)},
        "network_evaluations_per_sample": _nfe(cfg.sample.sampler, cfg.sample.steps),
        "parameters": sum(p.numel() for p in info.parameters()),
        "sampler": params, "grid": os.path.join(out, "samples", "grid.png"),
    })
    write_json(os.path.join(out, "scores.json"), scores)
    return scores


def _nfe(sampler: str, steps: int) -> int:
    from . import samplers

    info = samplers.info(sampler)
    n = info.evals_per_step * steps
    return n - 1 if sampler == "heun" else n  # Heun's last step is a plain Euler step to sigma = 0
