#!/usr/bin/env python
"""Inverse problems on held-out digits with an unconditional model as the prior.

    python benchmarks/digits_inverse.py [--train-steps 1300] [--num 270] [--render] [--write BENCHMARKS.md]

The 1,797 digits are split by a seeded permutation (seed 0): 85% train an unconditional
model (the ``digits`` preset, 1,300 steps, from ``runs/bench_inverse/train.npz``), the other
270 are *held out* and degraded. Each task is scored by whether the in-project digits
classifier reads the restoration as the original digit (the classifier was trained on all
digits, held-out ones included; it reads real digits correctly 98-99% of the time), by the
pixel RMSE to the original in [0, 1], and, as a floor, by reading the degraded input itself
(missing pixels at background, low-resolution images up-sampled by nearest neighbour).

Tasks: fill the bottom half (top kept), fill the top half, fill the centre square (RePaint,
50 ancestral steps, plain and with resampling: jump length 5, 4 extra walks), super-resolve
4x4 -> 8x8 zero-shot (posterior guidance, Heun 18 steps) and restore a blurred noisy digit.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from _sections import load_results, save_results, table_section, write_section

START, END = "<!-- digits-inverse:start -->", "<!-- digits-inverse:end -->"
ROOT = "runs/bench_inverse"


def split() -> tuple[np.ndarray, np.ndarray]:
    n = 1797
    perm = np.random.default_rng(0).permutation(n)
    held = np.sort(perm[: int(round(0.15 * n))])
    train = np.sort(perm[int(round(0.15 * n)):])
    return train, held


def prepare(steps: int, name: str = "prior", extra: tuple = ()) -> str:
    """Train (once) a digits-preset run on the 85% split: the prior, or with ``extra`` options."""
    from sklearn.datasets import load_digits

    run = os.path.join(ROOT, name)
    if os.path.isdir(os.path.join(run, "checkpoints")):
        return run
    d = load_digits()
    train, _ = split()
    os.makedirs(ROOT, exist_ok=True)
    path = os.path.join(ROOT, "train.npz")
    # pixel values 0..16 -> [0, 1]: the array loader reads floats in [0, 1] as images
    np.savez(path, x=(d.images[train] / 16.0)[:, None].astype(np.float32), labels=d.target[train])
    subprocess.run([sys.executable, "-m", "undiffuse", "train", "--data", path, "--preset", "digits", "--max-steps",
                    str(steps), "--out", run, "--no-progress", *extra], check=True)
    return run


def tasks():
    from undiffuse.cli.inverse import _mask

    shape = (1, 8, 8)
    masks = {name: _mask(name, shape, None) for name in ("bottom", "top", "center")}
    out = {}
    for name, m in masks.items():
        out[f"inpaint {name}, plain"] = {"kind": "inpaint", "mask": m, "jump_count": 0}
        out[f"inpaint {name}, resampled (j=5, r=5)"] = {"kind": "inpaint", "mask": m, "jump_count": 4}
    out["inpaint bottom, resampled (j=10, r=10), 100 steps"] = {"kind": "inpaint", "mask": masks["bottom"],
                                                                "jump_count": 9, "jump_length": 10, "steps": 100}
    out["inpaint bottom, posterior guidance (mask operator, Heun 18)"] = {"kind": "guided_mask", "mask": masks["bottom"]}
    out["upscale 4x4 -> 8x8, zero-shot"] = {"kind": "upscale", "factor": 2}
    out["upscale 4x4 -> 8x8, SR3 model (--conditioning lowres)"] = {"kind": "sr3", "factor": 2}
    out["deblur (1 px) + noise 0.1"] = {"kind": "blur"}
    return out


def measure(name, spec, run, x_held, labels, read) -> dict:
    from undiffuse.core import schedules
    from undiffuse.core.noise import per_sample_generators
    from undiffuse.steering import degradations, inverse

    den = run.denoiser
    n = len(x_held)
    seeds = list(range(n))
    s = run.config.sample
    t0 = time.perf_counter()
    if spec["kind"] == "inpaint":
        mask = spec["mask"].expand(n, 1, 8, 8)
        steps = spec.get("steps", 50)
        sig = schedules.get_sigmas("karras", steps, sigma_min=den.sigma_min, sigma_max=den.sigma_max)
        y = inverse.inpaint(den, x_held, mask, sig, generator=per_sample_generators(seeds),
                            jump_length=spec.get("jump_length", 5), jump_count=spec["jump_count"])
        degraded = torch.where(mask > 0, x_held, torch.full_like(x_held, -1.0))
        nfe = steps * (1 + spec["jump_count"])
    elif spec["kind"] == "guided_mask":
        mask = spec["mask"].expand(n, 1, 8, 8)
        op = degradations.get("mask", mask=mask)
        y = inverse.restore(den, op(x_held), op, sampler="heun", steps=18, seed=seeds, project=True)
        degraded = torch.where(mask > 0, x_held, torch.full_like(x_held, -1.0))
        nfe = 35
    elif spec["kind"] == "sr3":
        from undiffuse.inference import generate as gen
        from undiffuse.steering.conditioning import upsample_condition

        sr = gen.load_run(prepare(run.step, "sr3", ("--conditioning", "lowres", "--set", "conditioning.factor=2")))
        low = torch.nn.functional.avg_pool2d(x_held, 2)
        y = gen.generate(sr, n, seed=0, condition={"cond_image": upsample_condition(low, 2)})
        degraded = torch.nn.functional.interpolate(low, scale_factor=2, mode="nearest")
        nfe = 19
    elif spec["kind"] == "upscale":
        low = torch.nn.functional.avg_pool2d(x_held, 2)
        y = inverse.upscale(den, low, 2, sampler="heun", steps=18, sigma_min=s.sigma_min, sigma_max=s.sigma_max,
                            seed=seeds)
        degraded = torch.nn.functional.interpolate(low, scale_factor=2, mode="nearest")
        nfe = 35
    else:
        op = degradations.get("blur", sigma_px=1.0, noise_std=0.1)
        y_meas = op.measure(x_held, generator=torch.Generator().manual_seed(0))
        y = inverse.restore(den, y_meas, op, sampler="heun", steps=18, seed=seeds)
        degraded = y_meas
        nfe = 35
    seconds = time.perf_counter() - t0
    to01 = lambda t: ((t.float() + 1) / 2).clamp(0, 1).numpy()
    rmse = float(np.sqrt(((to01(y) - to01(x_held)) ** 2).mean()))
    rmse_in = float(np.sqrt(((to01(degraded) - to01(x_held)) ** 2).mean()))
    row = {"read_as_original": read(to01(y), labels), "input_read": read(to01(degraded), labels),
           "rmse": rmse, "input_rmse": rmse_in, "nfe": nfe, "seconds": round(seconds, 1)}
    print(f"{name}: {json.dumps(row)}", flush=True)
    return row


def render(results: dict) -> str:
    meta = results.get("_meta", {})
    intro = (f"`python benchmarks/digits_inverse.py` ({meta.get('date', '?')}): an unconditional digits model "
             f"({meta.get('steps', '?')} steps of the `digits` preset) trained on 85% of the digits is the prior; "
             f"the other {meta.get('num', '?')} digits are degraded and restored (one result per digit, seeds "
             "0..N-1). *Read as original*: share the in-project digits classifier reads as the original digit; "
             "*input read*: the same for the degraded input (missing pixels at background, low resolution "
             "up-sampled), the floor. RMSE in [0, 1] pixels against the original.")
    header = ["task", "read as original", "input read", "RMSE", "input RMSE", "NFE / image", "time (s)"]
    return table_section(START, END, "## Inverse problems on held-out digits (issue 5)", intro, header, results,
                         lambda r: [f"{r['read_as_original']:.1%}", f"{r['input_read']:.1%}", f"{r['rmse']:.3f}",
                                    f"{r['input_rmse']:.3f}", f"{r['nfe']}", f"{r['seconds']:.1f}"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-steps", type=int, default=1300)
    p.add_argument("--only", nargs="*")
    p.add_argument("--render", action="store_true")
    p.add_argument("--write")
    args = p.parse_args()
    path = os.path.join(ROOT, "results.json")
    results = load_results(path)
    if not args.render:
        from sklearn.datasets import load_digits

        from undiffuse.inference import generate as gen
        from undiffuse.metrics.adherence import class_adherence

        run = gen.load_run(prepare(args.train_steps))
        d = load_digits()
        _, held = split()
        x_held = torch.from_numpy(d.images[held] / 16.0 * 2 - 1).float()[:, None]
        labels = d.target[held]

        def read(x01, lab):
            return class_adherence(x01, lab)["adherence"]

        for name, spec in tasks().items():
            if args.only and name not in args.only:
                continue
            results[name] = measure(name, spec, run, x_held, labels, read)
        results["_meta"] = {**results.get("_meta", {}), "date": _dt.date.today().isoformat(), "steps": run.step,
                            "num": len(held)}
        save_results(path, results)
    if args.write:
        write_section(args.write, render(results), START, END)


if __name__ == "__main__":
    main()
