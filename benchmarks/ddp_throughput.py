#!/usr/bin/env python
"""Training throughput on CPU: one process against two under torchrun (DDP or FSDP over gloo).

    python benchmarks/ddp_throughput.py [--steps 60] [--batch-size 128] [--channels 32] [--write BENCHMARKS.md]

The ``digits`` preset (its U-Net, batch 128 by default) trained from scratch for ``--steps``
optimizer steps, three ways, each a fresh run folder under ``runs/bench_ddp``:

* ``1 process, 1 thread``: ``python -m undiffuse train`` with OMP_NUM_THREADS=1;
* ``1 process, 2 threads``: the same with OMP_NUM_THREADS=2 (the other way to use two cores);
* ``2 processes, 1 thread each``: ``torchrun --standalone --nproc-per-node 2 -m undiffuse
  train`` with OMP_NUM_THREADS=1, each rank computing half of the same global batch;
* ``2 processes, FSDP``: the same with ``--fsdp`` (parameters, gradients and AdamW moments
  sharded, block weights gathered for each forward and backward).

``--channels`` widens the U-Net (rows keyed by it, so widths accumulate in one table). The
peak resident memory of the largest process of each command is read from the operating
system (``getrusage`` of the children of a small wrapper process).

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
    "1 process, 1 thread": (1, 1, False),
    "1 process, 2 threads": (1, 2, False),
    "2 processes (torchrun, gloo), 1 thread each": (2, 1, False),
    "2 processes (torchrun, FSDP over gloo), 1 thread each": (2, 1, True),
}
# runs the command given as arguments, then prints the largest peak RSS (KiB) of its process tree
_PEAK = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); " \
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"


def measure(name: str, nproc: int, threads: int, fsdp: bool, steps: int, batch: int, channels: int) -> dict:
    out = os.path.join(ROOT, f"c{channels}_" + name.replace(" ", "_").replace(",", "").replace("(", "")
                       .replace(")", ""))
    shutil.rmtree(out, ignore_errors=True)
    launcher = [sys.executable, "-m", "undiffuse"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
         "undiffuse", "--"]
    cmd = [*launcher, "train", "--data", "digits", "--max-steps", str(steps), "--batch-size", str(batch),
           "--log-every", str(max(1, min(10, steps // 4))), "--checkpoint-every", str(steps), "--sample-every", "0", "--no-progress",
           "--out", out, "--set", "train.sample_count=16", "--set", "train.tensorboard=false",
           "--set", f"model.channels={channels}", "--set", f"model.head_channels={channels}",
           *(["--fsdp"] if fsdp else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load = os.getloadavg()[0]  # other jobs' share of the 2 cores as the run starts
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _PEAK, *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr[-3000:]}")
    with open(os.path.join(out, "log.jsonl")) as f:
        rates = [e["samples_per_s"] for e in map(json.loads, f) if "samples_per_s" in e]
    with open(os.path.join(out, "config.json")) as f:
        width = json.load(f)["model"]["channels"]
    params = _parameters(out)
    return {"samples_per_s": statistics.median(rates[1:] or rates), "entries": rates, "wall_s": wall, "load1": load,
            "processes": nproc, "threads": threads, "fsdp": fsdp, "steps": steps, "batch": batch, "channels": width, "parameters": params,
            "peak_rss_mib": int(res.stdout.strip().splitlines()[-1]) / 1024}


def _parameters(run: str) -> int:
    from safetensors import safe_open

    from undiffuse.io import checkpoint as ckpt

    path = os.path.join(run, "checkpoints", ckpt.read_latest(run), "model.safetensors")
    with safe_open(path, "pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def section(results: dict) -> str:
    def row(r):
        base = results.get(f"{r.get('channels', 32)} channels: 1 process, 1 thread", {}).get("samples_per_s")
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        params = f"{r['parameters'] / 1e6:.2f} M" if "parameters" in r else "-"
        rss = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "-"
        return [params, f"{r.get('steps', '-')} x {r.get('batch', '-')}", f"{r['samples_per_s']:.0f}", ratio, rss, f"{r['wall_s']:.0f}",
                f"{r.get('load1', float('nan')):.1f}"]

    intro = ("The `digits` preset U-Net (at the width in the row's name; the preset's is 32 channels) trained "
             "from scratch for the given steps at the given global batch (see benchmarks/ddp_throughput.py). 2 processes split every global batch in two and average gradients "
             "over gloo, replicated (DDP) or sharded (FSDP); their weights equal the single process's to float "
             "rounding (tests/test_distributed.py). Peak memory: the largest process of the command.")
    return table_section(START, END, "## Training throughput on CPU: 1 process vs 2 (torchrun, DDP or FSDP over gloo)",
                         intro, ["way", "parameters", "steps x global batch", "samples/s (median of log entries)", "vs 1 process, 1 thread",
                                 "peak RSS (MiB)", "wall time of the command (s)", "load average at start"],
                         results, row)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--channels", type=int, default=32, help="U-Net base width (the digits preset's is 32)")
    p.add_argument("--write", help="update this Markdown file's section")
    args = p.parse_args()
    results_path = os.path.join(ROOT, "results.json")
    results = load_results(results_path)
    results = {k: v for k, v in results.items() if k == "_meta" or " channels: " in k}  # older layout: remeasure
    for name, (nproc, threads, fsdp) in WAYS.items():
        key = f"{args.channels} channels: {name}"
        results[key] = measure(name, nproc, threads, fsdp, args.steps, args.batch_size, args.channels)
        print(key, json.dumps({k: v for k, v in results[key].items() if k != "entries"}), file=sys.stderr)
    results["_meta"] = {"notes": (
        f"One run of each on a 2-core machine shared with other jobs (other engineers' training and tests: see "
        f"the load average, 1-minute, as each run started), "
        f"{_dt.date.today().isoformat()}; samples/s is the median over the log entries after the first. Per step, "
        f"DDP adds a gradient all-reduce over loopback gloo; FSDP instead an all-gather of each block's weights in "
        f"the forward and again in the backward, and a reduce-scatter of its gradients. FSDP's peak memory is not lower here: the peak "
        f"is the writing rank's, which gathers the whole network, EMA and optimizer state to save the "
        f"single-process checkpoint format (the other ranks drop each gathered tensor at once), on top of a "
        f"torch runtime of about 500 MiB per process; between checkpoints each rank holds half of the "
        f"parameters, gradients and moments. Reproduce: "
        f"`python benchmarks/ddp_throughput.py --write BENCHMARKS.md` (and `--channels 128 --steps 12 --batch-size 32` for the wider rows).")}
    save_results(results_path, results)
    if args.write:
        write_section(args.write, section(results), START, END)
    print(section(results))


if __name__ == "__main__":
    main()
