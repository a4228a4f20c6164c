#!/usr/bin/env python
"""Training benchmark on scikit-learn's 8x8 digits: undiffuse's ``digits`` preset against the
recipe of diffusers' ``examples/unconditional_image_generation/train_unconditional.py``, each
trained for a wall-clock budget on this CPU, then sampled and scored in the same way.

    python benchmarks/train_digits.py [--budget 300] [--diffusers-budget 720] [--threads 2]
                                      [--out runs/bench_digits] [--write BENCHMARKS.md] [--quick]

Protocol. Each recipe runs in its own fresh subprocess (this script with ``--recipe``), one
after the other, never in parallel, with ``torch.set_num_threads(--threads)``. Training time
counts the training steps only (batch, forward, backward, optimizer, schedule, EMA); evaluation
and checkpoint writing are outside it. Every evaluation samples N = 1797 images (200 with
``--quick``) from the EMA weights with fixed seeds and scores them with
``undiffuse.metrics.fd_digits`` (Frechet distance in the digits classifier's feature space,
samples clamped to [0, 1]) and ``nearest_copies`` against all 1797 digits / 16 (near-copies
out of N). NFE per sample is counted with a forward hook on the network. Peak memory is the
child's ``ru_maxrss`` at its end (Python, torch and the evaluation net included).
``features.calibration_scores(seed=0)`` gives the feature space's reference points.

(a) undiffuse: ``resolve("digits", ...)`` with ``train.time_budget = --budget`` (default
300 s), one training of exactly that budget (its cosine learning rate spans the budget, so an
intermediate checkpoint would not be what a shorter run gives), evaluated at its end with the
run's recommended sampler (``run.config.sample``: Heun, 10 steps, i.e. 19 evaluations).

(b) diffusers: the example's recipe on the same data (digits / 16 * 2 - 1 as 1x8x8 in [-1, 1]).
Checked against the example script (two early official versions, commits c2076599 and 00769f61,
and a copy of the 0.36.0.dev0 version, which adds ``--random_flip``, ``--ddpm_beta_schedule``,
``--prediction_type`` and the ``EMAModel(parameters, ...)`` API; defaults): ``train_batch_size`` 16;
AdamW lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8; ``get_scheduler("cosine")``
with ``lr_warmup_steps`` 500; gradient clipping at norm 1.0; uniform integer timesteps in
[0, 1000), ``DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")``, epsilon
target, ``F.mse_loss``; ``EMAModel(decay=0.9999, use_ema_warmup=True, inv_gamma=1.0,
power=3/4)`` stepped after every optimizer step; shuffled epochs, last batch partial.
Choices for digits (the example is for 64x64 RGB): the network is the smaller
``UNet2DModel(sample_size=8, in/out_channels=1, layers_per_block=2, block_out_channels=
(64, 128, 128), Down/AttnDown/AttnDown, AttnUp/AttnUp/Up)`` (6.8M parameters); one channel, no
resize or crop; **no horizontal flip** (a flipped digit is another glyph; ``--random_flip`` is off
by default in the 0.36.0.dev0 script, early versions always flipped); plain torch in one process
instead of accelerate (fp32, no accumulation: the same updates). The example's cosine horizon
is num_epochs * steps_per_epoch; under a time budget the horizon is the number of steps the
budget allows, estimated from the step rate measured during the warm-up (first 400 steps or
15 % of the budget, whichever ends first; during warm-up the learning rate does not depend on
the horizon, so the scheduler is rebuilt with the estimate and fast-forwarded). Training stops
at the budget or at the horizon (where the learning rate reaches 0), whichever comes first.
The EMA model is evaluated at 1/4, 1/2 and all of ``--diffusers-budget`` (3, 6, 12 min by
default) as snapshots of the one run, sampling with ``DPMSolverMultistepScheduler.from_config``
(the DDPM config, ``algorithm_type="dpmsolver++"``, ``solver_order=2``) at 20 steps.
"""
from __future__ import annotations

import argparse
import copy
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
from _sections import duration_label as label, load_avg, log, peak_mib
from _sections import command, machine
from _sections import write_section as _write_section

START_MARK, END_MARK = "<!-- train-digits:start -->", "<!-- train-digits:end -->"
RECIPES = ("undiffuse", "diffusers")
SAMPLE_BATCH = 256


def real01() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)


