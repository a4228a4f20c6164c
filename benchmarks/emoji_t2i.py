#!/usr/bin/env python
"""Text-to-image training benchmark on the OpenMoji emoji (issue 18): undiffuse's ``emoji``
preset with text conditioning against the loop of diffusers'
``examples/text_to_image/train_text_to_image.py``, both trained for the same wall-clock budget
on this CPU, fed the same MiniLM token embeddings, then sampled with classifier-free guidance
and scored in the same way.

    python benchmarks/emoji_t2i.py [--budget 900] [--threads 2] [--seeds 1]
                                   [--out runs/bench_emoji_t2i] [--write BENCHMARKS.md] [--quick]
    # an ablation variant of ours, added as one more row next to the saved ones:
    python benchmarks/emoji_t2i.py --recipes undiffuse --label p4c64 \\
        --ours-set model.patch_size=4 --ours-set model.channels=64 --write BENCHMARKS.md
    python benchmarks/emoji_t2i.py --count [--ours-set ...] [--diffusers-set ...]  # parameters only

Protocol. Each (recipe, seed) runs in its own fresh subprocess (this script with ``--recipe``),
one after the other, never in parallel, with ``torch.set_num_threads(--threads)``. Training time
counts the training steps only (batch, conditions, forward, backward, optimizer, schedule,
EMA); checkpoints, sampling and scoring are outside it. Data: the 3,592 training emoji
(``data.load("emoji")``, 3x32x32 in [-1, 1]), each with its 4-5 caption wordings; a training
image is shown one of its wordings at random, and the empty caption 10 % of the time (condition
dropout, which classifier-free guidance needs). Captions are the all-MiniLM-L6-v2 token
embeddings (``steering.text.encode_cached(..., max_tokens=24)``: 24 x 384 tokens and a mask),
computed once before training for both recipes.

Scoring (the same for both, in the child, from the EMA weights, guidance ``--guidance`` 3 with
the "" embedding as the unconditional branch): one sample per prompt, sample i from seed
1,000,000 + i, for (1) the first wording of 512 training emoji picked with
``numpy.random.default_rng(0)`` (the picks of ``undiffuse demo --data emoji``) and (2) the
first wording of every held-out emoji (``data.load("emoji:heldout")``, 352). Each set is
scored by ``metrics.evaluate.evaluate(samples, reference, feature_space="emoji", prompts=...,
sentence=steering.text.sentence_embeddings)`` with reference = all 3,592 training images in
[0, 1]: fd, clip_score, prompt_accuracy (own prompt above 9 random emoji names; chance 0.10),
precision, recall, copy_rate. Sampling speed is images per second over both sets (prompt
embeddings computed before the clock starts); NFE per image counts network rows, so a guided
step costs 2. The ceiling: ``metrics.image_text.report`` (the scorer on the real held-out
emoji) and the same ``evaluate`` on the real training images of the 512 picked prompts (their
copy_rate is 1 by construction) and on the real held-out images. A PNG grid
(``OUT/grid.png``) shows the same 16 prompts (``cli.text_demo.grid_prompts``: 12 training,
4 held-out) drawn by every row, one block per row, seed 0 of each.

(a) undiffuse: ``config.resolve("emoji", data.load("emoji"), {"conditioning.kind": "text",
"train.time_budget": B, "train.seed": s, ...})`` plus the ``--ours-set KEY=VALUE`` overrides,
trained by the ``Trainer`` (its cosine learning rate spans the budget), sampled with the run's
recommended sampler (Heun, 12 steps on the Karras schedule) through ``inference.generate``
with ``guided(run, guidance=...)``, as ``cli/text_demo.py`` does. ``--label`` names the row.

(b) diffusers: the example's loop in plain torch in one process (fp32, no accumulation, the
same updates as accelerate on one device). Kept from the example (its defaults, checked
against its source): epsilon target with ``F.mse_loss`` (no SNR weighting, no noise offset,
no input perturbation); timesteps uniform in [0, 1000); ``AdamW(lr=1e-4, betas=(0.9, 0.999),
weight_decay=1e-2, eps=1e-8)``; ``get_scheduler("constant")`` (the example's default
``--lr_warmup_steps 500`` is ignored by diffusers' "constant" schedule, so the rate is 1e-4
from the first step, which is what we use); gradient clipping at norm 1.0; ``--use_ema``:
``EMAModel(parameters, model_cls=UNet2DConditionModel, model_config=...)`` with its defaults
(decay 0.9999, warm-up (1 + t) / (10 + t)) stepped after every optimizer step; shuffled
epochs with a partial last batch; a random wording per image (the example's ``random.choice``
over a list of captions); no flips (``--random_flip`` is off by default, and a flipped
emoji is often another glyph or text). Changed for this setting (the example fine-tunes
Stable Diffusion in its VAE latent space with CLIP text): pixel space, no VAE; a
``UNet2DConditionModel`` from scratch (``DIFFUSERS_UNET``: sample_size 32, 3 channels in and out,
block_out_channels (64, 128, 128), one layer per block, cross-attention (4 heads of 32) at 16x16 and 8x8
and in the middle block, cross_attention_dim 384: 7.17M parameters against the emoji preset's
7.36M); the MiniLM tokens as ``encoder_hidden_states`` with their mask as
``encoder_attention_mask`` (the example pads CLIP tokens and passes no mask); 10 % empty
captions (the example has no caption dropout; without it guidance has no unconditional
model); batch size 64 instead of 16 (the same batch as ours; ``--diffusers-batch 16 --diffusers-label
diffusers-b16`` adds the example's default as another row);
``DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")`` (DDPM's 1e-4 .. 0.02:
the schedule diffusers' pixel-space example uses; the Stable Diffusion ``scaled_linear``
0.00085 .. 0.012 the text-to-image example inherits from its checkpoint was made for latents
and leaves a signal-to-noise ratio of 5e-3 at t = 999, i.e. it leaks the mean colour; choose
it with ``--diffusers-betas scaled_linear``). Sampling: ``DPMSolverMultistepScheduler
.from_config`` of the training scheduler (``algorithm_type="dpmsolver++"``, ``solver_order=2``),
20 steps, the conditional and unconditional rows in one batch as the Stable Diffusion
pipeline does, ``eps_u + g (eps_c - eps_u)``.

Results are kept in ``OUT/results.json`` by row label (``diffusers`` and each undiffuse
label), so a later invocation adds or replaces rows (same prompts, guidance and budget, or
it refuses) and the Markdown section shows all of them; numbers are medians over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _sections import duration_label as label_of, load_avg, log, peak_mib
from _sections import command, machine
from _sections import write_section as _write_section

START_MARK, END_MARK = "<!-- emoji-t2i:start -->", "<!-- emoji-t2i:end -->"
RECIPES = ("undiffuse", "diffusers")
MAX_TOKENS = 24  # the emoji preset's conditioning.max_tokens
DROPOUT = 0.1  # share of empty captions (the emoji preset's conditioning.dropout)
BATCH = 64  # both recipes' training batch (the example's default is 16: --diffusers-batch)
BASELINE = "diffusers"  # the row the criteria compare against
SAMPLE_BATCH = 128  # prompts per sampling batch (diffusers: 256 network rows with guidance)
SCORE_SEED, GRID_SEED = 1_000_000, 0  # sample i of a scored set starts from seed SCORE_SEED + i
METRICS = ("fd", "clip_score", "prompt_accuracy", "precision", "recall", "copy_rate")
DIFFUSERS_UNET = {  # about the emoji preset's size: 7.17M parameters vs 7.36M
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
    "block_out_channels": [64, 128, 128],  # 32x32, 16x16, 8x8
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 384,  # MiniLM token width
    "attention_head_dim": 4,  # diffusers' legacy name: the number of heads (4 x 32 channels)
}
BETAS = {"linear": {"beta_schedule": "linear"},  # DDPM: 1e-4 .. 0.02
         "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}}  # SD


def parse_sets(items: list[str]) -> dict:
    """``KEY=VALUE`` strings (VALUE as JSON when it parses) into a dict."""
    from undiffuse.config import parse_value

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


# ----------------------------------------------------------------------------- prompts and data


def prompt_sets(args) -> dict:
    """The scored prompts (first wordings) and the 16 grid prompts; the training picks are
    those of ``undiffuse demo --data emoji`` (``default_rng(0)``); with fewer held-out prompts
    than all, the first ones after a ``default_rng(1)`` shuffle."""
    from undiffuse import data
    from undiffuse.cli.text_demo import grid_prompts

    train, held = data.load("emoji"), data.load("emoji:heldout")
    names_tr, names_ho = [w[0] for w in train.captions], [w[0] for w in held.captions]
    picked = sorted(np.random.default_rng(0).choice(len(train), min(args.train_prompts, len(train)),
                                                    replace=False).tolist())
    ho = list(range(len(held)))
    if args.heldout_prompts and args.heldout_prompts < len(held):
        ho = sorted(np.random.default_rng(1).permutation(len(held))[:args.heldout_prompts].tolist())
    shown = grid_prompts(names_tr, names_ho)
    return {"train": [names_tr[i] for i in picked], "train_index": picked,
            "heldout": [names_ho[i] for i in ho], "heldout_index": ho,
            "grid": [p for p, _ in shown], "grid_labels": [f"{p} (held out)" if h else p for p, h in shown]}


def reference01() -> np.ndarray:
    """All training emoji as (3592, 3, 32, 32) float64 in [0, 1]."""
    from undiffuse import data

    train = data.load("emoji")
    return train.to_unit(train.get(torch.arange(len(train)))).numpy().astype(np.float64)


def score(samples01: np.ndarray, prompts: list[str], reference: np.ndarray, name: str) -> dict:
    from undiffuse.metrics.evaluate import evaluate
    from undiffuse.steering import text

    suite = evaluate(samples01, reference, feature_space="emoji", prompts=prompts, sentence=text.sentence_embeddings,
                     reference_name=f"emoji training split ({len(reference)} images)", seed=0)
    out = {k: float(suite[k]) for k in METRICS}
    out.update(n=len(samples01), copies=int(suite["copies"]), kid=float(suite["kid"]), notes=suite["protocol"]["notes"],
               prompt_rule=suite["protocol"]["prompt_accuracy"])
    log(f"[{name}] " + ", ".join(f"{k} {out[k]:.3f}" for k in METRICS))
    return out


def count_rows(net: torch.nn.Module):
    """A forward pre-hook counting the rows (images) the network sees; returns (counter, handle)."""
    rows = [0]

    def hook(module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        rows[0] += x.shape[0]

    return rows, net.register_forward_pre_hook(hook, with_kwargs=True)


def evaluate_recipe(args, out: Path, tag: str, net: torch.nn.Module, draw, conditions) -> dict:
    """Draw the grid and the two scored sets with ``draw(condition, seed)`` (images in [0, 1]);
    ``conditions(prompts)`` prepares a condition outside the timed region; score both sets."""
    sets, reference = prompt_sets(args), reference01()
    grid = draw(conditions(sets["grid"]), GRID_SEED)
    np.savez_compressed(out / f"{tag}_grid.npz", samples=grid.numpy())
    res, n_all, secs, rows_all = {}, 0, 0.0, 0
    for split in ("train", "heldout"):
        cond = conditions(sets[split])
        rows, handle = count_rows(net)
        t0 = time.perf_counter()
        x = draw(cond, SCORE_SEED)
        secs += time.perf_counter() - t0
        handle.remove()
        n_all, rows_all = n_all + len(x), rows_all + rows[0]
        np.savez_compressed(out / f"{tag}_{split}.npz", samples=x.numpy())
        res[split] = score(x.numpy().astype(np.float64), sets[split], reference, f"{tag} {split}")
    res.update(sample_seconds=secs, images_per_s=n_all / secs, nfe=rows_all / n_all)
    log(f"[{tag}] sampled {n_all} images in {secs:.1f} s ({n_all / secs:.2f} img/s, NFE {rows_all / n_all:g})")
    return res


# ----------------------------------------------------------------------------- (a) undiffuse


def undiffuse_overrides(args, seed: int = 0) -> dict:
    return {"conditioning.kind": "text", "train.time_budget": float(args.budget), "train.max_steps": None,
            "train.seed": seed, "train.tensorboard": False, **parse_sets(args.ours_set)}


def undiffuse_config(args, seed: int = 0):
    """The pixel route's config (``--route pixels``; ``--count`` shows its size)."""
    from undiffuse import data
    from undiffuse.config import resolve

    return resolve("emoji", data.load("emoji"), undiffuse_overrides(args, seed))


