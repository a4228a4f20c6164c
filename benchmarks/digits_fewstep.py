#!/usr/bin/env python
"""Few network evaluations on a trained model: calibrated sampling against fixed schedules.

    python benchmarks/digits_fewstep.py [--run runs/bench_digits/undiffuse_run] [--nfe 5 10]
                                        [--threads 2] [--write BENCHMARKS.md]

On a trained digits run (by default the one ``benchmarks/train_digits.py`` leaves behind, the
``digits`` preset after 300 s), for each budget of NFE network evaluations per sample:

* ``calibrated``: ``undiffuse.fewstep.calibrate`` fits step positions, multistep weights and noise-level
  shifts against an accurate DOP853 solve of the model's own probability-flow ODE on 64 noises
  (seeds 500000+), validated on 64 others; its fitting time is reported;
* the fixed-schedule samplers at the same NFE (Karras schedule): DPM-Solver++ 2M and 3M,
  UniPC, iPNDM, and Heun with (NFE + 1) // 2 steps (Heun's last step is a single evaluation,
  so it uses 2 * steps - 1; the NFE column is counted, not assumed);

each scored by ``metrics.fd_digits`` on 1,797 samples from seeds 0..1796 (the same starting
noise for every method), plus the run's recommended sampler (Heun, 10 steps) as the reference.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

import torch
from _sections import write_section

START, END = "<!-- digits-fewstep:start -->", "<!-- digits-fewstep:end -->"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default="runs/bench_digits/undiffuse_run")
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    p.add_argument("--num", type=int, default=1797)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=100)  # the CLI default
    p.add_argument("--write")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from undiffuse.core.noise import noise
    from undiffuse.fewstep.calibrate import calibrate
    from undiffuse.inference import generate as gen
    from undiffuse.metrics import fd_digits
    from undiffuse.samplers.driver import sample

    run = gen.load_run(args.run)
    den = run.denoiser
    calls = [0]
    den.net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    z = noise((args.num, *run.shape), seed=list(range(args.num)))

    def score(**kw) -> dict:
        calls[0] = 0
        t0 = time.perf_counter()
        x = sample(den, z, **kw)
        secs = time.perf_counter() - t0
        return {"fd": fd_digits(((x + 1) / 2).clamp(0, 1).numpy()), "nfe": calls[0], "seconds": secs}

    rows = []
    ref = score(sampler="heun", steps=10)
    rows.append({"nfe_budget": None, "method": "heun, 10 steps (the run's sampler)", **ref})
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for n in args.nfe:
        t0 = time.perf_counter()
        cal = calibrate(den, run.shape, n, train_size=64, val_size=64, seed=500_000, iters=args.iters,
                        reference_rtol=1e-5)
        fit = time.perf_counter() - t0
        rows.append({"nfe_budget": n, "method": "calibrated", "fit_seconds": fit, "val_rmse": cal.val_rmse,
                     **score(**cal.sample_kwargs())})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for sampler in ("dpmpp_2m", "dpmpp_3m", "unipc", "ipndm"):
            rows.append({"nfe_budget": n, "method": f"{sampler}, karras", **score(sampler=sampler, steps=n)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        rows.append({"nfe_budget": n, "method": f"heun, {(n + 1) // 2} steps, karras",
                     **score(sampler="heun", steps=(n + 1) // 2)})
    diffusers = None
    res_path = Path(args.run).parent / "results.json"
    if res_path.exists():
        try:
            ev = json.loads(res_path.read_text())["recipes"]["diffusers"]["evaluations"][-1]
            diffusers = {"fd": ev["fd"], "nfe": ev["nfe"], "at": ev.get("at")}
        except (KeyError, IndexError, TypeError):
            diffusers = None
    out = {"date": _dt.date.today().isoformat(), "run": args.run, "step": run.step, "num": args.num,
           "threads": args.threads, "rows": rows, "diffusers_same_benchmark": diffusers}
    print(json.dumps(out, indent=1))
    if args.write:
        lines = [START, "## Few evaluations on the trained digits model: calibrated vs fixed schedules", "",
                 f"Produced on {out['date']} by `python benchmarks/digits_fewstep.py {' '.join(sys.argv[1:])}` on "
                 f"`{args.run}` (step {run.step}); {args.threads} threads, {os.cpu_count()} CPUs. FD: "
                 f"`metrics.fd_digits` of {args.num} samples from the same starting noises for every method; NFE "
                 "counted with a forward hook. The calibration fits on 64 noises and validates on 64 others "
                 "(none of them the scored ones).", "",
                 "| NFE budget | method | NFE used | FD | sampling s | calibration fit s |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            fit = f"{r['fit_seconds']:.0f}" if "fit_seconds" in r else ""
            lines.append(f"| {r['nfe_budget'] or '-'} | {r['method']} | {r['nfe']} | {r['fd']:.3f} | "
                         f"{r['seconds']:.1f} | {fit} |")
        if diffusers:
            lines += ["", f"For scale: the diffusers recipe after 12 minutes of training scored FD {diffusers['fd']:.2f} "
                      f"with {diffusers['nfe']:g} evaluations in the training benchmark above."]
        lines += ["", END]
        write_section(args.write, "\n".join(lines), START, END)


if __name__ == "__main__":
    main()
