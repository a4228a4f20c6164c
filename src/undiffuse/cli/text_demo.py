"""``undiffuse demo --data emoji``: the text-to-image demo, on the latent route that measured
best on a CPU (BENCHMARKS.md): an autoencoder on the emoji, then the ``emoji-latent`` preset
with captions on its latents (``training.latent_route``, which splits the budget). It draws a grid of
named prompts with each prompt under its image (12 training emoji and 4 held-out ones,
marked) and scores samples of 512 training prompts and of every held-out prompt with the
image-text scorer (``metrics.image_text``; trained once, then cached).

Writes ``OUT/autoencoder/``, ``OUT/prompts.png``, ``OUT/scores.json`` (``train`` and
``heldout``: fd, clip_score, prompt_accuracy, precision / recall, copy_rate, each with its
protocol) and the run's checkpoints.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from undiffuse import data as _data
from undiffuse.inference import generate as gen
from undiffuse.io.images import captioned_grid, save_png, to_uint8
from undiffuse.metrics.evaluate import evaluate, summary_lines, to_json
from undiffuse.steering import text
from undiffuse.training.latent_route import train_latent_route
from undiffuse.utils.atomic import write_json

GRID_PROMPTS = ("red apple", "snail", "rocket", "pizza", "sun", "red heart", "cat face", "flag: Japan", "banana",
                "grinning face", "Christmas tree", "soccer ball", "fire", "hot beverage", "blue heart", "rainbow",
                "crescent moon", "ghost", "carrot", "butterfly", "bicycle", "umbrella", "cactus", "strawberry")
SCORED_TRAIN = 512


def grid_prompts(train: list[str], heldout: list[str]) -> list[tuple[str, bool]]:
    """12 prompts from the training split and 4 held-out ones (``(prompt, held out)``): named
    everyday emoji first, then the first names of each split."""
    tr = [p for p in GRID_PROMPTS if p in train] + [p for p in train if p not in GRID_PROMPTS]
    ho = [p for p in GRID_PROMPTS if p in heldout] + [p for p in heldout if p not in GRID_PROMPTS]
    return [(p, False) for p in tr[:12]] + [(p, True) for p in ho[:4]]


def run(out: str, *, time_budget: float | None, max_steps: int | None, seed: int = 0, guidance: float = 3.0,
        overrides: dict | None = None, progress: bool = True, log=print) -> dict:
    """Train, draw the prompt grid, score; the scores are also written to ``out/scores.json``."""
    train, heldout = _data.load("emoji"), _data.load("emoji:heldout")
    t0 = time.time()
    over = {"conditioning.kind": "text", "train.time_budget": time_budget, "train.max_steps": max_steps,
            "train.seed": seed, **(overrides or {})}
    result = train_latent_route(train, out, preset="emoji-latent", overrides=over, progress=progress, log=log)
    cfg = result["config"]
    train_s = time.time() - t0
    loaded = gen.load_run(out)
    names = {"train": [w[0] for w in train.captions], "heldout": [w[0] for w in heldout.captions]}
    shown = grid_prompts(names["train"], names["heldout"])
    x = _draw(loaded, [p for p, _ in shown], seed, guidance, progress)
    labels = [f"{p} (held out)" if held else p for p, held in shown]
    save_png(os.path.join(out, "prompts.png"), captioned_grid(to_uint8(x), labels))
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(train), min(SCORED_TRAIN, len(train)), replace=False).tolist())
    reference = train.to_unit(train.get(torch.arange(len(train)))).numpy()
    scores, t1 = {}, time.time()
    for split, prompts in (("train", [names["train"][i] for i in picked]), ("heldout", names["heldout"])):
        samples = _draw(loaded, prompts, seed + 1_000_000, guidance, progress).numpy()
        suite = evaluate(samples, reference, feature_space="emoji", prompts=prompts, sentence=text.sentence_embeddings,
                         reference_name=f"emoji training split ({len(train)} images)", seed=seed)
        log(f"{split} prompts:")
        for line in summary_lines(suite):
            log(line)
        scores[split] = to_json(suite)
    scores.update({"steps_trained": result["step"], "train_seconds": round(result["train_seconds"], 1),
                   "wall_seconds": {"train": round(train_s, 1), "sample_and_score": round(time.time() - t1, 1)},
                   "guidance": guidance, "sampler": {"name": cfg.sample.sampler, "steps": cfg.sample.steps},
                   "grid": os.path.join(out, "prompts.png"), "licence": train.info["licence"],
                   "attribution": train.info["attribution"]})
    write_json(os.path.join(out, "scores.json"), scores)
    return scores


def _draw(loaded, prompts: list[str], seed: int, guidance: float, progress: bool) -> torch.Tensor:
    """One sample per prompt (sample i from seed + i), classifier-free guided, in [0, 1]."""
    den = gen.guided(loaded, guidance=guidance)
    x = gen.generate(loaded, len(prompts), seed=seed, condition=gen.prompt_condition(loaded, prompts), denoiser=den,
                     progress=progress)
    return gen.to_unit(x)
