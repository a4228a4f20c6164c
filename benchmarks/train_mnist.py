#!/usr/bin/env python
"""Training benchmark on the built-in ``mnist5k`` (5,000 28x28 MNIST digits): the default
``undiffuse train`` command against the recipe of diffusers'
``examples/unconditional_image_generation/train_unconditional.py``, each trained for a
wall-clock budget on this CPU, then sampled and scored in the same way.

    python benchmarks/train_mnist.py [--budgets 300 900] [--diffusers-budget 900] [--snapshots S ...]
                                     [--threads 2] [--samples 2500] [--out runs/bench_mnist]
                                     [--write BENCHMARKS.md] [--quick]

Protocol. Each recipe runs in its own fresh subprocess (this script with ``--recipe``), one
after the other, never in parallel, with ``torch.set_num_threads(--threads)``; the undiffuse
commands that child starts get the same thread count through ``OMP_NUM_THREADS`` (torch's
default), as a user's shell would give it. Every evaluation draws N = 2500 samples (200 with
``--quick``) in [0, 1] with fixed seeds and scores them with
``undiffuse.metrics.mnist_features.fd_mnist`` (Frechet distance in the mnist classifier's
feature space) against a fixed half of mnist5k: ``perm = numpy.random.default_rng(0)
.permutation(5000)``, reference ``x[perm[2500:]]``. The real-vs-real floor is the first N of
the other half, ``x[perm[:2500]][:N]``, against the same reference (equal set sizes: the
distance is biased upwards for small sets). ``copies`` counts near-copies among the N samples
against all 5000 images (``nearest_copies``, ratio < 1/3). NFE per sample is counted with a
forward hook on the network. Peak memory is a process's ``ru_maxrss``: for undiffuse the
larger of its two commands, for diffusers the child's (Python, torch and the evaluation net
included). ``calibration_scores(seed=0)`` gives the feature space's reference points.

(a) undiffuse, the default command a user types: for each budget B of ``--budgets`` (default
300 and 900 s), exactly

    python -m undiffuse train --data mnist5k --time-budget {B}s --out OUT/undiffuse_{B} --no-progress
    python -m undiffuse sample --checkpoint OUT/undiffuse_{B} --num N --format npz \\
        --out OUT/undiffuse_{B}.npz --no-progress

and nothing else: the defaults (the preset the data picks, fitted to the budget by
``training.budget``; the run's recommended sampler, EMA weights, seeds 0..N-1) are what is
measured. Each B is its own run (the cosine learning rate spans the budget, so an intermediate
checkpoint is not what a shorter run gives). The ``budget: ...`` lines the train command
writes on stderr (its choices: network, steps expected, warm-up, EMA) are kept in its log file
and in results.json. Training time and steps are the command's JSON result (``elapsed`` counts
the training steps only; the start-up rate measurement, checkpoints and the final sample grid
are outside it, and the command's wall time is recorded too). Sampling time is the wall time
of the whole sample command (Python start-up, loading and writing the npz included), so its
samples/s is a lower bound. The network and its parameter count come from the run's
``config.json`` and checkpoint; NFE is counted by drawing one batch of 8 samples in the same
way (``generate.generate`` with the run's defaults) in the child.

(b) diffusers: the example's recipe as ``benchmarks/train_digits.py`` implements it (see its
docstring for the checks against the example script), on mnist5k * 2 - 1 as 1x28x28 images in
[-1, 1]: batch 16; AdamW lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8;
``get_scheduler("cosine")`` with 500 warm-up steps; gradient clipping at norm 1.0; uniform
integer timesteps in [0, 1000), ``DDPMScheduler(num_train_timesteps=1000,
beta_schedule="linear")``, epsilon target, ``F.mse_loss``; ``EMAModel(decay=0.9999,
use_ema_warmup=True, inv_gamma=1.0, power=3/4)`` stepped after every optimizer step; shuffled
epochs, last batch partial; no flips. The network is ``UNet2DModel(sample_size=28,
in/out_channels=1, layers_per_block=2, block_out_channels=(64, 128, 128),
Down/AttnDown/AttnDown, AttnUp/AttnUp/Up)`` (28 -> 14 -> 7). One run of ``--diffusers-budget``
seconds (default 900); its cosine horizon is the number of steps the budget allows at the
rate measured during warm-up (first 400 steps or 15 % of the budget, whichever ends first; the
scheduler is then rebuilt with that horizon and fast-forwarded). Training stops at the budget
or the horizon, whichever comes first. The EMA weights are evaluated as snapshots of the one
run at ``--snapshots`` (default: every undiffuse budget up to the diffusers budget, and its
end: 300 and 900 s), so each undiffuse budget meets diffusers at equal training time; sampling
with ``DPMSolverMultistepScheduler.from_config`` (the DDPM config,
``algorithm_type="dpmsolver++"``, ``solver_order=2``) at 20 steps, batches of 256.

The goal checked: GOAL (below), at the 900 s budget: undiffuse FD / floor <= 3 and diffusers
FD / undiffuse FD >= 3 at equal time. Without a 900 s run (``--quick``) the same ratios are
given at the largest budget and the goal is reported as not met (not measured).

``--quick``: a plumbing check (undiffuse 20 s; diffusers 20 s with a snapshot at 10 s; 200
samples): the numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sections import command, load_avg, log, machine, peak_mib
from _sections import duration_label as label
from _sections import write_section as _write_section
from train_digits import dpm_sample, example_loop, timed_sampling

START_MARK, END_MARK = "<!-- train-mnist:start -->", "<!-- train-mnist:end -->"
RECIPES = ("undiffuse", "diffusers")
GOAL = ("mnist5k with the default command reaches, in 15 minutes, an FD within 3x of the real-vs-real floor, "
        "and at least 3x better than the diffusers recipe at equal time")
GOAL_SECONDS, GOAL_FLOOR_RATIO, GOAL_DIFFUSERS_RATIO = 900.0, 3.0, 3.0
NFE_PROBE = 8  # samples drawn in one batch to count the undiffuse sampler's evaluations


def real_sets(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the floor set: the first ``n`` of one fixed half of mnist5k; the reference: the other
    half; all 5000 images), float32 (N, 1, 28, 28) in [0, 1]."""
    from undiffuse.metrics.mnist_features import mnist_data

    x, _ = mnist_data()
    perm = np.random.default_rng(0).permutation(len(x))
    half = len(x) // 2
    return x[perm[:half]][:n], x[perm[half:]], x