def run_undiffuse(args, out: Path, seed: int) -> dict:
    from undiffuse import data
    from undiffuse.inference import generate as gen
    from undiffuse.training.latent_route import train_latent_route
    from undiffuse.training.trainer import Trainer

    tag = child_tag("undiffuse", args, seed)
    run_dir = out / tag
    shutil.rmtree(run_dir, ignore_errors=True)  # the Trainer refuses a folder with checkpoints
    quiet = lambda m: None  # noqa: E731 (a one-line no-op logger)
    log(f"[{tag}] training {args.budget:g} s on the {args.route} route, overrides {parse_sets(args.ours_set)}")
    if args.route == "latent":  # the recipe of `undiffuse train --data emoji`: autoencoder, then latents
        result = train_latent_route(data.load("emoji"), str(run_dir), preset="emoji-latent",
                                    overrides=undiffuse_overrides(args, seed), ae_share=args.ae_share, resume=None,
                                    progress=False, log=quiet)
        cfg, secs = result["config"], result["train_seconds"]
        extra = {"autoencoder_seconds": result["autoencoder_seconds"], "encode_seconds": result["encode_seconds"],
                 "autoencoder_steps": result["codec"].meta["training"]["steps"],
                 "autoencoder_mse": result["codec"].meta["reconstruction_mse"]["held_out"]}
        log(f"[{tag}] autoencoder {extra['autoencoder_steps']} steps in {extra['autoencoder_seconds']:.1f} s "
            f"(held-out MSE {extra['autoencoder_mse']:.4f}), encoding {extra['encode_seconds']:.1f} s")
    else:
        cfg = undiffuse_config(args, seed)
        result = Trainer(cfg, data.load("emoji"), str(run_dir), progress=False, log=quiet).fit()
        secs, extra = result["elapsed"], {}
    steps = result["step"]
    log(f"[{tag}] {steps} diffusion steps in {result['elapsed']:.1f} s ({steps / result['elapsed']:.2f} steps/s)")
    run = gen.load_run(str(run_dir))  # EMA weights of the last checkpoint
    params = sum(p.numel() for p in run.denoiser.net.parameters())
    if args.route == "latent":
        extra["autoencoder_params"] = sum(p.numel() for p in result["codec"].net.parameters())
    den = gen.guided(run, guidance=args.guidance)

    def draw(cond, seed0):
        n = cond["context"].shape[0]
        return gen.to_unit(gen.generate(run, n, seed=seed0, condition=cond, denoiser=den, batch_size=SAMPLE_BATCH))

    ev = evaluate_recipe(args, out, tag, run.denoiser.net, draw, lambda p: gen.prompt_condition(run, p))
    s = run.config.sample
    return {"recipe": "undiffuse", "route": args.route, "params": params, "batch_size": cfg.optim.batch_size,
            "steps": steps, "train_seconds": secs, "steps_per_s": steps / result["elapsed"],
            "train_images_per_s": steps * cfg.optim.batch_size / result["elapsed"], **extra,
            "sampler": f"{s.sampler}, {s.steps} steps, {s.schedule} schedule", "overrides": parse_sets(args.ours_set),
            **ev}


