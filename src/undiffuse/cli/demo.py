"""``undiffuse demo``: the README's main job. Train the default digits preset on this machine,
sample a grid with a fast sampler, and score the samples honestly (``--analytic``: the exact
Gaussian-mixture job of :mod:`undiffuse.cli.analytic_demo` instead, no training; ``--data
emoji``: the text-to-image job of :mod:`undiffuse.cli.text_demo`).

Scores (``scores.json``) come from the evaluation suite (``metrics.evaluate``) on ``num``
samples against the 1,797 real digits, in the features of the in-project digits classifier:
Frechet distance, KID, precision/recall, density/coverage and the share of near-copies of
training images, each with its protocol; plus the training and sampling facts.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

from undiffuse import data as _data
from undiffuse import samplers
from undiffuse.cli import analytic_demo, text_demo
from undiffuse.cli.options import add_set, check_folder, duration, log, positive_int
from undiffuse.config import resolve
from undiffuse.inference import generate as gen
from undiffuse.metrics.copies import copy_pairs_grid
from undiffuse.metrics.evaluate import evaluate, summary_lines, to_json
from undiffuse.training.trainer import Trainer
from undiffuse.utils.atomic import write_json


def add_parser(subparsers) -> None:
    d = subparsers.add_parser("demo", help="train on digits, sample a grid, score it (the README's main job)")
    d.add_argument("--data", choices=("digits", "emoji"), default="digits", help="digits (default): unconditional "
                   "digits; emoji: text to image on the OpenMoji emoji, a grid of named prompts, image-text scores")
    d.add_argument("--out", help="run folder (default: runs/demo, or runs/demo-emoji with --data emoji)")
    d.add_argument("--time-budget", type=duration, help="training time (default: 5m for digits, 10m for emoji)")
    d.add_argument("--guidance", type=float, default=3.0, help="--data emoji: classifier-free guidance scale "
                   "(default: 3)")
    d.add_argument("--max-steps", type=positive_int, help="train for N steps instead of a time budget")
    d.add_argument("--num", type=positive_int, default=1797, help="samples scored (default: 1797)")
    d.add_argument("--seed", type=int, default=0)
    add_set(d)
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--analytic", action="store_true",
                   help="instead: sample an exact Gaussian-mixture model of digits with a calibrated 5-step solver")


def run(args, parser) -> int:
    args.out = args.out or ("runs/demo-emoji" if args.data == "emoji" else "runs/demo")
    check_folder(parser, args.out)
    if args.analytic:
        if args.data != "digits":
            parser.error("--analytic is the digits mixture job; it takes no --data")
        print(json.dumps(analytic_demo.run(args.out, seed=args.seed), indent=1))
        return 0
    budget = None if args.max_steps else args.time_budget or (600.0 if args.data == "emoji" else 300.0)
    common = {"time_budget": budget, "max_steps": args.max_steps, "seed": args.seed,
              "overrides": dict(args.overrides), "progress": not args.no_progress, "log": log}
    try:
        if args.data == "emoji":
            scores = text_demo.run(args.out, guidance=args.guidance, **common)
        else:
            scores = _train_sample_score(args.out, num=args.num, **common)
    except ValueError as e:
        parser.error(str(e))
    print(json.dumps(scores, indent=1))
    print(f"wrote {scores['grid']}, {args.out}/scores.json and checkpoints in {args.out}/checkpoints",
          file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- the trained job

def _train_sample_score(out: str, *, time_budget: float | None = 300.0, max_steps: int | None = None,
                        num: int = 1797, seed: int = 0, overrides: dict | None = None, progress: bool = True,
                        log=print) -> dict:
    """The trained demo: its scores, also written to ``out/scores.json``."""
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