def score(samples01, out: Path, name: str) -> dict:
    """FD against the reference half and near-copies against all 5000, of samples in [0, 1]
    (clamped); the first 100 are kept as a PNG grid."""
    from undiffuse.inference import generate as gen
    from undiffuse.metrics import nearest_copies
    from undiffuse.metrics.mnist_features import fd_mnist

    x = np.clip(np.asarray(samples01, dtype=np.float64), 0, 1)
    _, reference, everything = real_sets(0)
    n = len(x)
    gen.save_png(str(out / f"{name}.png"), gen.grid(gen.to_uint8(x[:100])), scale=2)
    copies = nearest_copies(x.reshape(n, -1), everything.reshape(len(everything), -1))["copies"]
    return {"fd": float(fd_mnist(x, reference)), "copies": int(copies), "n": n}


# ----------------------------------------------------------------------------- (a) undiffuse


def cli(cmd: list[str], log_path: Path, threads: int) -> tuple[str, float]:
    """Run an undiffuse command with ``threads`` torch threads, stderr to ``log_path``; its
    stdout and wall time. A failure ends the benchmark, pointing at the log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log(f"[undiffuse] $ {shlex.join(cmd)}")
    t0 = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:4])} failed with exit code {proc.returncode}; see {log_path}")
    return proc.stdout, secs


def describe(model: dict) -> str:
    """A short name of an undiffuse network config."""
    if model.get("kind") != "unet":
        return str(model.get("kind"))
    patch = f", {model['patch_size']}x{model['patch_size']} patches" if model.get("patch_size", 1) > 1 else ""
    return (f"U-Net {model['channels']} ch x{'/x'.join(str(m) for m in model['channel_mult'])}, "
            f"{model['num_res_blocks']} blocks/level, attention at level(s) {model.get('attention_levels')}{patch}")


def run_undiffuse(args, out: Path) -> dict:
    from undiffuse.inference import generate as gen

    budget = float(args.budget)
    name = f"undiffuse_{budget:g}"
    run_dir, npz = out / name, out / f"{name}.npz"
    shutil.rmtree(run_dir, ignore_errors=True)  # the trainer refuses a folder with checkpoints
    npz.unlink(missing_ok=True)
    py = [sys.executable, "-m", "undiffuse"]
    train_cmd = py + ["train", "--data", "mnist5k", "--time-budget", f"{budget:g}s", "--out", str(run_dir),
                      "--no-progress"]
    stdout, train_wall = cli(train_cmd, out / f"{name}_train.log", args.threads)
    train_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = (out / f"{name}_train.log").read_text().splitlines()
    reasons = [ln[len("budget: "):] for ln in lines if ln.startswith("budget: ")]
    log_path = run_dir / "log.jsonl"  # a line every train.log_every steps: none in a very short run
    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()] if log_path.exists() else []
    result = json.loads(stdout.strip().splitlines()[-1])  # the command's JSON result: step, elapsed, ...
    steps, secs = int(result["step"]), float(result["elapsed"])
    cfg = json.loads((run_dir / "config.json").read_text())
    log(f"[undiffuse] {steps} steps in {secs:.1f} s of training ({train_wall:.1f} s wall); sampling {args.samples}")

    sample_cmd = py + ["sample", "--checkpoint", str(run_dir), "--num", str(args.samples), "--format", "npz",
                       "--out", str(npz), "--no-progress"]
    _, sample_wall = cli(sample_cmd, out / f"{name}_sample.log", args.threads)
    with np.load(npz) as f:
        samples, sampled_with = f["samples"], json.loads(str(f["parameters"]))

    run = gen.load_run(str(run_dir))  # the EMA weights the sample command used: count its evaluations
    params = sum(p.numel() for p in run.denoiser.net.parameters())
    _, probe = timed_sampling(run.denoiser.net, NFE_PROBE,
                              lambda: gen.generate(run, NFE_PROBE, seed=0, batch_size=NFE_PROBE))
    ev = {"label": label(budget), "nominal_s": budget, "train_seconds": secs, "step": steps,
          **score(samples, out, name), "nfe": probe["nfe"], "sample_seconds": sample_wall,
          "images_per_s": args.samples / sample_wall}
    log(f"[undiffuse] {label(budget)}: FD {ev['fd']:.3f}, copies {ev['copies']}/{ev['n']}, NFE {ev['nfe']:g}, "
        f"sampling {sample_wall:.1f} s")
    batch = cfg["optim"]["batch_size"]
    typed = [shlex.join(["python", *c[1:]]) for c in (train_cmd, sample_cmd)]  # as a user types them
    return {"commands": typed, "python": sys.executable, "budget_lines": reasons,
            "model": cfg["model"], "network": describe(cfg["model"]), "params": params, "batch_size": batch,
            "lr": cfg["optim"]["lr"], "warmup_steps": cfg["optim"]["warmup_steps"], "ema": cfg["ema"],
            "steps": steps, "train_seconds": secs, "train_command_seconds": train_wall,
            "steps_per_s": steps / secs, "samples_per_s": steps * batch / secs,
            "last_log": rows[-1] if rows else None, "sampler": "{sampler}, {steps} steps, {schedule} schedule"
            .format(**sampled_with), "sampled_with": sampled_with, "train_peak_mib": train_peak,
            "commands_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "evals": [ev]}


# ----------------------------------------------------------------------------- (b) diffusers


def run_diffusers(args, out: Path) -> dict:
    from diffusers import UNet2DModel
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    torch.manual_seed(0)
    _, _, everything = real_sets(0)
    data = torch.from_numpy(everything) * 2 - 1  # (5000, 1, 28, 28) in [-1, 1]
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(64, 128, 128),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    budget = float(args.diffusers_budget)
    log(f"[diffusers] training {budget:g} s, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters, "
        "snapshots at " + ", ".join(label(s) for s in args.snapshots))

    def evaluate(eval_unet, ddpm_config, nominal, step, elapsed, lr):
        x, timing = timed_sampling(eval_unet, args.samples,
                                   lambda: dpm_sample(eval_unet, ddpm_config, args.samples, 20, seed=0))
        x01 = ((x + 1) / 2).clamp(0, 1).numpy()
        np.savez_compressed(out / f"diffusers_{nominal:g}.npz", samples=x01.astype(np.float32))
        ev = {"label": label(nominal), "nominal_s": nominal, "train_seconds": elapsed, "step": step,
              **score(x01, out, f"diffusers_{nominal:g}"), **timing, "lr": lr}
        log(f"[diffusers] {ev['label']}: step {step}, {elapsed:.1f} s, FD {ev['fd']:.3f}, "
            f"copies {ev['copies']}/{ev['n']}, sampling {ev['sample_seconds']:.1f} s")
        return ev

    res = example_loop(unet, data, budget, args.snapshots, evaluate)
    return {"network": "UNet2DModel (64, 128, 128), 2 layers/block, attention at 14x14 and 7x7", **res}


def child(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = {"load_avg_start": load_avg(), "peak_mib_at_start": peak_mib()}
    res = {"undiffuse": run_undiffuse, "diffusers": run_diffusers}[args.recipe](args, out)
    res.update(start, load_avg_end=load_avg(), threads=torch.get_num_threads(), peak_mib=peak_mib())
    if args.recipe == "undiffuse":  # the commands measured, not this child's scoring
        res["peak_mib"] = res["commands_peak_mib"]
    (out / f"{result_name(args.recipe, args.budget)}.json").write_text(json.dumps(res, indent=1))
    return 0


def result_name(recipe: str, budget: float | None) -> str:
    return f"undiffuse_{budget:g}_result" if recipe == "undiffuse" else "diffusers_result"


# ----------------------------------------------------------------------------- parent and report


def comparisons(res: dict) -> dict:
    """Per undiffuse budget: its FD over the floor, and diffusers' FD over its FD at equal time
    (the snapshot of the same nominal time, if any); then the goal's verdict."""
    floor, diff = res["floor"]["fd"], {e["nominal_s"]: e for e in res["recipes"]["diffusers"]["evals"]}
    rows = []
    for key in sorted(k for k in res["recipes"] if k.startswith("undiffuse")):
        u = res["recipes"][key]
        e, d = u["evals"][0], diff.get(u["evals"][0]["nominal_s"])
        rows.append({"at": e["label"], "nominal_s": e["nominal_s"], "fd_undiffuse": e["fd"], "fd_floor": floor,
                     "fd_undiffuse_over_floor": e["fd"] / floor,
                     "fd_diffusers": d["fd"] if d else None,
                     "fd_diffusers_over_undiffuse": d["fd"] / e["fd"] if d else None,
                     "steps_undiffuse_over_diffusers": e["step"] / d["step"] if d else None,
                     "nfe_undiffuse_over_diffusers": e["nfe"] / d["nfe"] if d else None})
    rows.sort(key=lambda r: r["nominal_s"])
    at = next((r for r in rows if r["nominal_s"] == GOAL_SECONDS), rows[-1])
    floor_ok = at["fd_undiffuse_over_floor"] <= GOAL_FLOOR_RATIO
    diff_ok = at["fd_diffusers_over_undiffuse"] is not None and at["fd_diffusers_over_undiffuse"] >= GOAL_DIFFUSERS_RATIO
    measured = at["nominal_s"] == GOAL_SECONDS
    d_ratio = at["fd_diffusers_over_undiffuse"]
    detail = (f"at {at['at']}: undiffuse FD {at['fd_undiffuse']:.3f} = {at['fd_undiffuse_over_floor']:.2f}x the floor "
              f"{floor:.3f} (needs <= {GOAL_FLOOR_RATIO:g}x: {'yes' if floor_ok else 'no'}); diffusers FD "
              + (f"{at['fd_diffusers']:.3f} = {d_ratio:.2f}x undiffuse's" if d_ratio is not None
                 else "not measured at that time")
              + f" (needs >= {GOAL_DIFFUSERS_RATIO:g}x: {'yes' if diff_ok else 'no'})")
    if not measured:
        detail += f"; no {label(GOAL_SECONDS)} run, so the goal is not measured"
    verdict = "met" if measured and floor_ok and diff_ok else "NOT met"
    return {"rows": rows, "goal": {"text": GOAL, "verdict": verdict, "detail": detail, "judged_at_s": at["nominal_s"],
                                   "floor_ok": floor_ok, "diffusers_ok": diff_ok, "at_goal_time": measured}}


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def goal_line(g: dict) -> str:
    return f"Goal: {g['text']}: **{g['verdict']}** ({g['detail']})."