# ----------------------------------------------------------------------------- (b) diffusers


def diffusers_unet(args):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{**DIFFUSERS_UNET, **parse_sets(args.diffusers_set)})


def dpm_draw(unet, ddpm_config, cond: dict, null: dict, seed: int, guidance: float, steps: int = 20) -> torch.Tensor:
    """DPM-Solver++ (Lu et al. 2022, 2nd order multistep) with classifier-free guidance (Ho &
    Salimans 2022): ``eps_u + g (eps_c - eps_u)``, both branches in one batch; in [0, 1]."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler.from_config(ddpm_config, algorithm_type="dpmsolver++", solver_order=2)
    n, out = cond["tokens"].shape[0], []
    with torch.no_grad():
        for i in range(0, n, SAMPLE_BATCH):
            b = min(SAMPLE_BATCH, n - i)
            x = torch.stack([torch.randn((3, 32, 32), generator=torch.Generator().manual_seed(seed + i + j))
                             for j in range(b)])  # image i's noise depends on its seed alone
            ctx = torch.cat([null["tokens"].expand(b, -1, -1), cond["tokens"][i:i + b]])  # (2b, 24, 384)
            mask = torch.cat([null["mask"].expand(b, -1), cond["mask"][i:i + b]])  # (2b, 24)
            sched.set_timesteps(steps)  # resets the multistep state for each batch
            x = x * sched.init_noise_sigma
            for t in sched.timesteps:
                inp = sched.scale_model_input(torch.cat([x, x]), t)
                eps_u, eps_c = unet(inp, t, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample.chunk(2)
                x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
            out.append(((x + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def run_diffusers(args, out: Path, seed: int) -> dict:
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from diffusers.utils import logging as dlog

    from undiffuse import data
    from undiffuse.steering import text

    dlog.set_verbosity_error()
    tag = child_tag("diffusers", args, seed)
    torch.manual_seed(seed)  # the network's initialisation
    ds = data.load("emoji")
    images = ds.get(torch.arange(len(ds)))  # (3592, 3, 32, 32) in [-1, 1]
    captions = [w for row in ds.captions for w in row] + [""]  # every wording, then the empty caption
    enc = text.encode_cached(captions, max_tokens=MAX_TOKENS)  # the table undiffuse's trainer encodes
    null = len(captions) - 1
    starts = torch.tensor([0] + [len(row) for row in ds.captions]).cumsum(0)
    first, count = starts[:-1], starts[1:] - starts[:-1]
    unet = diffusers_unet(args)
    params = sum(p.numel() for p in unet.parameters())
    ddpm = DDPMScheduler(num_train_timesteps=1000, prediction_type="epsilon", **BETAS[args.diffusers_betas])
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_sched = get_scheduler("constant", optimizer=opt, num_warmup_steps=500, num_training_steps=10**9)
    ema = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config)
    gen = torch.Generator().manual_seed(seed)
    budget, batch, step, elapsed, losses = float(args.budget), args.diffusers_batch, 0, 0.0, []
    perm, pos = torch.randperm(len(ds), generator=gen), 0
    log(f"[{tag}] training {budget:g} s, {params / 1e6:.2f}M parameters, batch {batch}, betas {args.diffusers_betas}, "
        f"overrides {parse_sets(args.diffusers_set)}")
    unet.train()
    while elapsed < budget:
        t0 = time.perf_counter()
        if pos >= len(ds):
            perm, pos = torch.randperm(len(ds), generator=gen), 0
        idx = perm[pos:pos + batch]
        pos += batch
        u = torch.rand(2, len(idx), generator=gen)  # [0]: caption dropout, [1]: which wording
        cap = first[idx] + (u[1] * count[idx]).long().clamp(max=count[idx] - 1)
        cap = torch.where(u[0] < DROPOUT, null, cap)
        clean = images[idx]
        noise = torch.randn(clean.shape, generator=gen)
        timesteps = torch.randint(0, ddpm.config.num_train_timesteps, (len(idx),), generator=gen).long()
        pred = unet(ddpm.add_noise(clean, noise, timesteps), timesteps, encoder_hidden_states=enc.tokens[cap],
                    encoder_attention_mask=enc.mask[cap]).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(unet.parameters())  # after each optimizer step, as the example's --use_ema
        step += 1
        elapsed += time.perf_counter() - t0
        losses.append(loss.item())
        if step % 200 == 0:
            log(f"[{tag}] step {step}, {elapsed:.0f} s, loss {np.mean(losses[-200:]):.4f}")
    log(f"[{tag}] {step} steps in {elapsed:.1f} s ({step / elapsed:.2f} steps/s)")
    ema.copy_to(unet.parameters())
    unet.eval().requires_grad_(False)
    empty = text.encode_cached([""], max_tokens=MAX_TOKENS)

    def conditions(prompts):
        e = text.encode_cached(list(prompts), max_tokens=MAX_TOKENS)
        return {"tokens": e.tokens, "mask": e.mask}

    ev = evaluate_recipe(args, out, tag, unet,
                         lambda cond, seed0: dpm_draw(unet, ddpm.config, cond, {"tokens": empty.tokens,
                                                                                "mask": empty.mask},
                                                      seed0, args.guidance),
                         conditions)
    return {"recipe": "diffusers", "params": params, "batch_size": batch, "steps": step, "train_seconds": elapsed,
            "steps_per_s": step / elapsed, "train_images_per_s": step * batch / elapsed,
            "final_loss": float(np.mean(losses[-200:])), "betas": args.diffusers_betas,
            "overrides": parse_sets(args.diffusers_set),
            "sampler": "DPMSolverMultistep (dpmsolver++, order 2), 20 steps", **ev}


def child(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = {"load_avg_start": load_avg()}
    res = {"undiffuse": run_undiffuse, "diffusers": run_diffusers}[args.recipe](args, out, args.seed)
    res.update(start, load_avg_end=load_avg(), threads=torch.get_num_threads(), peak_mib=peak_mib(), seed=args.seed)
    (out / f"{child_tag(args.recipe, args, args.seed)}.json").write_text(json.dumps(res, indent=1))
    return 0


def row_name(recipe: str, args) -> str:
    return args.diffusers_label if recipe == "diffusers" else args.label


def child_tag(recipe: str, args, seed: int) -> str:
    return f"{row_name(recipe, args)}_seed{seed}"


# ----------------------------------------------------------------------------- parent and report


def ceiling(args) -> dict:
    """The scorer on real images: ``image_text.report`` and ``evaluate`` of the real images of
    the scored prompts (training picks and held-out) against the training reference."""
    from undiffuse import data
    from undiffuse.metrics import image_text
    from undiffuse.steering import text

    sets, reference = prompt_sets(args), reference01()
    held = data.load("emoji:heldout")
    held01 = held.to_unit(held.get(torch.arange(len(held)))).numpy().astype(np.float64)
    return {"report": image_text.report(text.sentence_embeddings),
            "train": score(reference[sets["train_index"]], sets["train"], reference, "real train"),
            "heldout": score(held01[sets["heldout_index"]], sets["heldout"], reference, "real held-out")}


def median_row(runs: list[dict]) -> dict:
    """Medians over seeds of every number the table shows."""
    def med(key: str, split: str | None = None) -> float:
        return float(np.median([(r[split] if split else r)[key] for r in runs]))

    row = {k: med(k) for k in ("steps", "train_seconds", "steps_per_s", "train_images_per_s", "images_per_s", "nfe",
                               "peak_mib")}
    for split in ("train", "heldout"):
        row[split] = {k: med(k, split) for k in METRICS}
        row[split]["correct"] = [round(r[split]["prompt_accuracy"] * r[split]["n"]) for r in runs]
        row[split]["n"] = runs[0][split]["n"]
    row.update(params=runs[0]["params"], seeds=len(runs), recipe=runs[0]["recipe"], sampler=runs[0]["sampler"],
               batch_size=runs[0]["batch_size"])
    return row


def above_chance(correct: int, n: int, chance: float = 0.1) -> float:
    """One-sided binomial p-value of ``correct`` or more right out of ``n`` at ``chance``."""
    from scipy.stats import binomtest

    return float(binomtest(correct, n, chance, alternative="greater").pvalue)


def targets(rows: dict) -> list[str]:
    """The issue's three criteria for every undiffuse row against the diffusers row."""
    out, d = [], rows.get(BASELINE)
    for name, r in rows.items():
        if r["recipe"] != "undiffuse":
            continue
        tr, ho = r["train"], r["heldout"]
        line = f"- **{name}**: "
        if d is not None:
            ratio = tr["fd"] / d["train"]["fd"]
            line += (f"FD on training prompts {tr['fd']:.2f} vs diffusers' {d['train']['fd']:.2f} = "
                     f"{ratio:.3f}x (target <= 1/3: {'met' if ratio <= 1 / 3 else 'NOT met'}; held-out prompts "
                     f"{ho['fd'] / d['heldout']['fd']:.3f}x); ")
        p = above_chance(int(np.median(ho["correct"])), ho["n"])
        line += (f"prompt_accuracy on training prompts {tr['prompt_accuracy']:.3f} (target >= 0.90: "
                 f"{'met' if tr['prompt_accuracy'] >= 0.9 else 'NOT met'}); on held-out prompts "
                 f"{ho['prompt_accuracy']:.3f} vs chance 0.10 (one-sided binomial p = {p:.2g} over {ho['n']} "
                 f"prompts: {'clearly above chance' if p < 1e-3 else 'NOT clearly above chance'}).")
        out.append(line)
    return out


