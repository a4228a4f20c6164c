#!/usr/bin/env python
"""Structure control (issue 19): how closely samples follow a control map, and what it costs
in quality, against the control scale.

    python benchmarks/control.py --base RUN [--control edges] [--budget 10m] [--num 500]
        [--scales 0 0.5 1 1.5 2] [--threads 2] [--out runs/bench_control] [--write BENCHMARKS.md]

Protocol. ``undiffuse train-control --base RUN --control C --time-budget B --out OUT/RUN_C``
trains the adapter (skipped when OUT/RUN_C already holds a finished run). Control images:
``--num`` images of the base's data picked with ``numpy.random.default_rng(0)`` (emoji: the
held-out emoji, ``data.load("emoji:heldout")``, which neither network saw; mnist5k: training
images, as mnist5k has no held-out split), as [0, 1] pixels; the control map is the
extractor's output on each. For every scale the base joined with the adapter
(``inference.control.join``) draws one sample per map (sample i from seed i, the run's own
sampler; text runs: the image's first caption at guidance 3); scale 0 is the base alone with
the same seeds, the floor. With ``--concat-budget T`` a run trained from scratch on the same
data with the map concatenated to its input (``undiffuse train --data D --control C
--time-budget T``; equal CPU time: T = the base's time plus the adapter's) is scored the same
way. Scores: ``control_f1`` / ``sketch_f1`` / ``mask_iou`` /
``control_mae`` against the maps (``metrics.control``), and FD of the samples against the
whole training set in the data's feature space (mnist: the mnist classifier, emoji: the
image-text scorer's image features; all 3,592 training emoji).
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

START, END = "<!-- control:start -->", "<!-- control:end -->"
GUIDANCE = 3.0


def train(args, out: Path, concat: bool = False) -> dict:
    """The adapter (``train-control``), or with ``concat`` the from-scratch run that reads the
    map concatenated (``train --data D --control C`` with the base's data and conditioning)."""
    if (out / "latest").exists():
        log(f"reusing {out}")
        return json.loads((out / "bench_train.json").read_text())
    if concat:
        base = json.loads((Path(args.base) / "config.json").read_text())
        cmd = [sys.executable, "-m", "undiffuse", "train", "--data", base["data"]["name"], "--control", args.control,
               "--time-budget", args.concat_budget, "--out", str(out), "--no-progress"]
        if base["conditioning"]["kind"] != "none":
            cmd += ["--conditioning", base["conditioning"]["kind"]]
    else:
        cmd = [sys.executable, "-m", "undiffuse", "train-control", "--base", args.base, "--control", args.control,
               "--time-budget", args.budget, "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    log(" ".join(cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    rec = {"command": " ".join(cmd[2:]), "steps": int((out / "latest").read_text().strip().split("_")[-1]),
           "wall_s": time.time() - t0}
    (out / "bench_train.json").write_text(json.dumps(rec))
    return rec


def control_set(run, n: int):
    """(images in [0, 1], first captions or None, description) of the control images."""
    from undiffuse import data

    name = run.config.data.name
    if name == "emoji":
        ds, what = data.load("emoji:heldout"), "held-out emoji (never trained on)"
    else:
        ds, what = data.load(name, image_size=run.config.data.image_size, channels=run.config.data.channels), \
            f"{name} training images"
    pick = sorted(np.random.default_rng(0).choice(len(ds), min(n, len(ds)), replace=False).tolist())
    images = ds.to_unit(ds.get(torch.tensor(pick)))
    captions = [ds.captions[i][0] for i in pick] if getattr(ds, "captions", None) is not None else None
    return images, captions, f"{len(pick)} {what}"


def measure(args) -> dict:
    from undiffuse.data import control_maps
    from undiffuse.inference import control as ctl
    from undiffuse.inference import generate as gen
    from undiffuse.metrics.control import control_scores
    from undiffuse.metrics.evaluate import evaluate, load_set

    torch.set_num_threads(args.threads)
    out = Path(args.out) / f"{Path(args.base).name}_{args.control}"
    rec = {"base": args.base, "control": args.control, "budget": args.budget, "train": train(args, out)}
    base = gen.load_run(args.base)
    images, captions, what = control_set(base, args.num)
    maps = control_maps.extract(args.control, images)
    channels = [args.control] * maps.shape[1]
    text = captions is not None and base.conditioning == "text"
    if base.config.data.name == "emoji":
        sys.path.insert(0, str(Path(__file__).parent))
        from emoji_t2i import reference01

        reference, space = reference01(), "emoji"
    else:
        reference, space = load_set(base.config.data.name, what="reference")[0], "auto"
    rec.update(images=what, rows=[])
    points = [(scale, lambda s=scale: ctl.join(gen.load_run(args.base), [str(out)], [s])) for scale in args.scales]
    if args.concat_budget:
        concat = Path(args.out) / f"{Path(args.base).name}_{args.control}_concat"
        rec["concat"] = train(args, concat, concat=True)
        points.append(("concat", lambda: gen.load_run(str(concat))))
    for scale, load in points:
        run = load()
        cond = ctl.condition(run, maps)
        den = None
        if text:
            cond.update(gen.prompt_condition(run, captions))
            den = gen.guided(run, guidance=GUIDANCE)
        t0 = time.perf_counter()
        x = gen.to_unit(gen.generate(run, len(maps), seed=0, condition=cond, denoiser=den, batch_size=128))
        secs = time.perf_counter() - t0
        scores = control_scores(x.numpy(), maps.numpy(), channels)
        res = evaluate(x.numpy(), reference, feature_space=space, seed=0)
        row = {"scale": scale, **scores, "fd": float(res["fd"]), "precision": float(res["precision"]),
               "recall": float(res["recall"]), "features": res["protocol"]["features"], "seconds": secs}
        log(json.dumps(row))
        rec["rows"].append(row)
        spread = slice(None, None, max(1, len(x) // 64))  # 64 kept, spread over the (sorted) picks
        np.savez_compressed(out / f"samples_{scale}.npz", samples=x[spread][:64].numpy(),
                            controls=maps[spread][:64].numpy())
    return rec


def picture(args) -> Path | None:
    """``OUT/BASE_CONTROL/grid.png``: 16 control maps (every 4th of the 64 saved), then the
    samples of every scored point (one row each, in the order scored)."""
    from undiffuse.io.images import grid, save_png, to_uint8

    out = Path(args.out) / f"{Path(args.base).name}_{args.control}"
    files = sorted(out.glob("samples_*.npz"), key=lambda f: (f.stem == "samples_concat", f.stem))
    if not files:
        return None
    rows = []
    for i, f in enumerate(files):
        with np.load(f) as z:
            if i == 0:
                maps = torch.from_numpy(z["controls"][::4][:16])
                rows.append(maps.expand(-1, z["samples"].shape[1], -1, -1) if maps.shape[1] == 1 else maps)
            rows.append(torch.from_numpy(z["samples"][::4][:16]))
    path = out / "grid.png"
    save_png(str(path), grid(to_uint8(torch.cat(rows)), nrow=16), scale=3)
    log(f"rows: control maps, then {', '.join(f.stem[len('samples_'):] for f in files)}; {path}")
    return path


def markdown(results: dict) -> str:
    lines = [START, "## Structure control: adherence and quality against the control scale (issue 19)", "",
             "Written by `benchmarks/control.py` (its docstring has the protocol): one adapter per row group, "
             "trained by `undiffuse train-control` on a frozen run; scale 0 is the base alone on the same seeds "
             "(the floor).", ""]
    for key, rec in results.items():
        if key.startswith("_"):
            continue
        t = rec["train"]
        scores = [k for k in ("control_f1", "control_f1_exact", "sketch_f1", "mask_iou", "control_mae")
                  if k in rec["rows"][0]]
        lines += [f"### `{t['command']}`", "", f"{t['steps']} adapter steps; control images: {rec['images']}; "
                  f"features: {rec['rows'][0]['features']}.", "",
                  f"| scale | {' | '.join(scores)} | FD | precision | recall |",
                  "|---:|" + "---:|" * (len(scores) + 3)]
        for r in rec["rows"]:
            name = f"{r['scale']:g}" if r["scale"] != "concat" else "from scratch, map concatenated"
            lines.append(f"| {name} | {' | '.join(f'{r[k]:.3f}' for k in scores)} | {r['fd']:.3f} | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} |")
        if "concat" in rec:
            c = rec["concat"]
            lines += ["", f"From scratch: `{c['command']}`, {c['steps']} steps."]
        lines.append("")
    lines += [f"Machine: {results.get('_machine', {})}.", END]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--control", default="edges")
    p.add_argument("--budget", default="10m")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--scales", nargs="+", type=float, default=[0.0, 0.5, 1.0, 1.5, 2.0])
    p.add_argument("--concat-budget", help="also train and score a run that reads the map concatenated, for this "
                   "long (equal CPU time: the base's training time plus --budget)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/bench_control")
    rerun_arguments(p)
    args = p.parse_args(argv)
    path = Path(args.out) / "results.json"
    results = load_results(path)
    key = f"{Path(args.base).name}_{args.control}"
    if not args.render and (key not in results or args.again):
        results[key] = measure(args)
        results["_machine"], results["_command"] = machine(), command()
        save_results(path, results)
    picture(args)
    return finish(args, results, markdown)


if __name__ == "__main__":
    sys.exit(main())