def timed_sampling(net: torch.nn.Module, n: int, draw) -> tuple[torch.Tensor, dict]:
    """Run ``draw()`` (sampling n images in batches of SAMPLE_BATCH), timing it and counting the
    calls of ``net``: NFE per sample = calls / batches (each call sees a whole batch)."""
    calls = [0]
    handle = net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    t0 = time.perf_counter()
    x = draw()
    secs = time.perf_counter() - t0
    handle.remove()
    return x, {"nfe": calls[0] / -(-n // SAMPLE_BATCH), "sample_seconds": secs, "images_per_s": n / secs}


def score(samples01: torch.Tensor, out: Path, name: str) -> dict:
    """FD and near-copies of samples in [0, 1]; the samples are kept as .npz and a PNG grid."""
    from undiffuse.inference import generate as gen
    from undiffuse.metrics import fd_digits, nearest_copies

    x, real = samples01.clamp(0, 1).double(), real01()
    n = len(x)
    np.savez_compressed(out / f"{name}.npz", samples=x.float().numpy())
    gen.save_png(str(out / f"{name}.png"), gen.grid(gen.to_uint8(x[:100].float())), scale=4)
    return {"fd": float(fd_digits(x)), "copies": int(nearest_copies(x.reshape(n, -1), real.reshape(len(real), -1))["copies"]),
            "n": n}


# ----------------------------------------------------------------------------- (a) undiffuse


def run_undiffuse(args, out: Path) -> dict:
    from undiffuse import data
    from undiffuse.config import resolve
    from undiffuse.inference import generate as gen
    from undiffuse.training.trainer import Trainer

    ds = data.load("digits")
    run_dir = out / "undiffuse_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the Trainer refuses a folder with checkpoints
    cfg = resolve("digits", ds, {"train.time_budget": float(args.budget), "train.max_steps": None,
                                 "train.seed": 0, "train.tensorboard": False})
    trainer = Trainer(cfg, ds, str(run_dir), progress=False, log=lambda m: None)
    params = sum(p.numel() for p in trainer.net.parameters())
    log(f"[undiffuse] training {args.budget:g} s, {params / 1e6:.2f}M parameters")
    result = trainer.fit()
    steps, secs, batch = result["step"], result["elapsed"], cfg.optim.batch_size
    log(f"[undiffuse] {steps} steps in {secs:.1f} s; sampling {args.samples}")
    run = gen.load_run(str(run_dir))  # EMA weights of the last checkpoint
    x, timing = timed_sampling(run.denoiser.net, args.samples,
                               lambda: gen.generate(run, args.samples, seed=0, batch_size=SAMPLE_BATCH))
    ev = {"label": label(args.budget), "nominal_s": float(args.budget), "train_seconds": secs, "step": steps,
          **score(gen.to_unit(x), out, "undiffuse_final"), **timing}
    log(f"[undiffuse] FD {ev['fd']:.3f}, copies {ev['copies']}/{ev['n']}, NFE {ev['nfe']:g}")
    return {"params": params, "batch_size": batch, "steps": steps, "train_seconds": secs,
            "steps_per_s": steps / secs, "samples_per_s": steps * batch / secs,
            "sampler": "{0.sampler}, {0.steps} steps, {0.schedule} schedule".format(run.config.sample), "evals": [ev]}


# ----------------------------------------------------------------------------- (b) diffusers


def dpm_sample(unet, ddpm_config, n: int, steps: int, seed: int):
    """``n`` samples of ``unet`` with DPM-Solver++ (order 2) in ``steps`` steps, from seeded noise of
    the network's own size."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler.from_config(ddpm_config, algorithm_type="dpmsolver++", solver_order=2)
    side, channels = unet.config.sample_size, unet.config.in_channels
    noise = torch.randn((n, channels, side, side), generator=torch.Generator().manual_seed(seed))
    out = []
    with torch.no_grad():
        for i in range(0, n, SAMPLE_BATCH):
            sched.set_timesteps(steps)  # resets the multistep state for each batch
            x = noise[i:i + SAMPLE_BATCH] * sched.init_noise_sigma
            for t in sched.timesteps:
                eps = unet(sched.scale_model_input(x, t), t).sample
                x = sched.step(eps, t, x).prev_sample
            out.append(x)
    return torch.cat(out)


def example_loop(unet, data: torch.Tensor, budget: float, eval_at: list, evaluate) -> dict:
    """The example's training loop (see the module docstring) for ``unet`` on ``data`` ((N, C, H, W)
    in [-1, 1]) for ``budget`` seconds of training steps, drawing from torch's global generator.
    When the training time passes each of ``eval_at`` (and at the end), ``evaluate(ema_unet,
    ddpm_config, nominal_s, step, elapsed, lr)`` returns that evaluation's record."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    warmup, batch = 500, 16
    lr_sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=warmup, num_training_steps=10**9)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                   model_cls=UNet2DModel, model_config=unet.config)
    eval_unet = copy.deepcopy(unet).eval().requires_grad_(False)
    horizon, gen = None, torch.Generator().manual_seed(0)
    eval_at, calib_steps, calib_time = list(eval_at), min(400, warmup - 1), 0.15 * budget
    perm, pos, step, elapsed, evals = torch.randperm(len(data), generator=gen), 0, 0, 0.0, []
    unet.train()
    while eval_at:
        t0 = time.perf_counter()
        if pos >= len(data):
            perm, pos = torch.randperm(len(data), generator=gen), 0
        clean = data[perm[pos:pos + batch]]
        pos += batch
        noise = torch.randn(clean.shape)
        timesteps = torch.randint(0, ddpm.config.num_train_timesteps, (len(clean),)).long()
        loss = F.mse_loss(unet(ddpm.add_noise(clean, noise, timesteps), timesteps).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(unet.parameters())  # after each optimizer step, as the example
        step += 1
        elapsed += time.perf_counter() - t0
        if horizon is None and (step >= calib_steps or elapsed >= calib_time):
            horizon = max(warmup + 1, round(step / elapsed * budget))
            lr_sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=warmup, num_training_steps=horizon)
            for _ in range(step):
                lr_sched.step()
            log(f"[diffusers] {step / elapsed:.2f} steps/s over {step} steps: cosine horizon {horizon} steps")
        final = horizon is not None and step >= horizon
        if elapsed >= eval_at[0] or final:
            nominal = budget if final else eval_at[0]
            eval_at = [] if final else eval_at[1:]
            ema.copy_to(eval_unet.parameters())
            evals.append(evaluate(eval_unet, ddpm.config, nominal, step, elapsed, lr_sched.get_last_lr()[0]))
            unet.train()
    return {"params": sum(p.numel() for p in unet.parameters()), "batch_size": batch, "steps": step,
            "train_seconds": elapsed, "steps_per_s": step / elapsed, "samples_per_s": step * batch / elapsed,
            "cosine_horizon": horizon, "sampler": "DPMSolverMultistep (dpmsolver++, order 2), 20 steps", "evals": evals}