def _route(run: dict) -> str:
    """How an undiffuse run was trained, in words."""
    if run.get("route", "pixels") == "pixels":
        return "pixel route"
    return (f"latent route (autoencoder {run['autoencoder_params'] / 1e6:.2f}M parameters, "
            f"{run['autoencoder_steps']} steps in {run['autoencoder_seconds']:.0f} s, held-out MSE "
            f"{run['autoencoder_mse']:.4f}; encoding {run['encode_seconds']:.0f} s)")


def markdown(res: dict) -> str:
    m, p, cal = res["machine"], res["protocol"], res["ceiling"]
    rows = {name: median_row(list(v["runs"].values())) for name, v in res["rows"].items()}
    first = {name: v["runs"][min(v["runs"])] for name, v in res["rows"].items()}  # seed 0's record
    n_tr, n_ho = p["train_prompts_used"], p["heldout_prompts_used"]
    quick = ", quick mode: budgets and prompt counts far too small for conclusions" if p["quick"] else ""
    out = [START_MARK, "## Text to image on emoji: the undiffuse emoji recipe vs the diffusers text-to-image loop", "",
           f"Last produced on {m['date']} by `{res['command']}` ({res['total_seconds'] / 60:.1f} min{quick}); "
           f"rows from earlier invocations with the same protocol are kept (`{p['out']}/results.json`).", "",
           f"Machine: {m['cpu']}, nproc {m['nproc']} ({m['system']}); Python {m['python']}, torch {m['torch']}, "
           f"diffusers {m['diffusers']}. Each (row, seed) ran alone in a fresh subprocess with {p['threads']} "
           "torch thread(s); 1-minute load average at start/end: "
           + "; ".join(f"{k} seed {s} {r['load_avg_start']}/{r['load_avg_end']}" for k, v in res["rows"].items()
                       for s, r in v["runs"].items()) + ".", "",
           f"**Protocol** (details in `benchmarks/emoji_t2i.py`). {label_of(p['budget'])} of training per run "
           "(training steps only), 3,592 training emoji at 32x32, a random caption wording per image and 10 % "
           "empty captions, the same all-MiniLM-L6-v2 token embeddings (24 x 384, masked) for both. One "
           f"guided sample (scale {p['guidance']:g}, EMA weights) per prompt: the first wording of {n_tr} "
           f"training emoji and of {n_ho} held-out emoji. Scores from `metrics.evaluate` in the emoji scorer's "
           "space against all 3,592 training images: `fd` (lower is better; biased upwards for small sets), "
           "`clip` = clip_score, `acc` = prompt_accuracy (own prompt ranked above 9 random emoji names, "
           "chance 0.10), `prec`/`rec` (k = 5), `copy` = copy_rate. NFE counts network rows per image "
           "(a guided step is 2). Numbers are medians over seeds.", "",
           "- **undiffuse** rows: what `undiffuse train --data emoji --conditioning text --time-budget B` runs. "
           "Latent route: `training.latent_route` (an autoencoder for a share of B, then `resolve(\"emoji-latent\", "
           "...)` on its 4x8x8 latents for the rest; the budget counts both stages' training steps; encoding the "
           "data and the autoencoder's final evaluation are outside it, as checkpoints are), or pixel route: "
           "`resolve(\"emoji\", ...)`; the Trainer, the run's sampler with classifier-free guidance, decoding "
           "included in the sampling time; "
           + "; ".join(f"`{k}` {_route(first[k])}, batch {first[k]['batch_size']}, overrides "
                       f"{json.dumps(first[k].get('overrides', {}))}"
                       for k in rows if rows[k]["recipe"] == "undiffuse")
           + ".",
           "- **diffusers** rows: the `train_text_to_image.py` loop (epsilon MSE, uniform timesteps over 1000, "
           "AdamW 1e-4 / (0.9, 0.999) / wd 1e-2 / eps 1e-8, constant rate without warm-up, clip 1.0, `EMAModel` "
           "defaults) on a UNet2DConditionModel (64, 128, 128), one layer per block, cross-attention at 16x16 and "
           "8x8, sampled with DPMSolverMultistep (dpmsolver++, order 2), 20 steps; "
           + "; ".join(f"`{k}` batch {first[k]['batch_size']}, {first[k]['betas']} betas, overrides "
                       f"{json.dumps(first[k].get('overrides', {}))}" for k in rows if rows[k]["recipe"] == "diffusers")
           + ".", "",
           "| row | params | seeds | steps | steps/s | train img/s | sample img/s | NFE | peak MiB |",
           "| --- |" + " ---: |" * 8]
    for name, r in rows.items():
        out.append(f"| {name} | {r['params'] / 1e6:.2f}M | {r['seeds']} | {r['steps']:.0f} | {r['steps_per_s']:.2f} | "
                   f"{r['train_images_per_s']:.0f} | {r['images_per_s']:.1f} | {r['nfe']:g} | {r['peak_mib']:.0f} |")
    head = " | ".join(["fd", "clip", "acc", "prec", "rec", "copy"])
    out += ["", f"| row | train prompts ({n_tr}): {head} | held-out prompts ({n_ho}): {head} |",
            "| --- |" + " ---: |" * 12]

    def fmt(s: dict) -> str:
        return " | ".join(f"{s[k]:.3f}" if k != "fd" else f"{s[k]:.2f}" for k in METRICS)

    for name, r in rows.items():
        out.append(f"| {name} | {fmt(r['train'])} | {fmt(r['heldout'])} |")
    out.append(f"| real images (ceiling) | {fmt(cal['train'])} | {fmt(cal['heldout'])} |")
    rep = cal["report"]
    out += ["", f"Ceiling: the real images of the same prompts (their train copy_rate is 1 by construction). The "
            f"scorer on all {rep['heldout_images']} real held-out emoji (`image_text.report`): retrieval top-1 "
            f"{rep['retrieval_top1']:.3f}, top-5 {rep['retrieval_top5']:.3f} among the held-out names, "
            f"prompt_accuracy {rep['prompt_accuracy']:.3f}, clip_score {rep['clip_score']:.3f}.", "",
            "**Issue 18's criteria** (medians; at equal time our FD is at most a third of diffusers'; "
            "prompt_accuracy on training prompts >= 0.90; on held-out prompts clearly above chance, 0.10):", ""]
    out += targets(rows)
    if BASELINE in rows:
        d = rows[BASELINE]
        out += [""] + [f"- Ratios {name} / {BASELINE}: optimizer steps {r['steps'] / d['steps']:.2f}x, training images "
                       f"seen {r['steps'] * r['batch_size'] / (d['steps'] * d['batch_size']):.2f}x, sampling speed "
                       f"{r['images_per_s'] / d['images_per_s']:.2f}x, NFE {r['nfe'] / d['nfe']:.2f}x, parameters "
                       f"{r['params'] / d['params']:.2f}x."
                       for name, r in rows.items() if r["recipe"] == "undiffuse"]
    out += ["", f"Grid: `{p['out']}/grid.png`, the same 16 prompts (12 training, 4 held out) drawn by each row "
            "(seed 0 of each).", "", END_MARK]
    return "\n".join(out) + "\n"


