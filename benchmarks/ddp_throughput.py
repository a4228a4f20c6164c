#!/usr/bin/env python
"""Training throughput on CPU: one process against two under torchrun (DDP over gloo).

    python benchmarks/ddp_throughput.py [--steps 60] [--batch-size 128] [--write BENCHMARKS.md]

The ``digits`` preset (its U-Net, batch 128 by default) trained from scratch for ``--steps``
optimizer steps, three ways, each a fresh run folder under ``runs/bench_ddp``:

* ``1 process, 1 thread``: ``python -m undiffuse train`` with OMP_NUM_THREADS=1;
* ``1 process, 2 threads``: the same with OMP_NUM_THREADS=2 (the other way to use two cores);
* ``2 processes, 1 thread each``: ``torchrun --standalone --nproc-per-node 2 -m undiffuse
  train`` with OMP_NUM_THREADS=1, each rank computing half of the same global batch.

Samples/s is the median of the trainer's own log entries (every 10 steps, the first dropped
as warm-up); the wall time of the whole command (start-up, training, final checkpoint and
grid) is listed too. One run each: the machine is shared, so read ratios, not digits.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from _sections import load_results, save_results, table_section, write_section

START, END = "<!-- ddp-throughput:start -->", "<!-- ddp-throughput:end -->"
ROOT = "runs/bench_ddp"

WAYS = {
    "1 process, 1 thread": (1, 1),
    "1 process, 2 threads": (1, 2),
    "2 processes (torchrun, gloo), 1 thread each": (2, 1),
}


def measure(name: str, nproc: int, threads: int, steps: int, batch: int) -> dict:
    out = os.path.join(ROOT, name.split(" (")[0].replace(" ", "_").replace(",", ""))
    shutil.rmtree(out, ignore_errors=True)
    launcher = [sys.executable, "-m", "undiffuse"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
         "undiffuse", "--"]
    cmd = [*launcher, "train", "--data", "digits", "--max-steps", str(steps), "--batch-size", str(batch),
           "--log-every", "10", "--checkpoint-every", str(steps), "--sample-every", "0", "--no-progress",
           "--out", out, "--set", "train.sample_count=16", "--set", "train.tensorboard=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load = os.getloadavg()[0]  # other jobs' share of the 2 cores as the run starts
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr[-3000:]}")
    with open(os.path.join(out, "log.jsonl")) as f:
        rates = [e["samples_per_s"] for e in map(json.loads, f) if "samples_per_s" in e]
    return {"samples_per_s": statistics.median(rates[1:] or rates), "entries": rates, "wall_s": wall, "load1": load,
            "processes": nproc, "threads": threads}


def section(results: dict) -> str:
    base = results.get("1 process, 1 thread", {}).get("samples_per_s")

    def row(r):
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        return [f"{r['samples_per_s']:.0f}", ratio, f"{r['wall_s']:.0f}", f"{r.get('load1', float('nan')):.1f}"]

    m = results.get("_meta", {})
    intro = (f"The `digits` preset U-Net trained from scratch for {m.get('steps')} steps at global batch "
             f"{m.get('batch')} (see benchmarks/ddp_throughput.py). 2 processes split every global batch in two "
             "and average gradients over gloo; their weights equal the single process's to float rounding "
             "(tests/test_distributed.py).")
    return table_section(START, END, "## Training throughput on CPU: 1 process vs 2 (torchrun, DDP over gloo)",
                         intro, ["way", "samples/s (median of log entries)", "vs 1 process, 1 thread",
                                 "wall time of the command (s)", "load average at start"], results, row)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--write", help="update this Markdown file's section")
    args = p.parse_args()
    results_path = os.path.join(ROOT, "results.json")
    results = load_results(results_path)
    for name, (nproc, threads) in WAYS.items():
        results[name] = measure(name, nproc, threads, args.steps, args.batch_size)
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "entries"}), file=sys.stderr)
    results["_meta"] = {"steps": args.steps, "batch": args.batch_size, "notes": (
        f"One run of each on a 2-core machine shared with other jobs (other engineers' training and tests: see "
        f"the load average, 1-minute, as each run started), "
        f"{_dt.date.today().isoformat()}; samples/s is the median over the log entries after the first. Per step, "
        f"DDP adds a gradient all-reduce (1.04 M float32 values) over loopback gloo. Reproduce: "
        f"`python benchmarks/ddp_throughput.py --write BENCHMARKS.md`.")}
    save_results(results_path, results)
    if args.write:
        write_section(args.write, section(results), START, END)
    print(section(results))


if __name__ == "__main__":
    main()