def run_diffusers(args, out: Path) -> dict:
    from diffusers import UNet2DModel
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    torch.manual_seed(0)
    data = torch.from_numpy(real01()) * 2 - 1  # (1797, 1, 8, 8) in [-1, 1]
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(64, 128, 128),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    budget = float(args.diffusers_budget)
    log(f"[diffusers] training {budget:g} s, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")

    def evaluate(eval_unet, ddpm_config, nominal, step, elapsed, lr):
        x, timing = timed_sampling(eval_unet, args.samples,
                                   lambda: dpm_sample(eval_unet, ddpm_config, args.samples, 20, seed=0))
        ev = {"label": label(nominal), "nominal_s": nominal, "train_seconds": elapsed, "step": step,
              **score((x + 1) / 2, out, f"diffusers_{nominal:g}s"), **timing, "lr": lr}
        log(f"[diffusers] {ev['label']}: step {step}, {elapsed:.1f} s, FD {ev['fd']:.3f}, "
            f"copies {ev['copies']}/{ev['n']}, sampling {ev['sample_seconds']:.1f} s")
        return ev

    return example_loop(unet, data, budget, [budget / 4, budget / 2, budget], evaluate)


def child(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = {"load_avg_start": load_avg(), "peak_mib_at_start": peak_mib()}
    res = {"undiffuse": run_undiffuse, "diffusers": run_diffusers}[args.recipe](args, out)
    res.update(start, load_avg_end=load_avg(), threads=torch.get_num_threads(), peak_mib=peak_mib())
    (out / f"{args.recipe}.json").write_text(json.dumps(res, indent=1))
    return 0


# ----------------------------------------------------------------------------- parent and report


def ratios(rec: dict) -> dict:
    u, d = rec["undiffuse"], rec["diffusers"]
    ue, de = u["evals"][-1], d["evals"][-1]
    return {"undiffuse_at": ue["label"], "diffusers_at": de["label"],
            "fd_diffusers_over_undiffuse": de["fd"] / ue["fd"], "fd_undiffuse_over_diffusers": ue["fd"] / de["fd"],
            "train_seconds_undiffuse_over_diffusers": ue["train_seconds"] / de["train_seconds"],
            "steps_undiffuse_over_diffusers": ue["step"] / de["step"],
            "samples_seen_undiffuse_over_diffusers": ue["step"] * u["batch_size"] / (de["step"] * d["batch_size"]),
            "nfe_undiffuse_over_diffusers": ue["nfe"] / de["nfe"]}


def markdown(res: dict) -> str:
    m, p, rec, cal, r = res["machine"], res["protocol"], res["recipes"], res["calibration"], res["ratios"]
    n = p["samples"]  # images per evaluation
    out = [START_MARK, "## Training on 8x8 digits: undiffuse `digits` preset vs the diffusers example recipe", "",
           f"Produced on {m['date']} by `{res['command']}` (total {res['total_seconds'] / 60:.1f} min"
           f"{', quick mode: budgets and sample count far too small for conclusions' if p['quick'] else ''}).", "",
           f"Machine: {m['cpu']}, nproc {m['nproc']} ({m['system']}); Python {m['python']}, torch {m['torch']}, "
           f"diffusers {m['diffusers']}. Each recipe ran alone in a fresh subprocess with {p['threads']} torch "
           f"thread(s); 1-minute load average at each child's start/end: "
           + "; ".join(f"{k} {v['load_avg_start']}/{v['load_avg_end']}" for k, v in rec.items()) + ".", "",
           "**Protocol.** Data: all 1797 scikit-learn digits, pixels / 16 * 2 - 1 as 1x8x8 images. Training time "
           "counts training steps only (evaluation excluded). Each evaluation samples "
           f"{n} images from the EMA weights with fixed seeds; `fd` = `undiffuse.metrics.fd_digits` (Frechet "
           "distance of the digits classifier's features, samples clamped to [0, 1]; lower is better; biased "
           f"upwards for small sets), `copies` = near-copies of training images among the {n} "
           "(`nearest_copies`, ratio < 1/3). NFE = network evaluations per sample, counted. Peak = the child "
           "process's max RSS (includes Python, torch and the evaluation network).", "",
           f"- **undiffuse**: preset `digits`, batch {rec['undiffuse']['batch_size']}, one run with "
           f"`train.time_budget` = {p['budget']:g} s, evaluated at its end with its recommended sampler "
           f"({rec['undiffuse']['sampler']}).",
           "- **diffusers**: the `train_unconditional.py` recipe (AdamW 1e-4, betas (0.95, 0.999), wd 1e-6, cosine "
           "with 500 warm-up steps, batch 16, grad clip 1.0, DDPM linear betas 1000 steps, epsilon MSE, EMAModel "
           "with warm-up, inv_gamma 1, power 3/4, max decay 0.9999) on a UNet2DModel with channels (64, 128, 128) "
           f"and attention at the two lower resolutions, no flips; one run of {p['diffusers_budget']:g} s, cosine "
           f"horizon {rec['diffusers']['cosine_horizon']} steps (what the budget allows at the rate measured during "
           "warm-up); EMA snapshots at 1/4, 1/2 and the end, sampled with DPMSolverMultistep (dpmsolver++, order 2), "
           "20 steps. See the script's docstring for the recipe choices.", ""]
    times = sorted({e["nominal_s"] for v in rec.values() for e in v["evals"]})
    out += ["| recipe | params | steps | steps/s | samples/s | " + " | ".join(f"FD @ {label(t)}" for t in times)
            + f" | copies (of {n}) | NFE | sampling img/s | peak MiB |",
            "|---" * (9 + len(times)) + "|"]
    for name, v in rec.items():
        fds = {e["nominal_s"]: e["fd"] for e in v["evals"]}
        last = v["evals"][-1]
        out.append(f"| {name} | {v['params'] / 1e6:.2f}M | {v['steps']} | {v['steps_per_s']:.2f} | "
                   f"{v['samples_per_s']:.0f} | " + " | ".join(f"{fds[t]:.2f}" if t in fds else "-" for t in times)
                   + f" | {last['copies']} | {last['nfe']:g} | {last['images_per_s']:.0f} | {v['peak_mib']:.0f} |")
    out += ["", "Every evaluation (training time and steps actually used at that point):", "",
            "| recipe | at | training s | steps | FD | copies | NFE | sampling s | img/s |", "|---" * 9 + "|"]
    for name, v in rec.items():
        for e in v["evals"]:
            out.append(f"| {name} | {e['label']} | {e['train_seconds']:.1f} | {e['step']} | {e['fd']:.3f} | "
                       f"{e['copies']} | {e['nfe']:g} | {e['sample_seconds']:.1f} | {e['images_per_s']:.0f} |")
    out += ["", f"Reference points of the feature space (`calibration_scores(seed=0)`, 1797-image sets): "
            f"two halves of the real digits {cal['halves']:.2f}; real + N(0, 0.15^2) noise {cal['noisy_real']:.2f}; "
            f"uniform noise {cal['noise']:.1f}.", "",
            f"**Ratios** (undiffuse at {r['undiffuse_at']} vs diffusers at {r['diffusers_at']}): FD "
            f"{r['fd_undiffuse_over_diffusers']:.3f}x diffusers' (diffusers' FD is {r['fd_diffusers_over_undiffuse']:.2f}x "
            f"undiffuse's); training time {r['train_seconds_undiffuse_over_diffusers']:.2f}x; optimizer steps "
            f"{r['steps_undiffuse_over_diffusers']:.2f}x; training samples seen "
            f"{r['samples_seen_undiffuse_over_diffusers']:.2f}x; NFE per sample {r['nfe_undiffuse_over_diffusers']:.2f}x.",
            "", END_MARK]
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str) -> None:
    _write_section(path, section, START_MARK, END_MARK)