def grid_picture(res: dict, out: Path, sets: dict) -> None:
    """One captioned block of the 16 grid prompts per row, titled, stacked vertically."""
    from PIL import Image, ImageDraw, ImageFont

    from undiffuse.io.images import captioned_grid, save_png, to_uint8

    blocks = []
    for name, v in res["rows"].items():
        seed = min(v["runs"])
        path = out / f"{name}_seed{seed}_grid.npz"
        if not path.exists():
            continue
        r = v["runs"][seed]
        block = captioned_grid(to_uint8(np.load(path)["samples"]), sets["grid_labels"], nrow=8)
        title = Image.new("RGB", (block.shape[1], 18), "white")
        ImageDraw.Draw(title).text((4, 3), f"{name}: {r['steps']} steps in {r['train_seconds']:.0f} s, "
                                           f"{r['params'] / 1e6:.2f}M parameters", fill=(0, 0, 0),
                                   font=ImageFont.load_default())
        blocks += [np.asarray(title), block]
    if blocks:
        save_png(str(out / "grid.png"), np.concatenate(blocks, axis=0))


def protocol(args) -> dict:
    return {"budget": args.budget, "guidance": args.guidance, "train_prompts": args.train_prompts,
            "heldout_prompts": args.heldout_prompts, "quick": args.quick}


