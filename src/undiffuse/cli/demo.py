"""The README's main job: train the default digits preset on this machine, sample a grid with
a fast sampler, and score the samples honestly.

Scores (``scores.json``) come from the evaluation suite (``metrics.evaluate``) on ``num``
samples against the 1,797 real digits, in the features of the in-project digits classifier:
Frechet distance, KID, precision/recall, density/coverage and the share of near-copies of
training images, each with its protocol; plus the training and sampling facts.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from undiffuse import data as _data
from undiffuse import samplers
from undiffuse.config import resolve
from undiffuse.inference import generate as gen
from undiffuse.metrics.copies import copy_pairs_grid
from undiffuse.metrics.evaluate import evaluate, summary_lines, to_json
from undiffuse.training.trainer import Trainer
from undiffuse.utils.atomic import write_json


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
    real = dataset.to_unit(dataset.get(torch.arange(len(dataset))))
    suite = evaluate(x01.numpy(), real.numpy(), reference_name="scikit-learn digits (all 1797)")
    for line in summary_lines(suite):
        log(line)
    scores = to_json(suite)
    pairs = copy_pairs_grid(x01, real, suite["_copies"], k=16)
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
    info = samplers.info(sampler)
    n = info.evals_per_step * steps
    return n - 1 if sampler == "heun" else n  # Heun's last step is a plain Euler step to sigma = 0
