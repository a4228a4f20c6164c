#!/usr/bin/env python
"""Picked sampling levels of a few-step digits student against its old defaults (issue 24).

    python benchmarks/digits_levels.py --student runs/digits-cm [--num 1797] [--seeds 0 100000]

The student is any run `undiffuse distill` made (its levels picked after training on the
validation noise seeds 900000000.., see ``undiffuse.fewstep.levels``). For 1 and 2 steps it
samples through the real command line, ``undiffuse sample --checkpoint STUDENT --steps N
--format npz`` (the picked levels) and ``--sigmas`` with the old default list of the levels
record (what the run sampled on before), ``--num`` samples from each seed set given (seeds
S..S+num-1, never used by the selection), and scores each with ``metrics.fd_digits`` (against
all 1,797 digits, as the other digits benchmarks). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from undiffuse.inference.generate import load_run
from undiffuse.metrics import fd_digits


def _sample(student: str, args: list[str], seed: int, num: int, path: str) -> tuple[float, str, float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "undiffuse", "sample", "--checkpoint", student, *args, "--seed",
                          str(seed), "--num", str(num), "--format", "npz", "--out", path, "--no-progress"],
                         check=True, capture_output=True, text=True)
    said = next((line for line in res.stderr.splitlines() if " on sigmas " in line), "")
    with np.load(path) as f:
        return fd_digits(f["samples"]), said, round(time.perf_counter() - t0, 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--student", required=True)
    p.add_argument("--num", type=int, default=1797)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 100000])
    args = p.parse_args()
    run = load_run(args.student)
    if run.levels is None:
        raise SystemExit(f"{args.student} has no picked levels (levels.json beside its checkpoint)")
    rec = run.levels
    out = {"student": os.path.abspath(run.checkpoint), "step": run.step, "picked": rec["picked"],
           "default": rec["default"], "selection_seconds": rec["protocol"]["seconds"], "rows": []}
    tmp = tempfile.mkdtemp()
    for steps in ("1", "2"):
        old = rec["default"].get(steps)
        for seed in args.seeds:
            for what, cli in (("picked", ["--steps", steps]),
                              ("default", ["--sigmas", ",".join(repr(v) for v in old)] if old else None)):
                if cli is None:
                    continue
                fd, said, secs = _sample(args.student, cli, seed, args.num, os.path.join(tmp, "s.npz"))
                row = {"steps": int(steps), "levels": what, "seeds": f"{seed}..{seed + args.num - 1}", "fd": fd,
                       "sample_says": said, "seconds": secs}
                out["rows"].append(row)
                print(json.dumps(row), file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
