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

Recipe variants (issue 7's goal: 1 and 2 steps within 1.3x the teacher's best 20-step FD):
students from DPM-Solver++ 2M 20-step couplings with the training options of Lee et al. 2024
(``diffusion.noise_sampling=u_shaped``, ``diffusion.distance=pseudo_huber``), more couplings
(kept in a ``--couplings-file`` and shared by the variants; drawn from seeds 200000.., so that
both FD seed sets below are noises the students never trained on) and longer training. Each is
sampled with Euler at 1 step (from sigma_max) and 2 steps through a middle level chosen from
``MIDDLES`` on seeds 0..1796, and both are checked on the held-out seeds 100000..101796.
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


HELD = 100_000  # held-out seeds: choices made on seeds 0..1796 are checked on 100000..101796
SMAX = 999.0  # the flow process's sigma_max (t_max = 0.999): where every sampler starts
MIDDLES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # 2-step middle levels swept on seeds 0..1796
COUPLINGS_SEED = 200_000
COUPLINGS_FILE = os.path.join(ROOT, f"couplings_dpmpp2m20_s{COUPLINGS_SEED}.safetensors")
SHARED = ["--couplings", "32768", "--seed", str(COUPLINGS_SEED), "--couplings-file", COUPLINGS_FILE]
U, HUBER = ["--set", "diffusion.noise_sampling=u_shaped"], ["--set", "diffusion.distance=pseudo_huber"]
# (folder, label, distill arguments) of the recipe variants, in training order, all from
# DPM-Solver++ 2M 20-step couplings, from the teacher's EMA weights unless --init; one run each.
RECIPE = [
    ("u4", "U-shaped t (a = 4), 8192 couplings from seeds 0..8191 (they include seeds 0..1796), 1300 steps",
     ["--couplings", "8192", "--max-steps", "1300", *U]),
    ("u4_32k", "U-shaped t, 32768 couplings, 1300 steps", [*SHARED, "--max-steps", "1300", *U]),
    ("u4_32k_huber", "U-shaped t, pseudo-Huber, 32768 couplings, 1300 steps",
     [*SHARED, "--max-steps", "1300", *U, *HUBER]),
    ("huber_1step", "U-shaped + pseudo-Huber 1300 steps, then a 1-step stage (t = t_max only, pseudo-Huber) for "
     "800 steps at lr 5e-4",
     [*SHARED, "--init", os.path.join(ROOT, "u4_32k_huber"), "--max-steps", "800", "--lr", "5e-4",
      "--set", "diffusion.noise_sampling=sigma_max", *HUBER]),
    ("huber_1step_2400", "U-shaped + pseudo-Huber 1300 steps, then the 1-step stage for 2400 steps at lr 5e-4",
     [*SHARED, "--init", os.path.join(ROOT, "u4_32k_huber"), "--max-steps", "2400", "--lr", "5e-4",
      "--set", "diffusion.noise_sampling=sigma_max", *HUBER]),
    ("huber_1step_4800", "the last one + the 1-step stage again for 2400 steps at lr 5e-4 (warm-up and cosine "
     "restarted; 1300 + 4800 steps in all)",
     [*SHARED, "--init", os.path.join(ROOT, "huber_1step_2400"), "--max-steps", "2400", "--lr", "5e-4",
      "--set", "diffusion.noise_sampling=sigma_max", *HUBER]),
    ("huber_1step_7200", "the last one + the 1-step stage a third time, 2400 steps at lr 5e-4 (1300 + 7200 steps "
     "in all)",
     [*SHARED, "--init", os.path.join(ROOT, "huber_1step_4800"), "--max-steps", "2400", "--lr", "5e-4",
      "--set", "diffusion.noise_sampling=sigma_max", *HUBER]),
    # after the helper's stages levelled off at lr 5e-4 with cosine decay: a constant lower lr, as
    # the consistency student's last stages (pseudo-Huber, and l2 for comparison)
    ("huber_1step_4800_lr1e4", "huber_1step_4800 + the 1-step stage for 1200 steps at a constant lr 1e-4 "
     "(1300 + 6000 steps in all)",
     [*SHARED, "--init", os.path.join(ROOT, "huber_1step_4800"), "--max-steps", "1200", "--lr", "1e-4",
      "--set", "diffusion.noise_sampling=sigma_max", "--set", "optim.schedule=constant",
      "--set", "optim.warmup_steps=0", *HUBER]),
    ("l2_1step_4800_lr1e4", "the same with the squared error instead of pseudo-Huber",
     [*SHARED, "--init", os.path.join(ROOT, "huber_1step_4800"), "--max-steps", "1200", "--lr", "1e-4",
      "--set", "diffusion.noise_sampling=sigma_max", "--set", "optim.schedule=constant",
      "--set", "optim.warmup_steps=0", "--set", "diffusion.distance=l2"]),
]


