#!/usr/bin/env python
"""Which recipe choices buy what: ablations of the ``digits`` preset at equal training time.

    python benchmarks/digits_recipe.py [--base-steps 800] [--jobs 2] [--seeds 3]
                                       [--out runs/bench_recipe] [--write BENCHMARKS.md] [--quick]

Each variant changes one thing in the preset. Variants are compared at equal *training
time*: a variant that leaves the cost of a step unchanged (objective, EMA, learning rate,
dropout) trains for ``base_steps``; one that changes it (width, batch size) trains for
``base_steps * its_rate / preset_rate`` steps, with both step rates measured first (one
thread, one process at a time, alternating with the preset three times, median of each). Step-bounded runs make the comparison immune
to the machine's load, so ``--jobs`` runs may share the machine (each with one thread).
Every run is ``undiffuse demo --max-steps N --set ...`` in a fresh process; its EMA weights
are sampled with the run's sampler (Heun, 10 steps, 19 evaluations) for ``--seeds`` sampling
seeds of 1,797 images each, scored with ``metrics.fd_digits`` (mean and spread over the
seeds) and ``nearest_copies`` (first seed). One training seed per variant: differences
smaller than the spread between training seeds (not measured here) are not findings.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _sections import write_section as _write_section

START, END = "<!-- digits-recipe:start -->", "<!-- digits-recipe:end -->"

# Variants whose step costs differ from the preset's (their steps are scaled by step rate).
COST_CHANGING = ("width64", "batch32")
VARIANTS: dict[str, tuple[str, dict]] = {
    "preset": ("the `digits` preset as shipped", {}),
    "width64": ("U-Net width 64 instead of 32 (4x parameters, fewer steps)", {"model.channels": 64}),
    "ddpm_eps": ("DDPM objective: VP linear betas, eps target, uniform timesteps (instead of EDM)",
                 {"diffusion.process": {"name": "vp"}, "diffusion.parameterization": "eps",
                  "diffusion.noise_sampling": "uniform_t"}),
    # In runs this short the EMA half-life is set by the ramp (rampup x samples seen, 5% in the
    # preset; the 50k-sample cap only binds after 1M samples), so the ramp is what is varied.
    "ema_ramp_2pct": ("EMA half-life 2% of the samples seen (instead of 5%)", {"ema.rampup": 0.02}),
    "ema_ramp_20pct": ("EMA half-life 20% of the samples seen", {"ema.rampup": 0.2}),
    "no_ema": ("no EMA (the raw weights)", {"ema.rampup": 0.0, "ema.halflife_samples": 1e-3}),
    "lr_low": ("learning rate 5e-4 (instead of 2e-3)", {"optim.lr": 5e-4}),
    "batch32": ("batch 32 (instead of 128), more steps", {"optim.batch_size": 32}),
    "dropout": ("dropout 0.1", {"model.dropout": 0.1}),
}


def _sets(over: dict) -> list[str]:
    return [a for k, v in over.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def step_rate(over: dict) -> float:
    """Training steps per second of a variant (one thread)."""
    code = f"""
import json, time, torch, tempfile
torch.set_num_threads(1)
from undiffuse import data
from undiffuse.config import resolve
from undiffuse.train import Trainer
ds = data.load("digits")
cfg = resolve("digits", ds, {{**json.loads({json.dumps(json.dumps(over))}), "train.max_steps": 10**9,
                             "train.time_budget": None, "train.tensorboard": False}})
t = Trainer(cfg, ds, tempfile.mkdtemp(), progress=False, log=lambda m: None)
for _ in range(5): t.train_step()
t0 = time.perf_counter()
for _ in range(30): t.train_step()
print(30 / (time.perf_counter() - t0))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_variant(name: str, over: dict, steps: int, out: Path, seeds: int, num: int) -> dict:
    run = out / name
    cmd = [sys.executable, "-m", "undiffuse", "demo", "--out", str(run), "--max-steps", str(steps),
           "--num", str(num), "--no-progress", *_sets(over)]
    t0 = time.time()
    subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=True)
    scores = json.loads((run / "scores.json").read_text())
    fds = [scores["fd"]]
    code = f"""
import sys, torch
torch.set_num_threads(1)
from undiffuse import generate as gen
from undiffuse.metrics import fd_digits
run = gen.load_run({str(run)!r})
for seed in range(1, {seeds}):
    print(fd_digits(gen.to_unit(gen.generate(run, {num}, seed=seed * 100_000)).numpy()))
"""
    more = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    fds += [float(v) for v in more.stdout.split()]
    return {"name": name, "steps": steps, "fd": fds, "fd_mean": sum(fds) / len(fds),
            "fd_spread": max(fds) - min(fds), "copies": scores["copies"], "n": num,
            "train_seconds": scores["train_seconds"], "wall_seconds": round(time.time() - t0, 1)}


