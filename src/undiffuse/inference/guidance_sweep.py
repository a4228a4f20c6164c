"""Guidance scale against adherence and diversity, on a class- or text-conditioned run.

``guidance_sweep`` samples ``num`` images per scale (the count spread evenly over the
classes, in order; text runs are prompted with one caption per class), and scores each
scale: adherence (the digits classifier reads the requested class; 1x8x8 images only),
FD, precision, recall, coverage against the reference, network evaluations (counted) and
wall time. ``guidance_report`` writes ``guidance.json``, two plots (adherence against FD,
the trade-off curve labelled by scale; recall and coverage against scale) and a Markdown
page with a grid per scale.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from undiffuse.inference import generate as gen
from undiffuse.inference.sweep import class_condition, figure, networks, picture, save_figure, score, scored_form
from undiffuse.utils.atomic import write_json, write_text


def guidance_sweep(run, reference: np.ndarray, *, scales=(1.0, 1.5, 2.0, 3.0), num: int = 500, seed: int = 0,
                   interval=None, weak=None, feature_space: str = "auto", progress=None) -> list[dict]:
    """``run``: a ``generate.LoadedRun`` conditioned on classes or text; ``weak``: a run for
    autoguidance (then ``scales`` are autoguidance scales)."""
    if not scales:
        raise ValueError("give at least one guidance scale")
    if not run.class_names:
        raise ValueError("a guidance sweep needs a run trained on labelled data")
    labels = torch.arange(num) * len(run.class_names) // num
    condition = class_condition(run, labels)
    calls = [0]
    hooks = [net.register_forward_hook(lambda m, i, o: calls.__setitem__(0, calls[0] + o.shape[0]))
             for net in networks(run)]
    rows = []
    try:
        for w in scales:
            den = gen.guided(run, guidance=float(w), interval=interval, weak=weak)
            calls[0] = 0
            t0 = time.perf_counter()
            x = scored_form(run, gen.generate(run, num, seed=seed, condition=condition, denoiser=den, batch_size=num))
            secs = time.perf_counter() - t0
            res = score(run, x, reference, labels, feature_space)
            adherence = res.get("adherence")
            nfe = calls[0] / num * (2 if weak is not None and w != 1 else 1)
            rows.append({"guidance": float(w), "adherence": adherence, "nfe": nfe, "seconds": secs, "samples": num,
                         **{k: res[k] for k in ("fd", "precision", "recall", "coverage")},
                         "features": res["protocol"]["features"], "_x": x})
            if progress:
                progress(rows[-1])
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def plot_guidance(rows: list[dict], out: str) -> list[str]:
    """``out/adherence_vs_fd.png`` (when adherence was measured) and ``out/diversity_vs_guidance.png``."""
    paths = []
    if all(r["adherence"] is not None for r in rows):
        fig, ax = figure()
        ax.plot([r["fd"] for r in rows], [r["adherence"] for r in rows], marker="o")
        for r in rows:
            ax.annotate(f"{r['guidance']:g}", (r["fd"], r["adherence"]), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel("Frechet distance")
        ax.set_ylabel("adherence (requested class read)")
        ax.set_title("guidance scale: adherence against FD", fontsize=8)
        paths.append(save_figure(fig, os.path.join(out, "adherence_vs_fd.png")))
    fig, ax = figure()
    for key in ("recall", "coverage", "precision"):
        ax.plot([r["guidance"] for r in rows], [r[key] for r in rows], marker="o", label=key)
    ax.set_xlabel("guidance scale")
    ax.legend(fontsize=8)
    ax.set_title("diversity (recall, coverage) and fidelity (precision)", fontsize=8)
    paths.append(save_figure(fig, os.path.join(out, "diversity_vs_guidance.png")))
    return paths


def guidance_report(rows: list[dict], out: str, *, title: str = "Guidance sweep", run=None) -> str:
    os.makedirs(out, exist_ok=True)
    plots = plot_guidance(rows, out)
    lines = [f"# {title}", "", f"{rows[0]['samples']} samples per scale, spread evenly over the classes; features: "
             f"{rows[0]['features']}.", "",
             "| guidance | adherence | FD | precision | recall | coverage | NFE / image | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        adh = "n/a" if r["adherence"] is None else f"{r['adherence']:.1%}"
        lines.append(f"| {r['guidance']:g} | {adh} | {r['fd']:.4g} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['coverage']:.3f} | {r['nfe']:g} | {r['seconds']:.1f} |")
    lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    for r in rows:
        name = f"grid_guidance_{r['guidance']:g}.png"
        if run is not None and run.kind == "audio":
            picture(run, r["_x"], os.path.join(out, name))
        else:
            gen.save_png(os.path.join(out, name), gen.grid(gen.to_uint8(r["_x"][:100]), nrow=10), scale=4)
        lines += [f"**guidance {r['guidance']:g}**: ![{name}]({name})", ""]
    path = os.path.join(out, "report.md")
    write_text(path, "\n".join(lines))
    write_json(os.path.join(out, "guidance.json"), [{k: v for k, v in r.items() if not k.startswith("_")}
                                                     for r in rows])
    return path