def parent(args) -> int:
    t_all = time.perf_counter()
    (out := Path(args.out)).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    from undiffuse.metrics.features import calibration_scores

    log("feature-space calibration (trains and caches the feature net on first use) ...")
    cal = calibration_scores(seed=0)
    recipes = {}
    for name in RECIPES:  # sequential, each in a fresh process
        (out / f"{name}.json").unlink(missing_ok=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--recipe", name, "--budget", str(args.budget),
               "--diffusers-budget", str(args.diffusers_budget), "--threads", str(args.threads),
               "--out", str(out), "--samples", str(args.samples)]
        log(f"== {name}: {' '.join(shlex.quote(c) for c in cmd)}")
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"{name} failed")
        recipes[name] = json.loads((out / f"{name}.json").read_text())
    res = {"command": command(), "machine": machine(), "calibration": cal, "recipes": recipes,
           "protocol": {"budget": args.budget, "diffusers_budget": args.diffusers_budget, "threads": args.threads,
                        "samples": args.samples, "seed": 0, "quick": args.quick}, "ratios": ratios(recipes)}
    res["total_seconds"] = time.perf_counter() - t_all
    text = json.dumps(res, indent=1)
    print(text)
    (out / "results.json").write_text(text + "\n")
    if args.write:
        write_section(Path(args.write), markdown(res))
        log(f"wrote {args.write}")
    log(f"total {res['total_seconds'] / 60:.1f} min; results in {out / 'results.json'}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=None, help="undiffuse training seconds (default 300)")
    ap.add_argument("--diffusers-budget", type=float, default=None, help="diffusers training seconds (default 720)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each child (default 2)")
    ap.add_argument("--out", default="runs/bench_digits", help="folder for runs, samples and results.json")
    ap.add_argument("--write", metavar="FILE", help="replace the train-digits section of this Markdown file")
    ap.add_argument("--quick", action="store_true", help="plumbing check: 15 s / 30 s budgets, 200 samples")
    ap.add_argument("--samples", type=int, default=None, help="images per evaluation (default 1797, quick 200)")
    ap.add_argument("--recipe", choices=RECIPES, help=argparse.SUPPRESS)  # internal: run one recipe
    args = ap.parse_args(argv)
    args.budget = args.budget or (15.0 if args.quick else 300.0)
    args.diffusers_budget = args.diffusers_budget or (30.0 if args.quick else 720.0)
    args.samples = args.samples or (200 if args.quick else 1797)
    return child(args) if args.recipe else parent(args)


if __name__ == "__main__":
    sys.exit(main())