def measure(path: str, sampler: str, steps: int | None, schedule, seed: int = 0) -> dict:
    from undiffuse.fewstep.reflow import straightness
    from undiffuse.inference import generate as gen
    from undiffuse.metrics import fd_digits

    r = gen.load_run(path)
    t0 = time.perf_counter()
    x = gen.generate(r, 1797, seed=seed, sampler=sampler, steps=steps, schedule=schedule, batch_size=600)
    secs = time.perf_counter() - t0
    if path not in _STRAIGHTNESS:  # a property of the model, not of the sampler
        z = torch.randn(256, *r.shape, generator=torch.Generator().manual_seed(123))
        _STRAIGHTNESS[path] = float(straightness(r.denoiser, z, steps=100).mean())
    s = _STRAIGHTNESS[path]
    return {"fd": fd_digits(gen.to_unit(x).numpy()), "straightness": s, "seconds": round(secs, 1),
            "seeds": f"{seed}..{seed + 1796}"}


def train_recipe(teacher: str) -> None:
    """Train the ``RECIPE`` students not trained yet (in order: a stage may start from an earlier one)."""
    for folder, _, args in RECIPE:
        out = os.path.join(ROOT, folder)
        if not os.path.isdir(os.path.join(out, "checkpoints")):
            run(["distill", "--method", "reflow", "--teacher", teacher, "--out", out, "--sampler", "dpmpp_2m",
                 "--steps", "20", *args])


def train_seconds(run_path: str) -> int:
    """The student's training wall time (the trainer's last logged ``elapsed``; couplings not included)."""
    import json

    with open(os.path.join(run_path, "log.jsonl")) as f:
        return round(max(json.loads(line).get("elapsed", 0) for line in f if line.strip()))