def parent(args) -> int:
    t_all = time.perf_counter()
    (out := Path(args.out)).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    path = out / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    if args.render and not res.get("rows"):
        sys.exit(f"--render: no results in {path}")
    if res and res["protocol"]["comparable"] != protocol(args):
        sys.exit(f"{path} holds rows measured with {res['protocol']['comparable']}, not {protocol(args)}; "
                 "use another --out (or delete it)")
    if not args.render:
        if "ceiling" not in res:  # the same for every row of this protocol
            log("ceiling: the scorer on real images (trains and caches the scorer on first use) ...")
            res["ceiling"] = ceiling(args)
        res.setdefault("rows", {})
        for recipe in args.recipes:  # sequential, each (recipe, seed) in a fresh process
            name = row_name(recipe, args)
            res["rows"][name] = {"recipe": recipe, "runs": {}}
            for seed in range(args.seeds):
                tag = child_tag(recipe, args, seed)
                (out / f"{tag}.json").unlink(missing_ok=True)
                cmd = [sys.executable, os.path.abspath(__file__), "--recipe", recipe, "--seed", str(seed),
                       "--label", args.label, "--diffusers-label", args.diffusers_label,
                       "--diffusers-batch", str(args.diffusers_batch), "--budget", str(args.budget),
                       "--threads", str(args.threads), "--route", args.route, "--ae-share", str(args.ae_share),
                       "--out", str(out), "--guidance", str(args.guidance), "--train-prompts", str(args.train_prompts),
                       "--heldout-prompts", str(args.heldout_prompts), "--diffusers-betas", args.diffusers_betas]
                cmd += [f"--ours-set={s}" for s in args.ours_set] + [f"--diffusers-set={s}" for s in args.diffusers_set]
                log(f"== {tag}: {shlex.join(cmd)}")
                if subprocess.run(cmd).returncode != 0:
                    sys.exit(f"{tag} failed")
                res["rows"][name]["runs"][str(seed)] = json.loads((out / f"{tag}.json").read_text())
                path.write_text(json.dumps(res, indent=1) + "\n")  # keep finished runs if a later one fails
    sets = prompt_sets(args)
    res.update(command=command(), machine=machine(), total_seconds=time.perf_counter() - t_all,
               protocol={"comparable": protocol(args), "threads": args.threads, "out": str(out),
                         "train_prompts_used": len(sets["train"]),
                         "heldout_prompts_used": len(sets["heldout"]), **protocol(args)})
    path.write_text(json.dumps(res, indent=1) + "\n")
    grid_picture(res, out, sets)
    text = markdown(res)
    print(text)
    if args.write:
        _write_section(Path(args.write), text, START_MARK, END_MARK)
        log(f"wrote {args.write}")
    log(f"total {res['total_seconds'] / 60:.1f} min; results in {path}, grid in {out / 'grid.png'}")
    return 0


