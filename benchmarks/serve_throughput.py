#!/usr/bin/env python
"""Server throughput: request batching against one request at a time.

    OMP_NUM_THREADS=1 python benchmarks/serve_throughput.py [--requests 64] [--repeats 3] [--write BENCHMARKS.md]

One model, the ``digits`` preset's U-Net (its default sampler and steps; weights from a short
training run in ``runs/bench_serve/models/digits`` unless it exists: throughput does not
depend on how good they are), served by a real uvicorn on a loopback port, three ways:

* ``sequential``: the client sends one request, waits for it, sends the next (no batching
  possible; batch window 0 so nothing waits);
* ``concurrent, batching off``: all requests at once, the server samples them one request
  per network batch (``max_batch`` 1, window 0);
* ``concurrent, batching on``: all requests at once, compatible requests merged (window 20 ms,
  up to 64 images a batch; the server's defaults).

Each request asks for one image with its own seed. Images/s is requests / wall time of the
whole set; the median over ``--repeats`` runs is reported, with the network calls per image.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from _sections import table_section, write_section

START, END = "<!-- serve-throughput:start -->", "<!-- serve-throughput:end -->"
MODELS = "runs/bench_serve/models"


def _post(url: str, body: dict) -> bytes:
    req = urllib.request.Request(url + "/v1/generate", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        assert r.status == 200
        return r.read()


def measure(models: str, n: int, *, concurrent: bool, window: float, max_batch: int) -> dict:
    from undiffuse.serve import create_app
    from undiffuse.serve.background import BackgroundServer

    app = create_app(models, window=window, max_batch=max_batch)
    state = app.state.server
    net = state.registry.get("digits").denoiser.net
    calls = [0]
    net.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    bodies = [{"model": "digits", "seed": 1000 + k} for k in range(n)]
    with BackgroundServer(app) as srv:
        _post(srv.url, {"model": "digits", "seed": 0})  # warm-up (first-call allocations)
        calls[0], batches0 = 0, state.batcher.batches
        t0 = time.perf_counter()
        if concurrent:
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(lambda b: _post(srv.url, b), bodies))
        else:
            for b in bodies:
                _post(srv.url, b)
        secs = time.perf_counter() - t0
    return {"images_per_s": n / secs, "seconds": secs, "network_calls": calls[0],
            "batches": state.batcher.batches - batches0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--write", metavar="BENCHMARKS.md")
    args = p.parse_args()
    if not os.path.isdir(os.path.join(MODELS, "digits")):
        subprocess.run([sys.executable, "-m", "undiffuse", "train", "--data", "digits", "--max-steps",
                        str(args.train_steps), "--out", os.path.join(MODELS, "digits"), "--sample-every", "0",
                        "--set", "train.sample_count=4", "--set", "train.tensorboard=false", "--no-progress"],
                       check=True)
    from undiffuse.inference import generate as gen

    run = gen.load_run(os.path.join(MODELS, "digits"))
    params = sum(v.numel() for v in run.denoiser.net.parameters())
    ways = {"sequential (one request at a time)": dict(concurrent=False, window=0.0, max_batch=1),
            "concurrent, batching off": dict(concurrent=True, window=0.0, max_batch=1),
            "concurrent, batching on": dict(concurrent=True, window=0.02, max_batch=64)}
    results = {}
    for name, kw in ways.items():
        runs = [measure(MODELS, args.requests, **kw) for _ in range(args.repeats)]
        rates = [r["images_per_s"] for r in runs]
        results[name] = {"images_per_s": statistics.median(rates), "all": rates,
                         "calls_per_image": statistics.median(r["network_calls"] for r in runs) / args.requests,
                         "batches": statistics.median(r["batches"] for r in runs)}
        print(name, json.dumps(results[name]), flush=True)
    base = results["concurrent, batching off"]["images_per_s"]
    on = results["concurrent, batching on"]["images_per_s"]
    results["_meta"] = {"notes": (
        f"Batching on / off: {on / base:.2f}x. Model: the `digits` preset U-Net ({params / 1e6:.2f} M parameters, "
        f"8x8), sampler {run.config.sample.sampler} {run.config.sample.steps} steps, {args.requests} one-image "
        f"requests, median of {args.repeats} runs (all runs listed), OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, a 2-core machine shared with other jobs, "
        f"{_dt.date.today().isoformat()}. Client and server run in one process (the client threads share the "
        f"CPU). Reproduce: `OMP_NUM_THREADS=1 python benchmarks/serve_throughput.py --write BENCHMARKS.md`.")}
    section = table_section(
        START, END, "## Serving throughput: request batching",
        "`undiffuse serve` on a loopback port, one model, one-image requests (see benchmarks/serve_throughput.py).",
        ["way", "images/s (median)", "all runs", "network calls / image", "network batches"], results,
        lambda r: [f"{r['images_per_s']:.1f}", ", ".join(f"{v:.1f}" for v in r["all"]),
                   f"{r['calls_per_image']:.2f}", f"{r['batches']:.0f}"])
    print(section)
    if args.write:
        write_section(args.write, section, START, END)


if __name__ == "__main__":
    main()
