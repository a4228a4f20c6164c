#!/usr/bin/env python
"""Conditional digits: does guidance make samples the requested class, and what does it cost?

    python benchmarks/digits_guidance.py [--run RUN] [--train-steps 1300] [--num 1000]
                                         [--only ROW ...] [--render] [--write BENCHMARKS.md]

Trains a class-conditional digits model (the ``digits`` preset with ``--conditioning class``,
condition dropout 0.1, 1,300 steps, checkpoints kept every 100 steps for autoguidance) unless ``--run``
names one, then for each row samples ``--num`` images (the count spread evenly over the ten
classes, seeds 0..num-1, the run's sampler: Heun, 10 steps) and measures:

* adherence: share read as the requested class by the in-project digits classifier
  (98-99% on real held-out digits, which bounds what can be seen);
* FD, precision, recall, coverage against the 1,797 digits in the digits feature space
  (recall and coverage fall when guidance trades diversity for adherence);
* network evaluations per image and wall time.

Rows: classifier-free guidance scales, a guidance interval, autoguidance with an early
checkpoint of the same run as the weak model, classifier guidance of the unconditional
branch (needs ``--classifier DIR``), and text prompts (needs ``--text-run RUN``).
Results merge into ``runs/bench_guidance/results.json``; ``--render`` rewrites the section.
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

START, END = "<!-- digits-guidance:start -->", "<!-- digits-guidance:end -->"
ROOT = "runs/bench_guidance"

CFG_SCALES = (0.0, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0)


def rows(args) -> dict[str, dict]:
    out = {f"cfg {w:g}": {"guidance": w} for w in CFG_SCALES}
    out["cfg 3, interval [0.2, 3]"] = {"guidance": 3.0, "interval": (0.2, 3.0)}
    out["cfg 6, interval [0.2, 3]"] = {"guidance": 6.0, "interval": (0.2, 3.0)}
    out["cfg 3, interval [1, 80] (high noise only)"] = {"guidance": 3.0, "interval": (1.0, 80.0)}
    out["cfg 3, interval [0, 1] (low noise only)"] = {"guidance": 3.0, "interval": (0.0, 1.0)}
    out["autoguidance 2 (weak: early checkpoint)"] = {"guidance": 2.0, "weak": "early"}
    out["autoguidance 3 (weak: early checkpoint)"] = {"guidance": 3.0, "weak": "early"}
    if args.classifier:
        for w in (1.0, 3.0):
            out[f"classifier {w:g} (unconditional branch)"] = {"classifier_scale": w, "unconditional": True}
            out[f"classifier {w:g} + cfg 2"] = {"classifier_scale": w, "guidance": 2.0}
    if args.text_run:
        for w in (1.0, 2.0, 3.0, 4.0):
            out[f"text prompt, cfg {w:g}"] = {"text": True, "guidance": w}
    return out


def train(run: str, steps: int) -> None:
    cmd = [sys.executable, "-m", "undiffuse", "train", "--data", "digits", "--conditioning", "class",
           "--max-steps", str(steps), "--out", run, "--checkpoint-every", "100", "--keep", "1000",
           "--no-progress"]
    subprocess.run(cmd, check=True)


def early_checkpoint(run: str) -> str:
    """The checkpoint nearest a quarter of the final step (the autoguidance weak model)."""
    folder = os.path.join(run, "checkpoints")
    steps = sorted(int(n.split("_")[1]) for n in os.listdir(folder) if n.startswith("step_"))
    target = steps[-1] / 4
    best = min(steps, key=lambda s: abs(s - target))
    return os.path.join(folder, f"step_{best:08d}")


PROMPTS = ("a handwritten {word}", "the digit {num}")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def measure(name: str, spec: dict, args, run, real: np.ndarray) -> dict:
    from undiffuse.inference import generate as gen
    from undiffuse.metrics.adherence import class_adherence
    from undiffuse.metrics.evaluate import evaluate

    num = args.num
    labels = torch.arange(num) * 10 // num
    target = run
    condition = {"class_labels": labels}
    weak = classifier = None
    if spec.get("text"):
        target = gen.load_run(args.text_run)
        prompts = [PROMPTS[i % 2].format(word=WORDS[k], num=k) for i, k in enumerate(labels.tolist())]
        condition = gen.prompt_condition(target, prompts)
    if spec.get("weak") == "early":
        weak = gen.load_run(early_checkpoint(args.run))
    if spec.get("classifier_scale"):
        from undiffuse.training.classifier import load_classifier

        classifier = load_classifier(args.classifier)
    guidance = spec.get("guidance", 1.0)
    den = gen.guided(target, guidance=guidance, interval=spec.get("interval"), weak=weak, classifier=classifier,
                     classifier_scale=spec.get("classifier_scale", 0.0))
    if spec.get("unconditional"):  # classifier guidance alone: the class only reaches the classifier
        from undiffuse.steering.guidance import ClassifierGuidance

        base = gen.guided(target, guidance=0.0)  # the null class
        den = ClassifierGuidance(base, classifier.log_prob, spec["classifier_scale"])
    calls = [0]
    net = target.denoiser.net
    hook = net.register_forward_hook(lambda m, i, o: calls.__setitem__(0, calls[0] + o.shape[0]))
    t0 = time.perf_counter()
    x = gen.generate(target, num, seed=0, condition=condition, denoiser=den, batch_size=500)
    seconds = time.perf_counter() - t0
    hook.remove()
    x01 = gen.to_unit(x).numpy()
    adh = class_adherence(x01, labels.numpy())
    ev = evaluate(x01, real, kid_subsets=20, kid_subset_size=500, reference_name="digits")
    nfe = calls[0] / num  # rows through the main network (CFG's two branches count twice)
    if weak is not None:
        nfe *= 2  # plus one weak-model row per main-model row
    row = {"adherence": adh["adherence"], "worst_class": min(adh["per_class"].values()),
           "fd": ev["fd"], "precision": ev["precision"], "recall": ev["recall"], "coverage": ev["coverage"],
           "nfe": round(nfe, 1), "seconds": round(seconds, 1)}
    print(f"{name}: {json.dumps(row)}", flush=True)
    return row


def render(results: dict) -> str:
    meta = results.get("_meta", {})
    intro = (f"`python benchmarks/digits_guidance.py` ({meta.get('date', '?')}; model: digits preset with "
             f"`--conditioning class`, {meta.get('steps', '?')} steps (the preset's 5-minute budget unloaded); "
             f"{meta.get('num', '?')} samples per row spread evenly over the 10 classes, seeds 0..N-1, Heun 10 "
             "steps; adherence read by the in-project digits classifier; FD / precision / recall / coverage "
             "against the 1,797 digits in its feature space).")
    header = ["row", "adherence", "worst class", "FD", "precision", "recall", "coverage", "NFE / image", "time (s)"]
    return table_section(START, END, "## Class-conditional digits: guidance, adherence and diversity (issue 5)",
                         intro, header, results,
                         lambda r: [f"{r['adherence']:.1%}", f"{r['worst_class']:.1%}", f"{r['fd']:.3g}",
                                    f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['coverage']:.3f}",
                                    f"{r['nfe']:g}", f"{r['seconds']:.1f}"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default=os.path.join(ROOT, "class"))
    p.add_argument("--train-steps", type=int, default=1300, help="training steps when training (1,300 = the "
                   "digits preset's 5-minute budget on this CPU unloaded; steps, not time, so load does not matter)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--only", nargs="*")
    p.add_argument("--classifier")
    p.add_argument("--text-run")
    p.add_argument("--render", action="store_true")
    p.add_argument("--write")
    args = p.parse_args()
    path = os.path.join(ROOT, "results.json")
    results = load_results(path)
    if not args.render:
        if not os.path.isdir(os.path.join(args.run, "checkpoints")):
            train(args.run, args.train_steps)
        from undiffuse.data import load
        from undiffuse.inference import generate as gen

        run = gen.load_run(args.run)
        digits = load("digits")
        real = digits.to_unit(digits.get(torch.arange(len(digits)))).numpy()
        for name, spec in rows(args).items():
            if args.only and name not in args.only:
                continue
            results[name] = measure(name, spec, args, run, real)
        results["_meta"] = {**results.get("_meta", {}), "date": _dt.date.today().isoformat(), "steps": run.step,
                            "num": args.num}
        save_results(path, results)
    if args.write:
        write_section(args.write, render(results), START, END)


if __name__ == "__main__":
    main()