def recipe_rows(results: dict, again: bool) -> None:
    """1 step, the 2-step middle level sweep on seeds 0..1796, and the held-out checks."""
    for folder, label, _ in RECIPE:
        path = os.path.join(ROOT, folder)
        tag = f"reflow student ({label}; {train_seconds(path)} s training)"
        todo = [(f"{tag}, Euler 1 step", [SMAX, 0.0], 0, 1)]
        todo += [(f"{tag}, Euler 2 steps via sigma {m:g}", [SMAX, m, 0.0], 0, 2) for m in MIDDLES]
        for name, sigmas, seed, nfe in todo:
            if name not in results or again:
                results[name] = {**measure(path, "euler", None, sigmas, seed), "nfe": nfe}
                print(name, results[name], flush=True)
        sweep = {m: results[f"{tag}, Euler 2 steps via sigma {m:g}"]["fd"] for m in MIDDLES}
        best = min(sweep, key=sweep.get)
        for name, sigmas, nfe in ((f"held-out seeds: {tag}, Euler 1 step", [SMAX, 0.0], 1),
                                  (f"held-out seeds: {tag}, Euler 2 steps via sigma {best:g} (best on seeds 0..1796)",
                                   [SMAX, best, 0.0], 2)):
            if name not in results or again:
                results[name] = {**measure(path, "euler", None, sigmas, HELD), "nfe": nfe}
                print(name, results[name], flush=True)


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
        rows.append(("held-out seeds: teacher, DPM-Solver++ 2M 20 steps, karras", teacher, "dpmpp_2m", 20, 20,
                     "karras", HELD))
        for name, rpath, sampler, steps, nfe, schedule, *seed in rows:
            if name in results and not args.again:
                continue
            results[name] = {**measure(rpath, sampler, steps, schedule, *seed), "nfe": nfe}
            print(name, results[name], flush=True)
        train_recipe(teacher)
        save_results(path, results)
        recipe_rows(results, args.again)
        results["_meta"] = {**results.get("_meta", {}), "date": _dt.date.today().isoformat(), "steps": args.steps,
                            "couplings": args.couplings}
        save_results(path, results)
    if args.write:
        meta = results.get("_meta", {})
        intro = (f"`python benchmarks/digits_reflow.py` ({meta.get('date', '?')}): a rectified-flow teacher (digits "
                 f"preset, flow objective, {meta.get('steps', '?')} steps) and reflow students made by "
                 "`undiffuse distill --method reflow` from the teacher's EMA weights. The first two (rows \"reflow "
                 f"student (couplings: ...)\"): {meta.get('couplings', '?')} couplings (seeds 0..8191) from the "
                 f"teacher's Heun-10 or DPM-Solver++ 2M 20-step ODE, {meta.get('steps', '?')} steps with the "
                 "teacher's own training options (log-normal noise levels, squared error); "
                 f"{meta.get('distill_seconds', '?')} s for the first one's couplings and training on a shared "
                 "CPU. The recipe variants (rows with a training time) use DPM-Solver++ 2M 20-step couplings and "
                 "the options named in their rows (`--set diffusion.noise_sampling=u_shaped`, "
                 "`--set diffusion.distance=pseudo_huber`, `--init` + `--set diffusion.noise_sampling=sigma_max`); "
                 "except the first, their 32,768 couplings come from seeds 200000..232767 (one file, "
                 "`--couplings-file`, drawn once in about 10 minutes), so both FD seed sets are noises they never "
                 "trained on. The time in a row is that student's own training (a stage's excludes the student it "
                 "started from, and the couplings), on one thread with the other core busy with other work. "
                 "1 step: Euler from sigma_max (`--sigmas 999,0`); 2 steps: Euler through the middle level "
                 "named (`--sigmas 999,m,0`), swept over m in "
                 f"{', '.join(f'{m:g}' for m in MIDDLES)} on seeds 0..1796, the best one checked on the held-out "
                 "seeds 100000..101796. FD: `fd_digits` of 1,797 samples of the seeds given; the ratio is over "
                 "the teacher's DPM-Solver++ 2M 20-step FD on the same seeds (the goal: <= 1.3); straightness: "
                 "mean S over 256 noises, 0 = straight. One run of everything, one training seed.")
        best = {HELD if k.startswith("held-out") else 0: r["fd"] for k, r in results.items()
                if k.endswith("teacher, DPM-Solver++ 2M 20 steps, karras")}
        section = table_section(START, END, "## Reflow on digits (issue 7)", intro,
                                ["model, sampler", "NFE", "seeds", "FD", "FD / teacher's best", "straightness",
                                 "sampling s"], results,
                                lambda r: [f"{r['nfe']}", r.get("seeds", "0..1796"), f"{r['fd']:.3g}",
                                           f"{r['fd'] / best[int(r.get('seeds', '0..').split('..')[0])]:.3f}",
                                           f"{r['straightness']:.3g}", f"{r['seconds']:.1f}"])
        write_section(args.write, section, START, END)


if __name__ == "__main__":
    main()
