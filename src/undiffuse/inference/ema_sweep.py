"""Quality against EMA length: score a run with its own EMA and with post-hoc EMAs of several
relative lengths (``posthoc_ema``), at each guidance scale (class- and text-conditioned runs,
through ``guidance_sweep``) or with each sampler and NFE budget (through ``sweep``).

``ema_report`` writes ``ema.json``, a plot of FD against ``sigma_rel`` (one line per guidance
scale or sampler point, the run's own EMA dashed) and a Markdown page with a grid per point.
"""
from __future__ import annotations

import os

import numpy as np

from undiffuse import samplers
from undiffuse.inference import generate as gen
from undiffuse.inference.guidance_sweep import guidance_sweep
from undiffuse.inference.sweep import figure, save_figure, sweep
from undiffuse.utils.atomic import write_json, write_text


def nfe_of(sampler: str, steps: int) -> int:
    """Network evaluations of ``steps`` steps (Heun's last step makes one)."""
    if sampler == "heun":
        return 2 * steps - 1
    return steps * max(samplers.info(sampler).evals_per_step, 1)


def ema_sweep(path: str, reference: np.ndarray, *, sigma_rels, guidance=None, sampler_names=None, nfes=None,
              num: int = 500, seed: int = 0, feature_space: str = "auto", device: str = "cpu",
              progress=None) -> list[dict]:
    """Rows for the run's own EMA (``sigma_rel`` None) and each post-hoc length. Conditioned
    runs: one row per ``guidance`` scale (default 1); otherwise per sampler and NFE budget
    (default: the run's own sampler and steps)."""
    if not sigma_rels:
        raise ValueError("give at least one EMA length (sigma_rel)")
    rows = []
    for s in (None, *sigma_rels):
        run = gen.load_run(path, device=device, ema_sigma_rel=s)
        if run.conditioning in ("class", "text"):
            points = guidance_sweep(run, reference, scales=guidance or [1.0], num=num, seed=seed,
                                    feature_space=feature_space)
        elif guidance:
            raise ValueError(f"--guidance needs a class- or text-conditioned run; this run's conditioning is "
                             f"{run.conditioning!r}")
        else:
            smp = run.config.sample
            points = sweep(run, reference, samplers=sampler_names or [smp.sampler],
                           nfes=nfes or [nfe_of(smp.sampler, smp.steps)], num=num, seed=seed,
                           feature_space=feature_space)
        for r in points:
            r.update(sigma_rel=s, weights=run.weights)
            rows.append(r)
            if progress:
                progress(r)
    return rows


def _point(r: dict) -> str:
    """What a row varies besides the EMA: its guidance scale, or its sampler and NFE."""
    return f"guidance {r['guidance']:g}" if "guidance" in r else f"{r['sampler']} NFE {r['nfe_budget']}"


def _ema(r: dict) -> str:
    return "run's EMA" if r["sigma_rel"] is None else f"{r['sigma_rel']:g}"


def plot_ema(rows: list[dict], out: str) -> str:
    """``out/fd_vs_ema.png``: FD against sigma_rel per point, the run's own EMA dashed."""
    fig, ax = figure()
    for k, point in enumerate(dict.fromkeys(_point(r) for r in rows)):
        mine = [r for r in rows if _point(r) == point]
        pts = sorted((r["sigma_rel"], r["fd"]) for r in mine if r["sigma_rel"] is not None)
        line = ax.plot(*zip(*pts), marker="o", label=point)[0]
        for r in mine:
            if r["sigma_rel"] is None:
                ax.axhline(r["fd"], color=line.get_color(), linestyle="--", linewidth=1,
                           label=f"{point}, run's EMA" if k == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("post-hoc EMA length (sigma_rel)")
    ax.set_ylabel("Frechet distance")
    ax.set_title("FD against EMA length (dashed: the run's own EMA)", fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(fig, os.path.join(out, "fd_vs_ema.png"))


def ema_report(rows: list[dict], out: str, *, title: str = "EMA length sweep") -> str:
    """Write ``out/report.md`` (table, plot, a grid per point) and ``out/ema.json``."""
    os.makedirs(out, exist_ok=True)
    plot = plot_ema(rows, out)
    lines = [f"# {title}", "", f"{rows[0]['samples']} samples per point; features: {rows[0]['features']}.", "",
             "| EMA (sigma_rel) | point | FD | precision | recall | seconds |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {_ema(r)} | {_point(r)} | {r['fd']:.4g} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['seconds']:.1f} |")
    lines += ["", f"![fd_vs_ema.png]({os.path.basename(plot)})", ""]
    for r in rows:
        tag = "run" if r["sigma_rel"] is None else f"{r['sigma_rel']:g}"
        name = f"grid_ema_{tag}_{_point(r).replace(' ', '_')}.png"
        x = r["_x"]
        if x.dim() == 4:
            gen.save_png(os.path.join(out, name), gen.grid(gen.to_uint8(x[:64])), scale=4)
        else:
            gen.save_png(os.path.join(out, name), gen.scatter(x.numpy()))
        lines += [f"**EMA {_ema(r)}, {_point(r)}**: ![{name}]({name})", ""]
    path = os.path.join(out, "report.md")
    write_text(path, "\n".join(lines))
    write_json(os.path.join(out, "ema.json"), [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    return path