def markdown(res: dict) -> str:
    m, p, rec, cal, cmp = res["machine"], res["protocol"], res["recipes"], res["calibration"], res["comparisons"]
    n, floor = p["samples"], res["floor"]["fd"]
    unds = [rec[k] for k in sorted(rec, key=lambda k: rec[k]["evals"][0]["nominal_s"]) if k.startswith("undiffuse")]
    d = rec["diffusers"]
    out = [START_MARK, "## Training on 28x28 MNIST (mnist5k): the default `undiffuse train` vs the diffusers "
           "example recipe", "",
           f"Produced on {m['date']} by `{res['command']}` (total {res['total_seconds'] / 60:.1f} min"
           f"{', quick mode: budgets and sample count far too small for conclusions' if p['quick'] else ''}).", "",
           f"Machine: {m['cpu']}, nproc {m['nproc']} ({m['system']}); Python {m['python']}, torch {m['torch']}, "
           f"diffusers {m['diffusers']}. Each recipe ran alone in a fresh subprocess with {p['threads']} torch "
           f"thread(s); 1-minute load average at each child's start/end: "
           + "; ".join(f"{k} {v['load_avg_start']}/{v['load_avg_end']}" for k, v in rec.items()) + ".", "",
           f"**Protocol.** Data: the 5,000 `mnist5k` digits (1x28x28). Each evaluation draws {n} samples with "
           "fixed seeds; `FD` = `undiffuse.metrics.mnist_features.fd_mnist` against a fixed half of mnist5k "
           "(`default_rng(0).permutation(5000)[2500:]`, 2,500 images; lower is better); the floor is the first "
           f"{n} of the other half against the same reference: **{floor:.3f}**. `copies` = near-copies of "
           f"training images among the {n} (`nearest_copies` against all 5,000, ratio < 1/3). Training time counts "
           "training steps only. NFE = network evaluations per sample, counted. Peak = max RSS of the recipe's "
           "processes (undiffuse: the larger of its two commands; diffusers: the child, evaluation net included).",
           "",
           "- **undiffuse**: the default command, nothing else: "
           f"`{unds[0]['commands'][0]}` then `{unds[0]['commands'][1]}` (shown for {unds[0]['evals'][0]['label']}; "
           "one run per budget), sampled with the run's own recommended sampler "
           f"({unds[0]['sampler']}). Sampling time is the whole sample command's wall time (start-up and writing "
           "included). The train command's own choices (its `budget:` lines on stderr):"]
    for u in unds:
        out.append(f"  - {u['evals'][0]['label']} (train command wall time {u['train_command_seconds']:.1f} s): "
                   + "; ".join(u["budget_lines"]))
    out += [f"- **diffusers**: the `train_unconditional.py` recipe as in the 8x8 digits benchmark (AdamW 1e-4, "
            "betas (0.95, 0.999), wd 1e-6, cosine with 500 warm-up steps, batch 16, grad clip 1.0, DDPM linear "
            "betas 1000 steps, epsilon MSE, EMAModel with warm-up, inv_gamma 1, power 3/4, max decay 0.9999, no "
            f"flips) on a {d['network']} (28 -> 14 -> 7); one run of {label(p['diffusers_budget'])}, cosine horizon "
            f"{d['cosine_horizon']} steps (what the budget allows at the rate measured during warm-up); EMA "
            f"snapshots at {', '.join(e['label'] for e in d['evals'])}, sampled with {d['sampler']}. See the "
            "script's docstring for the details.", "",
            f"| recipe | at | network | params | batch | training s | steps | steps/s | FD | FD / floor | copies "
            f"(of {n}) | NFE | sampling s | img/s | peak MiB |", "|---" * 15 + "|"]
    for name, v in [("undiffuse", u) for u in unds] + [("diffusers", d)]:
        for e in v["evals"]:
            out.append(f"| {name} | {e['label']} | {v['network']} | {v['params'] / 1e6:.2f}M | {v['batch_size']} | "
                       f"{e['train_seconds']:.1f} | {e['step']} | {e['step'] / e['train_seconds']:.2f} | "
                       f"{e['fd']:.3f} | {e['fd'] / floor:.2f} | {e['copies']} | {e['nfe']:g} | "
                       f"{e['sample_seconds']:.1f} | {e['images_per_s']:.3g} | {v['peak_mib']:.0f} |")
    out += ["", "At equal training time:", "",
            "| time | undiffuse FD | diffusers FD | undiffuse / floor | diffusers / undiffuse | steps undiffuse / "
            "diffusers | NFE undiffuse / diffusers |", "|---" * 7 + "|"]
    for r in cmp["rows"]:
        out.append(f"| {r['at']} | {r['fd_undiffuse']:.3f} | {_num(r['fd_diffusers'], '.3f')} | "
                   f"{r['fd_undiffuse_over_floor']:.2f}x | {_num(r['fd_diffusers_over_undiffuse'], '.2f')}x | "
                   f"{_num(r['steps_undiffuse_over_diffusers'], '.2f')}x | {_num(r['nfe_undiffuse_over_diffusers'], '.2f')}x |")
    out += ["", f"Reference points of the feature space (`mnist_features.calibration_scores(seed=0)`, 2,500-image "
            f"sets): two halves of mnist5k {cal['halves']:.3f}; real + N(0, 0.15^2) noise {cal['noisy_real']:.2f}; "
            f"uniform noise {cal['noise']:.1f}.", "", goal_line(cmp["goal"]), "", END_MARK]
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str) -> None:
    _write_section(path, section, START_MARK, END_MARK)


