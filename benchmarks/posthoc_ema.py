#!/usr/bin/env python
"""FD (and, for text runs, prompt accuracy) against EMA length: what post-hoc EMA (issue 19)
buys over the run's own EMA, on the built-in data with the default commands.

    python benchmarks/posthoc_ema.py --data digits --budget 5m [--lengths 0.02 0.03 ...]
        [--samples 2000] [--threads 2] [--overhead] [--out runs/bench_posthoc] [--write BENCHMARKS.md]

Protocol. One run per dataset, trained by the CLI exactly as a user would, plus
``--ema-posthoc`` (0.05 and 0.10 tracked, about 32 snapshots and one per checkpoint):
``undiffuse train --data D --time-budget B --ema-posthoc --out OUT/D`` (``--data emoji`` adds
``--conditioning text``). With ``--overhead`` the same command without ``--ema-posthoc`` runs
first, so the steps each made in the budget show what tracking costs. Then, in this process,
the run's own EMA and each post-hoc length (``inference.generate.load_run(ema_sigma_rel=S)``,
rebuilt into ``OUT/D/ema``) draw the same samples with the run's own sampler (sample i from
seed i): images ``--samples`` scored by ``metrics.evaluate.evaluate`` against the whole
training set in the data's own feature space (digits: the digits classifier; mnist5k: the
mnist classifier); emoji: the first wordings of 512 training emoji (``default_rng(0)`` picks,
those of ``benchmarks/emoji_t2i.py``) at guidance 3, scored as there (FD in the image-text
scorer's features, prompt_accuracy). A length the snapshots cannot express is reported and
skipped. Results go to ``OUT/results.json`` by dataset, and a Markdown section.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _sections import command, finish, load_results, log, machine, rerun_arguments, save_results

START, END = "<!-- posthoc-ema:start -->", "<!-- posthoc-ema:end -->"
LENGTHS = (0.02, 0.03, 0.05, 0.07, 0.10, 0.15, 0.20, 0.25)
GUIDANCE = 3.0  # emoji: the scale of the emoji benchmarks


def train(args, data: str, run: Path, posthoc: bool) -> dict:
    cmd = [sys.executable, "-m", "undiffuse", "train", "--data", data, "--time-budget", args.budget,
           "--out", str(run), "--no-progress"] + (["--conditioning", "text"] if data == "emoji" else []) \
        + (["--ema-posthoc"] if posthoc else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    log(" ".join(cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    config = json.loads((run / "config.json").read_text())
    steps = int((run / "latest").read_text().strip().split("_")[-1])
    return {"command": " ".join(cmd[2:]), "steps": steps, "wall_s": time.time() - t0, "preset": config["preset"]}


def draw_and_score(run, data: str, n: int, prompts=None, reference=None) -> dict:
    from undiffuse.inference import generate as gen
    from undiffuse.metrics.evaluate import evaluate, load_set

    t0 = time.perf_counter()
    if prompts is not None:
        den = gen.guided(run, guidance=GUIDANCE)
        x = gen.generate(run, len(prompts), seed=0, condition=gen.prompt_condition(run, prompts), denoiser=den,
                         batch_size=128)
        secs = time.perf_counter() - t0
        sys.path.insert(0, str(Path(__file__).parent))
        from emoji_t2i import score

        out = score(gen.to_unit(x).numpy(), prompts, reference, run.weights)
        return {k: out[k] for k in ("fd", "prompt_accuracy", "clip_score", "precision", "recall")} | {"seconds": secs}
    x = gen.generate(run, n, seed=0, batch_size=500)
    secs = time.perf_counter() - t0
    real, _ = load_set(data, what="reference")
    res = evaluate(gen.to_unit(x).numpy(), real, seed=0)
    return {"fd": float(res["fd"]), "precision": float(res["precision"]), "recall": float(res["recall"]),
            "features": res["protocol"]["features"], "seconds": secs}


def measure(args, data: str, out: Path) -> dict:
    from undiffuse.inference import generate as gen
    from undiffuse.inference import posthoc_ema as ph

    torch.set_num_threads(args.threads)
    rec = {"budget": args.budget, "threads": args.threads, "samples": args.samples}
    if args.overhead:
        rec["without_posthoc"] = train(args, data, out / f"{data}_plain", posthoc=False)
    run_dir = out / data
    rec["run"] = train(args, data, run_dir, posthoc=True)
    rec["snapshots"] = len(ph.snapshots(str(run_dir)))
    prompts = reference = None
    if data == "emoji":
        sys.path.insert(0, str(Path(__file__).parent))
        from emoji_t2i import reference01

        from undiffuse import data as _data

        train_set = _data.load("emoji")
        picked = sorted(np.random.default_rng(0).choice(len(train_set), 512, replace=False).tolist())
        prompts, reference = [train_set.captions[i][0] for i in picked], reference01()
    rows = []
    for s in (None, *args.lengths):
        try:
            run = gen.load_run(str(run_dir), ema_sigma_rel=s)
        except ph.PosthocError as e:
            log(f"skipped sigma_rel {s}: {e}")
            rows.append({"sigma_rel": s, "skipped": str(e)})
            continue
        row = {"sigma_rel": s, **draw_and_score(run, data, args.samples, prompts, reference)}
        if s is not None:
            row["residual"] = ph.plan(str(run_dir), s).residual
        log(json.dumps(row))
        rows.append(row)
    rec["rows"] = rows
    return rec


def markdown(results: dict) -> str:
    lines = [START, "## Post-hoc EMA: quality against EMA length (issue 19)", "",
             "Written by `benchmarks/posthoc_ema.py` (its docstring has the protocol). One run per dataset, "
             "trained by `undiffuse train --data D --time-budget B --ema-posthoc` (emoji: `--conditioning text`); "
             "each row draws the same seeds with the run's own sampler. `run's EMA` is the run's ordinary "
             "(half-life) EMA; the others are post-hoc lengths rebuilt from the snapshots (residual: the "
             "relative error of the rebuilt averaging profile).", ""]
    for data, rec in results.items():
        if data.startswith("_"):
            continue
        r = rec["run"]
        what = "512 training prompts at guidance 3" if data == "emoji" else f"{rec['samples']} samples"
        lines += [f"### {data}: `{r['command']}`", "",
                  f"{r['steps']} steps in {rec['budget']} ({rec['threads']} threads), {rec['snapshots']} snapshots; "
                  f"{what}."]
        if "without_posthoc" in rec:
            w = rec["without_posthoc"]
            lines += [f"The same command without `--ema-posthoc` made {w['steps']} steps "
                      f"({r['steps'] / w['steps']:.3f}x with tracking)."]
        text = data == "emoji"
        lines += ["", "| EMA | residual | FD | " + ("prompt_accuracy | " if text else "") + "precision | recall |",
                  "|---|---:|---:|" + ("---:|" if text else "") + "---:|---:|"]
        base = next(x for x in rec["rows"] if x["sigma_rel"] is None)
        for x in rec["rows"]:
            name = "run's EMA" if x["sigma_rel"] is None else f"{x['sigma_rel']:g}"
            if "skipped" in x:
                lines.append(f"| {name} | not expressible | | " + ("| " if text else "") + "| |")
                continue
            res = "" if x["sigma_rel"] is None else f"{x['residual']:.2%}"
            lines.append(f"| {name} | {res} | {x['fd']:.3f} | " + (f"{x['prompt_accuracy']:.3f} | " if text else "")
                         + f"{x['precision']:.3f} | {x['recall']:.3f} |")
        scored = [x for x in rec["rows"] if "skipped" not in x and x["sigma_rel"] is not None]
        best = min(scored, key=lambda x: x["fd"])
        lines += ["", f"Best post-hoc length by FD: {best['sigma_rel']:g}, FD {best['fd']:.3f} against the run's EMA "
                  f"{base['fd']:.3f} ({best['fd'] / base['fd']:.3f}x).", ""]
    lines += [f"Machine: {results.get('_machine', {})}.", END]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=["digits"], choices=("digits", "mnist5k", "emoji"))
    p.add_argument("--budget", default="5m")
    p.add_argument("--lengths", nargs="+", type=float, default=list(LENGTHS))
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overhead", action="store_true")
    p.add_argument("--out", default="runs/bench_posthoc")
    rerun_arguments(p)
    args = p.parse_args(argv)
    out = Path(args.out)
    path = out / "results.json"
    results = load_results(path)
    for data in [] if args.render else args.data:
        if data in results and not args.again:
            log(f"{data}: already measured (--again re-measures)")
            continue
        results[data] = measure(args, data, out)
        results["_machine"], results["_command"] = machine(), command()
        save_results(path, results)
    return finish(args, results, markdown)


if __name__ == "__main__":
    sys.exit(main())
