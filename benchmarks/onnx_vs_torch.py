#!/usr/bin/env python
"""ONNX Runtime against PyTorch: time per network call, and what int8 quantisation costs.

    OMP_NUM_THREADS=1 python benchmarks/onnx_vs_torch.py [--train-time 120] [--write BENCHMARKS.md]

The ``digits`` preset U-Net, trained for ``--train-time`` seconds into ``runs/bench_onnx/digits``
unless that run exists (call times do not depend on how good the weights are; the quality
comparison needs a model that makes digits). Exported with ``undiffuse.inference.export.export_onnx``
as float32 and as int8 (onnxruntime dynamic quantisation), then:

* time per network call at batch 1 and 64 (random inputs, median of ``--repeats`` calls after
  3 warm-up calls), PyTorch in eval/no-grad mode against onnxruntime's CPU provider, all on one
  thread;
* 1797 samples (the size of the digits set) per network with the run's sampler (heun, 10 steps,
  seeds 0..1796, the same noise everywhere): FD on the digits feature network against the
  1797 digits, and the largest pixel difference from PyTorch's samples.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import subprocess
import sys
import time

import torch
from _sections import load_results, save_results, write_section

START, END = "<!-- onnx-vs-torch:start -->", "<!-- onnx-vs-torch:end -->"
ROOT = "runs/bench_onnx"
RUN = os.path.join(ROOT, "digits")


def _train(seconds: float) -> None:
    if os.path.isfile(os.path.join(RUN, "latest")):
        return
    subprocess.run([sys.executable, "-m", "undiffuse", "train", "--data", "digits", "--time-budget", f"{seconds}s",
                    "--out", RUN, "--no-progress", "--set", "train.tensorboard=false"], check=True)


def _time_calls(fn, batch: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(batch)
    x, label = torch.randn(batch, 1, 8, 8, generator=g), torch.rand(batch, generator=g) * 2 - 1
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            fn(x, label)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-time", type=float, default=120.0)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--num", type=int, default=1797)
    p.add_argument("--write", help="update this Markdown file's section")
    args = p.parse_args()
    torch.set_num_threads(1)
    from undiffuse.config import schedule_of
    from undiffuse.inference import generate as gen
    from undiffuse.inference.export import OnnxNet, export_onnx, load_onnx_denoiser
    from undiffuse.metrics.features import fd_digits

    _train(args.train_time)
    run = gen.load_run(RUN)
    paths = {"fp32": export_onnx(run, os.path.join(ROOT, "model.onnx")),
             "int8": export_onnx(run, os.path.join(ROOT, "model-int8.onnx"), quantize="int8")}
    nets = {"PyTorch (eager, float32)": run.denoiser.net, "onnxruntime float32": OnnxNet(paths["fp32"], threads=1),
            "onnxruntime int8 (dynamic)": OnnxNet(paths["int8"], threads=1)}
    dens = {"PyTorch (eager, float32)": run.denoiser,
            "onnxruntime float32": load_onnx_denoiser(paths["fp32"], threads=1),
            "onnxruntime int8 (dynamic)": load_onnx_denoiser(paths["int8"], threads=1)}
    s = run.config.sample
    results = load_results(os.path.join(ROOT, "results.json"))
    ref = None
    for name, net in nets.items():
        r = {f"ms_b{b}": _time_calls(net, b, args.repeats) for b in (1, 64)}
        t0 = time.perf_counter()
        x = gen.generate(run, args.num, seed=0, denoiser=dens[name])
        r["sample_s"] = time.perf_counter() - t0
        x01 = gen.to_unit(x)
        r["fd"] = fd_digits(x01.numpy())
        ref = x01 if ref is None else ref
        r["max_diff"] = float((x01 - ref).abs().max())
        r["file_kb"] = os.path.getsize(paths["int8" if "int8" in name else "fp32"]) / 1024 if "onnx" in name else None
        results[name] = r
        print(name, r, file=sys.stderr)
    results["_meta"] = {"date": _dt.date.today().isoformat(), "step": run.step, "num": args.num,
                        "sampler": f"{s.sampler} {s.steps} steps ({schedule_of(s)})",
                        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__}
    save_results(os.path.join(ROOT, "results.json"), results)
    text = section(results)
    if args.write:
        write_section(args.write, text, START, END)
    print(text)


def section(results: dict) -> str:
    m = results["_meta"]
    lines = [START, "## ONNX export: onnxruntime against PyTorch per network call, and int8 quality", "",
             f"The `digits` preset U-Net (1.04 M parameters, 8x8; trained {m['step']} steps) exported with "
             "`undiffuse export RUN --format onnx [--quantize int8]` (see benchmarks/onnx_vs_torch.py). Time per "
             "network call on one thread (median of 50 calls); "
             f"{m['num']} samples each with {m['sampler']} from the same noise, scored by FD on the digits feature "
             "network against the 1797 digits.", "",
             "| network | ms / call, batch 1 | ms / call, batch 64 | FD (digits) | max pixel diff vs PyTorch "
             "samples ([0, 1]) | sampling time (s) | file (KiB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        kb = "-" if r["file_kb"] is None else f"{r['file_kb']:.0f}"
        lines.append(f"| {name} | {r['ms_b1']:.2f} | {r['ms_b64']:.1f} | {r['fd']:.3f} | {r['max_diff']:.2e} | "
                     f"{r['sample_s']:.0f} | {kb} |")
    pt, f32, i8 = (results.get(k) for k in ("PyTorch (eager, float32)", "onnxruntime float32",
                                            "onnxruntime int8 (dynamic)"))
    if pt and f32 and i8:
        lines += ["", f"Per call, onnxruntime float32 takes {f32['ms_b1'] / pt['ms_b1']:.2f}x PyTorch's time at "
                  f"batch 1 and {f32['ms_b64'] / pt['ms_b64']:.2f}x at batch 64, with samples equal to "
                  f"{f32['max_diff']:.1e}. Dynamic int8 quantisation does not pay on this network: "
                  f"{i8['ms_b64'] / f32['ms_b64']:.1f}x the float32 session's time at batch 64 (not profiled further) "
                  f"and FD {i8['fd']:.2f} against "
                  f"{f32['fd']:.2f}, for a file {f32['file_kb'] / i8['file_kb']:.1f}x smaller."]
    lines += ["", f"One run, OMP_NUM_THREADS=1 and one onnxruntime thread, on a 2-core machine shared with other "
              f"jobs, {m['date']}; torch {m['torch']}, onnxruntime {m['onnxruntime']}. Reproduce: "
              "`OMP_NUM_THREADS=1 python benchmarks/onnx_vs_torch.py --write BENCHMARKS.md`.", END]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
