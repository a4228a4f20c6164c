#!/usr/bin/env python
"""Diffusion transformer against U-Net on digits, at the same number of training steps.

    python benchmarks/digits_dit.py [--steps 600] [--render] [--again] [--write BENCHMARKS.md]

Each row trains one network from scratch through the same trainer (EDM preconditioning,
lognormal noise levels, batch 128, cosine learning rate with the preset's warm-up) for
``--steps`` optimizer steps into ``runs/bench_dit/<row>``, then scores 1,797 samples (seeds
0..1796, Heun 10 steps = 19 evaluations) with ``metrics.fd_digits``. Rows:

* the ``digits`` preset (its U-Net);
* the ``digits-dit`` preset as it is (patch 2: 16 tokens of an 8x8 digit);
* the same DiT at other learning rates;
* a DiT with patch size 1 (64 tokens);
* the preset DiT trained twice as many steps (a DiT step costs about half a U-Net step here,
  so this row has about the U-Net's training time).

Training time per step is the trainer's own measurement (one thread; the machine is shared,
so compare steps, not seconds). One seed per row.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time

from _sections import load_results, rerun_arguments, save_results, table_section, write_section

START, END = "<!-- digits-dit:start -->", "<!-- digits-dit:end -->"
ROOT = "runs/bench_dit"
ROWS = {  # name: (preset, overrides, training steps as a multiple of --steps)
    "U-Net (`digits` preset)": ("digits", {}, 1),
    "DiT (`digits-dit` preset: patch 2, lr 2e-3)": ("digits-dit", {}, 1),
    "DiT, lr 1e-3": ("digits-dit", {"optim.lr": 1e-3}, 1),
    "DiT, lr 5e-4": ("digits-dit", {"optim.lr": 5e-4}, 1),
    "DiT, lr 4e-3": ("digits-dit", {"optim.lr": 4e-3}, 1),
    "DiT, patch 1 (64 tokens)": ("digits-dit", {"model.patch_size": 1}, 1),
    "DiT (preset), twice the steps: about the U-Net's training time": ("digits-dit", {}, 2),
    "DiT, lr 4e-3, twice the steps": ("digits-dit", {"optim.lr": 4e-3}, 2),
}


def folder(name: str) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in name.lower())
    return os.path.join(ROOT, "_".join(p for p in keep.split("_") if p))


def train(name: str, preset: str, over: dict, steps: int) -> str:
    out = folder(name)
    if not os.path.isdir(os.path.join(out, "checkpoints")):
        sets = [a for k, v in over.items() for a in ("--set", f"{k}={json.dumps(v)}")]
        subprocess.run([sys.executable, "-m", "undiffuse", "train", "--data", "digits", "--preset", preset,
                        "--max-steps", str(steps), "--log-every", "50", "--no-progress", "--out", out,
                        "--set", "train.tensorboard=false", *sets], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return out


def measure(run: str) -> dict:
    import torch

    from undiffuse.inference import generate as gen
    from undiffuse.metrics import fd_digits

    r = gen.load_run(run)
    with open(os.path.join(run, "log.jsonl")) as f:
        log = [json.loads(line) for line in f if line.strip()]
    rates = sorted(e["steps_per_s"] for e in log if "steps_per_s" in e)
    t0 = time.perf_counter()
    x = gen.generate(r, 1797, seed=0, sampler="heun", steps=10, batch_size=600)
    sampling = time.perf_counter() - t0
    return {"fd": fd_digits(gen.to_unit(x).numpy()), "parameters": sum(p.numel() for p in r.denoiser.net.parameters()),
            "s_per_step": 1 / rates[len(rates) // 2], "steps": r.step, "sampling_s": sampling,
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    rerun_arguments(p)
    args = p.parse_args()
    path = os.path.join(ROOT, "results.json")
    results = load_results(path)
    if not args.render:
        for name, (preset, over, times) in ROWS.items():
            if name in results and not args.again:
                continue
            results[name] = measure(train(name, preset, over, times * args.steps))
            print(name, results[name], flush=True)
            save_results(path, results)
        unet = results[next(iter(ROWS))]["fd"]
        best = min((k for k in ROWS if k.startswith("DiT")), key=lambda k: results[k]["fd"])
        results["_meta"] = {"date": _dt.date.today().isoformat(), "steps": args.steps, "notes": (
            f"One run each, {_dt.date.today().isoformat()}, shared 2-core CPU. Best DiT: {best}, FD "
            f"{results[best]['fd']:.3g} = {results[best]['fd'] / unet:.2f}x the U-Net's {unet:.3g} at the same steps. "
            "Reproduce: `python benchmarks/digits_dit.py --write BENCHMARKS.md`.")}
        save_results(path, results)
    if args.write:
        m = results.get("_meta", {})
        intro = (f"Same trainer, data and loss; {m.get('steps')} optimizer steps (unless the row says otherwise) at "
                 "batch 128 from scratch, cosine learning rate over the run; FD = "
                 "`fd_digits` of 1,797 samples (seeds 0..1796, Heun 10 steps). Seconds per step: the trainer's "
                 "median, one thread (benchmarks/digits_dit.py).")
        section = table_section(START, END, "## Diffusion transformer vs U-Net on digits (issue 7)", intro,
                                ["network", "parameters", "steps", "s/step", "FD"], {"_meta": m, **{k: results[k] for k in ROWS
                                                                                          if k in results}},
                                lambda r: [f"{r['parameters'] / 1e6:.2f} M", f"{r['steps']}", f"{r['s_per_step']:.2f}",
                                           f"{r['fd']:.3g}"])
        write_section(args.write, section, START, END)


if __name__ == "__main__":
    main()