def count(args) -> int:
    """Print both networks' parameter counts (no training)."""
    from undiffuse.config import build_denoiser

    torch.set_num_threads(args.threads)
    ours = sum(p.numel() for p in build_denoiser(undiffuse_config(args)).net.parameters())
    theirs = sum(p.numel() for p in diffusers_unet(args).parameters())
    print(f"undiffuse {args.label} {parse_sets(args.ours_set)}: {ours:,} parameters")
    print(f"diffusers UNet2DConditionModel {parse_sets(args.diffusers_set) or ''}: {theirs:,} parameters "
          f"({theirs / ours:.3f}x)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=None, help="training seconds of every run (default 900, quick 30)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each child (default 2)")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per row (medians reported; default 1)")
    ap.add_argument("--recipes", default="undiffuse,diffusers",
                    help="comma-separated recipes to (re)measure: undiffuse, diffusers (default both)")
    ap.add_argument("--route", choices=("latent", "pixels"), default="latent",
                    help="undiffuse's route: latent (an autoencoder for --ae-share of the budget, then the "
                         "emoji-latent preset on its latents: what `undiffuse train --data emoji` does) or pixels "
                         "(the emoji preset on 4x4 pixel patches); default latent")
    ap.add_argument("--ae-share", type=float, default=0.3, help="latent route: the autoencoder's share of the budget")
    ap.add_argument("--label", default="undiffuse", help="row name of the undiffuse variant (default undiffuse)")
    ap.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the emoji preset for the undiffuse row, e.g. model.patch_size=4 (repeatable)")
    ap.add_argument("--diffusers-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the UNet2DConditionModel arguments, e.g. layers_per_block=2 (repeatable)")
    ap.add_argument("--diffusers-label", default=BASELINE,
                    help=f"row name of the diffusers variant (default {BASELINE}: the row the criteria compare to)")
    ap.add_argument("--diffusers-batch", type=int, default=BATCH, help=f"diffusers training batch (default {BATCH})")
    ap.add_argument("--diffusers-betas", choices=sorted(BETAS), default="linear",
                    help="DDPM beta schedule of the diffusers recipe (default linear)")
    ap.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    ap.add_argument("--train-prompts", type=int, default=None, help="training prompts scored (default 512, quick 32)")
    ap.add_argument("--heldout-prompts", type=int, default=None,
                    help="held-out prompts scored (default 0 = all 352, quick 32)")
    ap.add_argument("--out", default=None, help="runs, samples, grid.png and results.json "
                                                "(default runs/bench_emoji_t2i, quick runs/bench_emoji_t2i_quick)")
    ap.add_argument("--write", metavar="FILE", help="replace the emoji-t2i section of this Markdown file")
    ap.add_argument("--render", action="store_true", help="only rewrite the section and grid from results.json")
    ap.add_argument("--count", action="store_true", help="print both networks' parameter counts and exit")
    ap.add_argument("--quick", action="store_true", help="plumbing check: 30 s budgets, 32 + 32 prompts")
    ap.add_argument("--recipe", choices=RECIPES, help=argparse.SUPPRESS)  # internal: run one (recipe, seed)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.budget = args.budget or (30.0 if args.quick else 900.0)
    args.train_prompts = args.train_prompts or (32 if args.quick else 512)
    args.heldout_prompts = args.heldout_prompts if args.heldout_prompts is not None else (32 if args.quick else 0)
    args.out = args.out or ("runs/bench_emoji_t2i_quick" if args.quick else "runs/bench_emoji_t2i")
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    bad = [r for r in args.recipes if r not in RECIPES]
    if bad or not args.recipes:
        ap.error(f"--recipes: unknown {bad}; allowed: {', '.join(RECIPES)}")
    if not args.label or not args.diffusers_label or args.label == args.diffusers_label:
        ap.error("--label and --diffusers-label name two different rows")
    if args.count:
        return count(args)
    return child(args) if args.recipe else parent(args)


if __name__ == "__main__":
    sys.exit(main())