def markdown(res: dict) -> str:
    base = res["results"]["preset"]["fd_mean"]
    preset_rate = res["results"]["preset"].get("rate", res["rates"]["preset"])
    lines = [START, "## Digits recipe: what each choice buys (equal training time)", "",
             f"Produced on {res['date']} by `{res['command']}` in {res['minutes']:.0f} min. Machine: "
             f"{res['machine']}. Runs use one thread each, {res['jobs']} at a time; step-bounded, so load "
             "does not change their result. Preset step rate (1 thread): "
             f"{preset_rate:.2f} steps/s; base {res['base_steps']} steps = "
             f"{res['base_steps'] / preset_rate:.0f} s of one-thread training. Step rates are measured in the "
             "invocation that ran the row (rows may come from several invocations, see results.json).", "",
             f"FD: `metrics.fd_digits` of {res['num']} samples (Heun 10 steps, 19 evaluations), mean over "
             f"{res['seeds']} sampling seeds, with the spread (max - min) over those seeds. Copies: near-copies "
             f"of training images among the first seed's {res['num']} samples. One training seed per row.", "",
             "| variant | what changes | steps/s (1 thread) | steps | FD (mean) | spread | vs preset | copies |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, (what, _) in VARIANTS.items():
        r = res["results"].get(name)
        if r is None:
            continue
        rate = r.get("rate", res["rates"].get(name, res["rates"]["preset"]))
        lines.append(f"| {name} | {what} | {rate:.2f} | {r['steps']} | {r['fd_mean']:.3f} | "
                     f"{r['fd_spread']:.3f} | {r['fd_mean'] / base:.2f}x | {r['copies']} |")
    lines += ["", END]
    return "\n".join(lines)


def write_section(path: str, text: str) -> None:
    _write_section(path, text, START, END)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-steps", type=int, default=800)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--num", type=int, default=1797)
    p.add_argument("--only", nargs="*", help="variants to run (default: all)")
    p.add_argument("--out", default="runs/bench_recipe")
    p.add_argument("--write")
    p.add_argument("--quick", action="store_true", help="plumbing check: 20 steps, 200 samples, 2 seeds")
    p.add_argument("--render", action="store_true", help="only rewrite the --write section from OUT/results.json")
    args = p.parse_args()
    if args.render:
        write_section(args.write, markdown(json.loads((Path(args.out) / "results.json").read_text())))
        return
    if args.quick:
        args.base_steps, args.num, args.seeds = 20, 200, 2
    names = args.only or list(VARIANTS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    samples: dict[str, list[float]] = {"preset": []}
    for _ in range(3):  # alternate so that drifts in machine speed hit both alike
        for name in ["preset", *[n for n in names if n in COST_CHANGING]]:
            samples.setdefault(name, []).append(step_rate(VARIANTS[name][1]))
    rates = {n: sorted(v)[len(v) // 2] for n, v in samples.items()}
    for n in names:
        rates.setdefault(n, rates["preset"])
    print(f"step rates (median of 3): {rates}", file=sys.stderr, flush=True)
    results = {}
    previous = out / "results.json"
    if previous.exists():  # runs of earlier invocations (e.g. with --only) are kept, unless rerun
        results = {k: v for k, v in json.loads(previous.read_text())["results"].items() if k in VARIANTS}
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        futs = {pool.submit(run_variant, n, VARIANTS[n][1], max(1, round(args.base_steps * rates[n] / rates["preset"])),
                            out, args.seeds, args.num): n for n in names}
        for f in cf.as_completed(futs):
            r = f.result()
            r["rate"] = rates[r["name"]]
            results[r["name"]] = r
            print(json.dumps(r), file=sys.stderr, flush=True)
    import platform

    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    res = {"date": _dt.date.today().isoformat(), "command": "python benchmarks/digits_recipe.py " + " ".join(sys.argv[1:]),
           "minutes": (time.time() - t0) / 60, "machine": f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
           f"Python {platform.python_version()}", "jobs": args.jobs, "base_steps": args.base_steps, "num": args.num,
           "seeds": args.seeds, "rates": rates, "results": results}
    (out / "results.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    if args.write:
        write_section(args.write, markdown(res))


if __name__ == "__main__":
    main()
