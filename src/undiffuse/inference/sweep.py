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
import torch

from undiffuse import samplers
from undiffuse import samplers as _samplers
from undiffuse.inference import generate as gen
from undiffuse.io.audio import spectrogram
from undiffuse.metrics.evaluate import evaluate, to_json
from undiffuse.steering.text import caption_table
from undiffuse.utils.atomic import write_json, write_text


def steps_for(sampler: str, nfe: int) -> int:
    """The most steps whose evaluations fit in ``nfe`` (Heun's last step costs one)."""
    info = samplers.info(sampler)
    if sampler == "heun":
        return max(1, (nfe + 1) // 2)
    return max(1, nfe // max(info.evals_per_step, 1))


def sweep(run, reference: np.ndarray, *, samplers=("heun", "dpmpp_2m", "unipc", "euler"), nfes=(5, 10, 20),
          num: int = 500, seed: int = 0, feature_space: str = "auto", progress=None) -> list[dict]:
    """``run``: a ``generate.LoadedRun``; ``reference``: images in [0, 1], waveforms (sound runs)
    or vectors. A class- or text-conditioned run is sampled as its users sample it: the count
    spread evenly over its classes, with its recommended guidance (and its expert, when it has
    one); those rows carry ``adherence`` where the feature space reads classes."""
    unknown = [s for s in samplers if s not in _samplers.names()]
    if unknown:
        raise ValueError(f"unknown sampler(s) {unknown}; allowed: {', '.join(_samplers.names())}")
    if not nfes or min(nfes) < 1:
        raise ValueError(f"NFE budgets must be positive integers, got {list(nfes)}")
    labels, condition, den = asked_classes(run, num)
    calls = [0]
    hooks = [net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for net in networks(run)]
    rows = []
    try:
        for sampler in samplers:
            for nfe in nfes:
                steps = steps_for(sampler, nfe)
                calls[0] = 0
                t0 = time.perf_counter()
                x = gen.generate(run, num, seed=seed, sampler=sampler, steps=steps, batch_size=num,
                                 condition=condition, denoiser=den)
                secs = time.perf_counter() - t0
                used = calls[0]
                x = scored_form(run, x)
                res = score(run, x, reference, labels, feature_space)
                rows.append({"sampler": sampler, "nfe_budget": nfe, "steps": steps, "nfe": used, "seconds": secs,
                             **{k: res[k] for k in ("fd", "kid", "precision", "recall", "copy_rate")},
                             **{k: res[k] for k in ("adherence", "is") if k in res},
                             "features": res["protocol"]["features"], "samples": num, "_x": x})
                if progress:
                    progress(rows[-1])
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def networks(run) -> list:
    """The networks a run's denoiser calls: its own, and its high-noise expert's when joined."""
    den = run.denoiser
    return [den.inner.net, den.high.net] if run.expert is not None else [den.net]


def asked_classes(run, num: int):
    """``(labels, condition, denoiser)`` for sampling ``num`` items of a class- or text-
    conditioned run: the count spread evenly over its classes (in order; text runs are prompted
    with one training caption per class) under its recommended guidance; ``(None, None, None)``
    for other runs (the run's own denoiser, unconditioned)."""
    if run.conditioning not in ("class", "text") or not run.class_names:
        return None, None, None
    labels = torch.arange(num) * len(run.class_names) // num
    return labels, class_condition(run, labels), gen.guided(run, guidance=run.config.sample.guidance)


def class_condition(run, labels: torch.Tensor) -> dict:
    """The conditioning that asks for ``labels``: class labels, or one caption per class."""
    if run.conditioning == "class":
        return {"class_labels": labels}
    if run.conditioning == "text":
        captions, owner = caption_table(run.config.data.name, list(run.class_names))
        first = {}
        for c, k in zip(captions, owner):
            first.setdefault(k, c)
        return gen.prompt_condition(run, [first[k] for k in labels.tolist()])
    raise ValueError(f"asking for classes needs a class- or text-conditioned run; this run's conditioning is "
                     f"{run.conditioning!r}")


def scored_form(run, x: torch.Tensor) -> torch.Tensor:
    """Samples in the form the evaluation reads: images in [0, 1], sound as waveforms."""
    if run.kind == "image":
        return gen.to_unit(x)
    if run.kind == "audio":
        return gen.to_sound(x, run)
    return x


def score(run, x: torch.Tensor, reference: np.ndarray, labels, feature_space: str) -> dict:
    """The evaluation suite on ``x`` (in :func:`scored_form`), with class adherence when the
    requested ``labels`` are classes a built-in reader knows: spoken digits, 1x8x8 digit images."""
    rate = run.audio["sample_rate"] if run.audio else 8000
    readable = (run.kind == "audio" and run.config.data.name.split(":")[0] == "spoken-digits") or \
        tuple(x.shape[1:]) == (1, 8, 8)
    return to_json(evaluate(x.numpy(), reference, feature_space=feature_space, kid_subsets=20,
                            kid_subset_size=min(500, len(x)), sample_rate=rate,
                            labels=labels.numpy() if readable and labels is not None else None))


def picture(run, x: torch.Tensor, path: str) -> str:
    """A grid of the first samples: images, spectrograms of sound, or a scatter of vectors."""
    if run is not None and run.kind == "audio":
        rate = run.audio["sample_rate"]
        gen.save_png(path, gen.grid(np.stack([spectrogram(w, rate) for w in x[:16, 0].numpy()]), nrow=4, pad=2))
    elif x.dim() == 4:
        gen.save_png(path, gen.grid(gen.to_uint8(x[:64])), scale=4)
    else:
        gen.save_png(path, gen.scatter(x.numpy()))
    return path


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


def report(rows: list[dict], out: str, *, title: str = "Sampler sweep", run=None) -> str:
    """Write ``out/report.md`` (table, plots, a grid per point: spectrograms for a sound ``run``)
    and ``out/sweep.json``."""
    os.makedirs(out, exist_ok=True)
    plots = plot(rows, out)
    extra = [k for k in ("adherence", "is") if k in rows[0]]
    lines = [f"# {title}", "", f"{rows[0]['samples']} samples per point; features: {rows[0]['features']}.", "",
             "| sampler | NFE budget | steps | NFE used | seconds | FD | KID | precision | recall | copies |"
             + "".join(f" {k} |" for k in extra),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |" + " --- |" * len(extra)]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['nfe_budget']} | {r['steps']} | {r['nfe']} | {r['seconds']:.2f} | "
                     f"{r['fd']:.4g} | {r['kid']:.4g} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['copy_rate']:.1%} |" + "".join(f" {r[k]:.3f} |" for k in extra))
    lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    for r in rows:
        name = f"grid_{r['sampler']}_{r['nfe_budget']}.png"
        picture(run, r["_x"], os.path.join(out, name))
        lines.append(f"**{r['sampler']}, NFE {r['nfe']}**: ![{name}]({name})")
        lines.append("")
    path = os.path.join(out, "report.md")
    write_text(path, "\n".join(lines))
    write_json(os.path.join(out, "sweep.json"), [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    return path