def parent(args) -> int:
    t_all = time.perf_counter()
    (out := Path(args.out)).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    from undiffuse.metrics.mnist_features import calibration_scores, fd_mnist

    log("feature-space floor and calibration (trains and caches the mnist feature net on first use) ...")
    floor_set, reference, _ = real_sets(args.samples)
    floor = {"fd": fd_mnist(floor_set, reference), "n": len(floor_set), "reference_n": len(reference)}
    cal = calibration_scores(seed=0)
    log(f"floor FD {floor['fd']:.3f} ({floor['n']} vs {floor['reference_n']} real images)")
    jobs = [("undiffuse", b) for b in args.budgets] + [("diffusers", None)]
    recipes = {}
    for name, budget in jobs:  # sequential, each in a fresh process
        result = out / f"{result_name(name, budget)}.json"
        result.unlink(missing_ok=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--recipe", name, "--threads", str(args.threads),
               "--out", str(out), "--samples", str(args.samples), "--diffusers-budget", str(args.diffusers_budget),
               "--snapshots", *map(str, args.snapshots)]
        if budget is not None:
            cmd += ["--budget", str(budget)]
        log(f"== {name}: {shlex.join(cmd)}")
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"{name} failed")
        recipes[name if budget is None else f"undiffuse_{budget:g}"] = json.loads(result.read_text())
    res = {"command": command(), "machine": machine(), "floor": floor, "calibration": cal, "recipes": recipes,
           "protocol": {"budgets": args.budgets, "diffusers_budget": args.diffusers_budget,
                        "snapshots": args.snapshots, "threads": args.threads, "samples": args.samples, "seed": 0,
                        "quick": args.quick}}
    res["comparisons"] = comparisons(res)
    res["total_seconds"] = time.perf_counter() - t_all
    text = json.dumps(res, indent=1)
    print(text)
    (out / "results.json").write_text(text + "\n")
    if args.write:
        write_section(Path(args.write), markdown(res))
        log(f"wrote {args.write}")
    log(goal_line(res["comparisons"]["goal"]).replace("**", ""))
    log(f"total {res['total_seconds'] / 60:.1f} min; results in {out / 'results.json'}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=None,
                    help="undiffuse training budgets in seconds, one run each (default 300 900)")
    ap.add_argument("--diffusers-budget", type=float, default=None, help="diffusers training seconds (default 900)")
    ap.add_argument("--snapshots", type=float, nargs="+", default=None,
                    help="diffusers evaluation times in seconds (default: each budget up to --diffusers-budget, "
                         "and its end; quick: also half-way)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each child (default 2)")
    ap.add_argument("--out", default="runs/bench_mnist", help="folder for runs, samples and results.json")
    ap.add_argument("--write", metavar="FILE", help="replace the train-mnist section of this Markdown file")
    ap.add_argument("--quick", action="store_true",
                    help="plumbing check: 20 s budgets (diffusers snapshot at 10 s), 200 samples")
    ap.add_argument("--samples", type=int, default=None, help="samples per evaluation (default 2500, quick 200)")
    ap.add_argument("--recipe", choices=RECIPES, help=argparse.SUPPRESS)  # internal: run one recipe
    ap.add_argument("--budget", type=float, help=argparse.SUPPRESS)  # internal: the undiffuse child's budget
    args = ap.parse_args(argv)
    args.budgets = sorted(set(args.budgets or ([20.0] if args.quick else [300.0, 900.0])))
    args.diffusers_budget = args.diffusers_budget or (20.0 if args.quick else 900.0)
    if args.snapshots is None:
        args.snapshots = [b for b in args.budgets if b < args.diffusers_budget] + [args.diffusers_budget / 2] * args.quick
    args.snapshots = sorted({s for s in args.snapshots if 0 < s < args.diffusers_budget} | {args.diffusers_budget})
    args.samples = args.samples or (200 if args.quick else 2500)
    if not 2 <= args.samples <= 2500:
        ap.error(f"--samples must be in [2, 2500] (the floor set is one half of mnist5k), got {args.samples}")
    if args.recipe == "undiffuse" and args.budget is None:
        ap.error("--recipe undiffuse needs --budget")
    return child(args) if args.recipe else parent(args)


if __name__ == "__main__":
    sys.exit(main())
