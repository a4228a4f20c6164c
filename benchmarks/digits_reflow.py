#!/usr/bin/env python
"""Reflow on digits: does re-training on the teacher's couplings make 1- and 2-step samples good?

    python benchmarks/digits_reflow.py [--steps 1300] [--couplings 8192] [--render] [--write BENCHMARKS.md]

A rectified-flow teacher (the ``digits`` preset with ``--parameterization flow`` and the flow
process, ``--steps`` training steps) is trained unless ``runs/bench_reflow/teacher`` exists;
``undiffuse distill --method reflow`` then makes two students from ``--couplings`` noise-to-
sample pairs, one with the teacher ODE solved by Heun 10 steps (the run's default sampler) and
one by DPM-Solver++ 2M 20 steps, each trained for the same number of steps from the teacher's
EMA weights. Both are sampled with Euler at 1, 2 and 4 steps on two schedules
(``trailing``: uniform in flow time from t = 1, so 2 steps are t = 1, 0.5, 0, the usual choice
for flow models; ``karras``: the run's default, whose last steps sit at sigma_min) and the teacher with Heun 10 steps (19 evaluations); FD is ``metrics.fd_digits`` of 1,797 samples (seeds 0..1796),
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
from _sections import load_results, rerun_arguments, save_results, table_section, write_section

START, END = "<!-- digits-reflow:start -->", "<!-- digits-reflow:end -->"
ROOT = "runs/bench_reflow"
FLOW = ["--parameterization", "flow", "--set", 'diffusion.process={"name": "flow"}']


def run(cmd):
    subprocess.run([sys.executable, "-m", "undiffuse", *cmd, "--no-progress"], check=True)


_STRAIGHTNESS: dict = {}


def measure(path: str, sampler: str, steps: int, schedule: str) -> dict:
    from undiffuse import generate as gen
    from undiffuse.metrics import fd_digits
    from undiffuse.reflow import straightness

    r = gen.load_run(path)
    t0 = time.perf_counter()
    x = gen.generate(r, 1797, seed=0, sampler=sampler, steps=steps, schedule=schedule, batch_size=600)
    secs = time.perf_counter() - t0
    if path not in _STRAIGHTNESS:  # a property of the model, not of the sampler
        z = torch.randn(256, *r.shape, generator=torch.Generator().manual_seed(123))
        _STRAIGHTNESS[path] = float(straightness(r.denoiser, z, steps=100).mean())
    s = _STRAIGHTNESS[path]
    return {"fd": fd_digits(gen.to_unit(x).numpy()), "straightness": s, "seconds": round(secs, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1300)
    p.add_argument("--couplings", type=int, default=8192)
    rerun_arguments(p)
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
        rows = [("teacher, Heun 10 steps, karras", teacher, "heun", 10, 19, "karras"),
                ("teacher, Heun 10 steps, trailing", teacher, "heun", 10, 19, "trailing"),
                ("teacher, DPM-Solver++ 2M 20 steps, karras", teacher, "dpmpp_2m", 20, 20, "karras"),
                ("teacher, Euler 20 steps, trailing", teacher, "euler", 20, 20, "trailing")]
        student2 = os.path.join(ROOT, "student2")
        if not os.path.isdir(os.path.join(student2, "checkpoints")):
            run(["distill", "--method", "reflow", "--teacher", teacher, "--out", student2, "--max-steps",
                 str(args.steps), "--couplings", str(args.couplings), "--sampler", "dpmpp_2m", "--steps", "20"])
        for who, rpath in (("teacher", teacher), ("reflow student (couplings: Heun 10)", student),
                           ("reflow student (couplings: DPM-Solver++ 2M 20)", student2)):
            for schedule in ("trailing", "karras"):
                for steps in (4, 2, 1):
                    rows.append((f"{who}, Euler {steps} step{'s' if steps > 1 else ''}, {schedule}", rpath, "euler",
                                 steps, steps, schedule))
        for name, rpath, sampler, steps, nfe, schedule in rows:
            if name in results and not args.again:
                continue
            results[name] = {**measure(rpath, sampler, steps, schedule), "nfe": nfe}
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
