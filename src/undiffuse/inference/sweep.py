"""Quality against cost: sweep samplers and network-evaluation budgets on a trained run,
score every point with the evaluation suite, and draw it.

``sweep`` returns one row per (sampler, NFE budget): the steps used, the network evaluations
actually made (counted with a forward hook), the wall time, and the suite's scores against
the reference. ``plot`` draws FD against NFE and against wall time (matplotlib, PNG);
``report`` writes a Markdown page with the table, the plots and a sample grid per point.
"""
from __future__ import annotations

import os
import time

import numpy as np

from undiffuse import samplers
from undiffuse import samplers as _samplers
from undiffuse.inference import generate as gen
from undiffuse.metrics.evaluate import evaluate, to_json
from undiffuse.utils.atomic import write_json, write_text


def steps_for(sampler: str, nfe: int) -> int:
    """The most steps whose evaluations fit in ``nfe`` (Heun's last step costs one)."""
    info = samplers.info(sampler)
    if sampler == "heun":
        return max(1, (nfe + 1) // 2)
    return max(1, nfe // max(info.evals_per_step, 1))


def sweep(run, reference: np.ndarray, *, samplers=("heun", "dpmpp_2m", "unipc", "euler"), nfes=(5, 10, 20),
          num: int = 500, seed: int = 0, feature_space: str = "auto", progress=None) -> list[dict]:
    """``run``: a ``generate.LoadedRun``; ``reference``: images in [0, 1] or vectors."""
    unknown = [s for s in samplers if s not in _samplers.names()]
    if unknown:
        raise ValueError(f"unknown sampler(s) {unknown}; allowed: {', '.join(_samplers.names())}")
    if not nfes or min(nfes) < 1:
        raise ValueError(f"NFE budgets must be positive integers, got {list(nfes)}")
    calls = [0]
    hook = run.denoiser.net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    rows = []
    try:
        for sampler in samplers:
            for nfe in nfes:
                steps = steps_for(sampler, nfe)
                calls[0] = 0
                t0 = time.perf_counter()
                x = gen.generate(run, num, seed=seed, sampler=sampler, steps=steps, batch_size=num)
                secs = time.perf_counter() - t0
                used = calls[0]
                x = gen.to_unit(x) if run.kind == "image" else x
                res = to_json(evaluate(x.numpy(), reference, feature_space=feature_space,
                                       kid_subsets=20, kid_subset_size=min(500, num)))
                rows.append({"sampler": sampler, "nfe_budget": nfe, "steps": steps, "nfe": used, "seconds": secs,
                             **{k: res[k] for k in ("fd", "kid", "precision", "recall", "copy_rate")},
                             "features": res["protocol"]["features"], "samples": num, "_x": x})
                if progress:
                    progress(rows[-1])
    finally:
        hook.remove()
    return rows


def plot(rows: list[dict], out: str) -> list[str]:
    """``out/fd_vs_nfe.png`` and ``out/fd_vs_seconds.png``."""
    paths = []
    for xkey, xlabel, name in (("nfe", "network evaluations per sample", "fd_vs_nfe.png"),
                               ("seconds", f"wall seconds for {rows[0]['samples']} samples", "fd_vs_seconds.png")):
        fig, ax = figure()
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            pts = sorted((r[xkey], r["fd"]) for r in rows if r["sampler"] == sampler)
            ax.plot(*zip(*pts), marker="o", label=sampler)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Frechet distance")
        ax.set_title(f"FD ({rows[0]['features']})", fontsize=8)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, os.path.join(out, name)))
    return paths


def figure():
    """A (figure, axes) pair of the sweep plots' size, drawn off-screen (matplotlib, imported
    here: slow to import and only plots need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5, 3.5), dpi=100)


def save_figure(fig, path: str) -> str:
    """Lay out, write and close ``fig``; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report(rows: list[dict], out: str, *, title: str = "Sampler sweep") -> str:
    """Write ``out/report.md`` (table, plots, a grid per point) and ``out/sweep.json``."""
    os.makedirs(out, exist_ok=True)
    plots = plot(rows, out)
    lines = [f"# {title}", "", f"{rows[0]['samples']} samples per point; features: {rows[0]['features']}.", "",
             "| sampler | NFE budget | steps | NFE used | seconds | FD | KID | precision | recall | copies |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['nfe_budget']} | {r['steps']} | {r['nfe']} | {r['seconds']:.2f} | "
                     f"{r['fd']:.4g} | {r['kid']:.4g} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['copy_rate']:.1%} |")
    lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    for r in rows:
        x = r["_x"]
        name = f"grid_{r['sampler']}_{r['nfe_budget']}.png"
        if x.dim() == 4:
            gen.save_png(os.path.join(out, name), gen.grid(gen.to_uint8(x[:64])), scale=4)
        else:
            gen.save_png(os.path.join(out, name), gen.scatter(x.numpy()))
        lines.append(f"**{r['sampler']}, NFE {r['nfe']}**: ![{name}]({name})")
        lines.append("")
    path = os.path.join(out, "report.md")
    write_text(path, "\n".join(lines))
    write_json(os.path.join(out, "sweep.json"), [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    return path
