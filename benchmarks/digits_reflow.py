#!/usr/bin/env python
"""Reflow on digits: does re-training on the teacher's couplings make 1- and 2-step samples good?

    python benchmarks/digits_reflow.py [--steps 1300] [--couplings 8192] [--render] [--write BENCHMARKS.md]

A rectified-flow teacher (the ``digits`` preset with ``--parameterization flow`` and the flow
process, ``--steps`` training steps) is trained unless ``runs/bench_reflow/teacher`` exists;
``undiffuse distill --method reflow`` then makes a student from ``--couplings`` noise-to-
sample pairs (teacher ODE: Heun 10 steps) trained for the same number of steps, starting from
the teacher's EMA weights. Both are sampled with Euler at 1, 2 and 4 steps and the teacher with
Heun 10 steps (19 evaluations); FD is ``metrics.fd_digits`` of 1,797 samples (seeds 0..1796),
and straightness the mean S of ``reflow.straightness`` over 256 noises (0 = straight paths).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import subprocess
import sys
import time

import torch
from _sections import load_results, save_results, table_section, write_section

START, END = "<!-- digits-reflow:start -->", "<!-- digits-reflow:end -->"
ROOT = "runs/bench_reflow"
FLOW = ["--parameterization", "flow", "--set", 'diffusion.process={"name": "flow"}']


def run(cmd):
    subprocess.run([sys.executable, "-m", "undiffuse", *cmd, "--no-progress"], check=True)


def measure(path: str, sampler: str, steps: int) -> dict:
    from undiffuse import generate as gen
    from undiffuse.metrics import fd_digits
    from undiffuse.reflow import straightness

    r = gen.load_run(path)
    t0 = time.perf_counter()
    x = gen.generate(r, 1797, seed=0, sampler=sampler, steps=steps, batch_size=600)
    secs = time.perf_counter() - t0
    z = torch.randn(256, *r.shape, generator=torch.Generator().manual_seed(123))
    s = float(straightness(r.denoiser, z, steps=100).mean())
    return {"fd": fd_digits(gen.to_unit(x).numpy()), "straightness": s, "seconds": round(secs, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1300)
    p.add_argument("--couplings", type=int, default=8192)
    p.add_argument("--render", action="store_true")
    p.add_argument("--write")
    args = p.parse_args()
    path = os.path.join(ROOT, "results.json")
    results = load_results(path)
    if not args.render:
        teacher, student = os.path.join(ROOT, "teacher"), os.path.join(ROOT, "student")
        if not os.path.isdir(os.path.join(teacher, "checkpoints")):
            run(["train", "--data", "digits", "--max-steps", str(args.steps), "--out", teacher, *FLOW])
        if not os.path.isdir(os.path.join(student, "checkpoints")):
            t0 = time.perf_counter()
            run(["distill", "--method", "reflow", "--teacher", teacher, "--out", student, "--max-steps",
                 str(args.steps), "--couplings", str(args.couplings)])
            results["_meta"] = {"distill_seconds": round(time.perf_counter() - t0)}
        for name, rpath, sampler, steps, nfe in [
                ("teacher, Heun 10 steps", teacher, "heun", 10, 19),
                ("teacher, Euler 4 steps", teacher, "euler", 4, 4),
                ("teacher, Euler 2 steps", teacher, "euler", 2, 2),
                ("teacher, Euler 1 step", teacher, "euler", 1, 1),
                ("reflow student, Euler 4 steps", student, "euler", 4, 4),
                ("reflow student, Euler 2 steps", student, "euler", 2, 2),
                ("reflow student, Euler 1 step", student, "euler", 1, 1)]:
            results[name] = {**measure(rpath, sampler, steps), "nfe": nfe}
            print(name, results[name], flush=True)
        results["_meta"] = {**results.get("_meta", {}), "date": _dt.date.today().isoformat(), "steps": args.steps,
                            "couplings": args.couplings}
        save_results(path, results)
    if args.write:
        meta = results.get("_meta", {})
        intro = (f"`python benchmarks/digits_reflow.py` ({meta.get('date', '?')}): a rectified-flow teacher (digits "
                 f"preset, flow objective, {meta.get('steps', '?')} steps) and its reflow student ("
                 f"{meta.get('couplings', '?')} couplings from the teacher's Heun-10 ODE, {meta.get('steps', '?')} "
                 f"steps from the teacher's EMA weights; {meta.get('distill_seconds', '?')} s for couplings and "
                 "training on a shared CPU). FD: `fd_digits` of 1,797 samples; straightness: mean S over 256 "
                 "noises, 0 = straight.")
        section = table_section(START, END, "## Reflow on digits (issue 7, first part)", intro,
                                ["model, sampler", "NFE", "FD", "straightness", "sampling s"], results,
                                lambda r: [f"{r['nfe']}", f"{r['fd']:.3g}", f"{r['straightness']:.3g}",
                                           f"{r['seconds']:.1f}"])
        write_section(args.write, section, START, END)


if __name__ == "__main__":
    main()
