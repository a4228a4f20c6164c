"""Pick a few-step student's 1- and 2-step noise levels by sampling a validation batch.

With one or two steps, where the steps go matters as much as the weights: a digits
consistency student scored FD 1.38 at 1 step from sigma 80 (its default), 0.88 from sigma 8,
0.97 from 16 and 1.09 from 4 (issue 24). So right after distillation the student samples a
small grid of candidate level lists from fixed noise, scores each against real images, and
keeps the best per step count beside its checkpoint (``io.checkpoint.write_levels``), with
every candidate's score; ``undiffuse sample --steps 1`` / ``--steps 2`` then use them
(``inference.generate.recorded_levels``) unless given ``--sigmas``.

Candidates (``hi`` = the run's sampling ``sigma_max``, ``sd`` = its ``sigma_data``, ``grid``
levels per geometric grid, rounded to 4 significant digits so that the recorded lists are
exactly the ones scored):

* 1 step: ``[s, 0]`` for ``s`` on a geometric grid from ``hi`` down to ``2 sd`` (a lower
  start leaves too little noise to make a new sample);
* 2 steps, a coordinate search in two stages: ``[hi, s1, 0]`` for ``s1`` on a geometric grid
  from ``hi / 4`` down to ``sd / 4``; then the best ``s1`` under each other 1-step start level
  ``s0 >= 2 s1``;
* for each count, the list the run sampled with before (``default``), first, so the pick
  never scores worse than the old default on this batch (ties keep the default).

Score: the Frechet distance (``metrics.frechet``) between Gaussian fits of features of
``samples`` generated samples and of ``samples`` real training images (a random subset, numpy
``default_rng(seed)``). Features as the evaluation suite picks them for the data: the digits
classifier's 64-d layer for 1x8x8 images, the raw values of vectors and images of at most 64
values, else a fixed random projection of the values to 64 dimensions (a seeded Gaussian
matrix; a cheap stand-in where the project has no feature network). Every candidate starts
from the same noise (seeds ``NOISE_SEED + i``, far from the seeds 0.. that sampling and the
benchmarks use; a stochastic sampler's fresh noise comes from the same seeds, as in
``undiffuse sample``), so the differences between candidates are less noisy than the scores,
and lists that start at the same level share their first evaluation (:class:`Memo`). FD on a
few hundred samples is biased upwards; only the ordering is used.

Cost: about ``3 grid`` network evaluations of ``samples`` items (21 batches of 256 by
default); on digits seconds to tens of seconds on a CPU, depending on its load.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from undiffuse import data as _data
from undiffuse.config import schedule_of
from undiffuse.core.types import WrapsDenoiser, denoiser_info
from undiffuse.inference import generate as gen
from undiffuse.io import checkpoint as ckpt
from undiffuse.metrics.evaluate import describe, features
from undiffuse.metrics.frechet import frechet_distance, gaussian_stats
from undiffuse.samplers import driver

NOISE_SEED = 900_000_000  # validation noise: seeds NOISE_SEED .. NOISE_SEED + samples - 1
PROJECTION_DIM = 64
FORMAT = "undiffuse-levels-1"


@dataclass
class LevelSearch:
    """How levels are picked: cheap by default (seconds to tens of seconds on a CPU for digits)."""

    samples: int = 256         # generated samples per candidate, and real images in the reference
    grid: int = 7              # levels per geometric grid (1-step starts; 2-step middle levels)
    seed: int = 0              # draws the real images (the noise seeds are fixed, NOISE_SEED + i)
    steps: tuple = (1, 2)      # step counts to pick levels for

    def __post_init__(self):
        if self.samples < 2 or self.grid < 1 or not self.steps or not set(self.steps) <= {1, 2}:
            raise ValueError(f"levels search: samples must be >= 2, grid >= 1 and steps among 1, 2; got "
                             f"samples {self.samples}, grid {self.grid}, steps {tuple(self.steps)}")


DEFAULT_SEARCH = LevelSearch()  # what distill and train use unless told otherwise


def _round(v: float) -> float:
    return float(f"{v:.4g}")


def geometric(hi: float, lo: float, n: int) -> list[float]:
    """``n`` levels from ``hi`` down to ``lo``, evenly spaced in log sigma (rounded to 4 digits)."""
    if n == 1:
        return [_round(hi)]
    return [_round(hi * (lo / hi) ** (i / (n - 1))) for i in range(n)]


def candidates(hi: float, sigma_data: float, grid: int, defaults: dict) -> dict[int, list[list[float]]]:
    """The first candidate level lists per step count in ``defaults`` (step count -> the run's
    old list for it, or None when it had none), the default first: 1 step, the start levels
    :func:`starts`; 2 steps, ``hi`` then each middle level of :func:`middles` (the search's
    second stage, :func:`second_stage`, adds other starts once the middle level is known)."""
    out = {}
    for steps, default in defaults.items():
        if steps == 1:
            lists = [[s, 0.0] for s in starts(hi, sigma_data, grid)]
        else:
            lists = [[_round(hi), s1, 0.0] for s1 in middles(hi, sigma_data, grid)]
        if default is not None:
            default = [float(v) for v in default]
            lists = [default] + [c for c in lists if not np.allclose(c, default, rtol=1e-4, atol=0)]
        out[steps] = lists
    return out


def starts(hi: float, sigma_data: float, grid: int) -> list[float]:
    """Start levels: ``grid`` levels from ``hi`` down to ``2 sigma_data`` (a lower start leaves
    too little noise to make a new sample)."""
    return geometric(hi, min(2 * sigma_data, hi), grid)


def middles(hi: float, sigma_data: float, grid: int) -> list[float]:
    """2-step middle levels: ``grid`` levels from ``hi / 4`` down to ``sigma_data / 4``."""
    return geometric(hi / 4, min(sigma_data / 4, hi / 4), grid)


def second_stage(best: list[float], tried: list[list[float]], hi: float, sigma_data: float,
                 grid: int) -> list[list[float]]:
    """2 steps, second stage: the best middle level so far under the other start levels of
    :func:`starts` at least twice as high."""
    s1 = best[1]
    lists = [[s0, s1, 0.0] for s0 in starts(hi, sigma_data, grid) if s0 >= 2 * s1]
    return [c for c in lists if not any(np.allclose(c, t, rtol=1e-4, atol=0) for t in tried)]


def choose(draw, reference: np.ndarray, lists: dict[int, list[list[float]]], featurize, *, default=None,
           more=None, log=None) -> dict:
    """Score every candidate list and pick the lowest FD per step count.

    ``draw(sigmas) -> array`` generates the validation samples for one list (the same noise
    every time); ``reference``: the real samples; ``featurize(array) -> (n, d)``; ``default``:
    step count -> the old default list (marked in the scores); ``more(steps, best, tried)``:
    further lists to score after the first ones (a second stage of the search), or None.
    Returns ``picked`` (step count as a string -> list) and ``candidates`` (-> ``[{"sigmas",
    "fd", "default"}]``, in the order tried; ``fd`` None for samples that were not finite).
    """
    ref = gaussian_stats(featurize(reference))
    picked, scored = {}, {}

    def score(sigmas, steps) -> dict:
        x = draw(sigmas)
        fd = frechet_distance(*gaussian_stats(featurize(x)), *ref) if np.isfinite(x).all() else math.nan
        return {"sigmas": sigmas, "fd": fd if math.isfinite(fd) else None,
                "default": default is not None and sigmas == default.get(steps)}

    for steps, options in lists.items():
        rows = [score(sigmas, steps) for sigmas in options]
        if more is not None and any(r["fd"] is not None for r in rows):
            best = min((r for r in rows if r["fd"] is not None), key=lambda r: r["fd"])
            rows += [score(sigmas, steps) for sigmas in more(steps, best["sigmas"], options)]
        finite = [r for r in rows if r["fd"] is not None]
        if not finite:
            raise ValueError(f"no {steps}-step candidate gave finite samples")
        best = min(finite, key=lambda r: r["fd"])  # min keeps the first of equals: the default
        picked[str(steps)], scored[str(steps)] = best["sigmas"], rows
        if log is not None:
            old = next((r for r in rows if r["default"]), None)
            was = f"; default {_fmt(old['sigmas'])} FD {old['fd']:.4g}" if old and old["fd"] is not None else ""
            log(f"levels: {steps} step{'s' * (steps > 1)} on {_fmt(best['sigmas'])} (FD {best['fd']:.4g}, best of "
                f"{len(rows)}{was})")
    return {"picked": picked, "candidates": scored}


class Memo(WrapsDenoiser):
    """The denoiser, remembering its last output at each noise level: every candidate starts
    from the same noise, so lists that start at the same level (a 1-step list and the 2-step
    lists through it) evaluate their first step once. For one fixed condition only."""

    def __init__(self, inner):
        self.inner, self.seen, self.calls = inner, {}, 0

    @property
    def boundary_sigma(self) -> float | None:
        return denoiser_info(self.inner).boundary_sigma

    def __call__(self, x, sigma, **cond):
        s = torch.as_tensor(sigma).reshape(-1)
        key = float(s[0]) if s.numel() and bool((s == s[0]).all()) else None
        hit = self.seen.get(key)
        if hit is not None and hit[0].shape == x.shape and torch.equal(hit[0], x):
            return hit[1]
        out = self.inner(x, sigma, **cond)
        self.calls += 1
        if key is not None:
            self.seen[key] = (x.clone(), out)
        return out


def _fmt(sigmas) -> str:
    return ", ".join(f"{v:.4g}" for v in sigmas)


def default_levels(run: gen.LoadedRun, steps: int) -> list[float] | None:
    """The list ``run`` sampled ``steps`` steps on without picked levels (None when its fixed
    list of levels has another length, as for a progressive student of more steps)."""
    s = run.config.sample
    sched = schedule_of(s)
    if not isinstance(sched, str):
        return [float(v) for v in sched] if len(sched) == steps + 1 else None
    return driver.schedule_of(run.denoiser, sched, steps, s.sigma_min, s.sigma_max).tolist()


def featurizer(shape: tuple, seed: int = 0):
    """``(description, fn)``: the feature map the levels are scored in for samples of ``shape``."""
    dim = math.prod(shape)
    if tuple(shape) == (1, 8, 8):
        return describe("digits", 64), lambda x: features(x, "digits")
    if dim <= PROJECTION_DIM:
        return describe("pixels", dim), lambda x: features(x, "pixels")
    w = np.random.default_rng(seed).standard_normal((dim, PROJECTION_DIM)) / math.sqrt(dim)
    return (f"fixed random projection of the {dim} values to {PROJECTION_DIM}-d (numpy default_rng({seed}))",
            lambda x: np.asarray(x, np.float64).reshape(len(x), -1) @ w)


def pick_levels(run_path: str, search: LevelSearch | None = None, *, device: str = "cpu", log=print) -> dict | None:
    """Pick and record the 1- and 2-step levels of the student in ``run_path`` (its latest
    checkpoint, EMA weights); returns the record written beside the checkpoint, or None for a
    text- or image-conditioned run (no validation condition to sample with; it samples as before)."""
    search = search or DEFAULT_SEARCH
    t0 = time.perf_counter()
    run = gen.load_run(run_path, weights="ema", device=device)
    cfg = run.config
    if run.conditioning not in ("none", "class"):
        log(f"levels: not picked for a {run.conditioning!r}-conditioned run; it samples with its defaults")
        return None
    data = _data.load(cfg.data.name, image_size=cfg.data.image_size, channels=cfg.data.channels,
                          sample_rate=cfg.data.sample_rate, representation=cfg.data.representation,
                          frames=cfg.data.frames)
    n = min(search.samples, len(data))
    rows = np.sort(np.random.default_rng(search.seed).choice(len(data), n, replace=False))
    real = data.to_unit(data.get(torch.as_tensor(rows))).numpy()
    condition = {"class_labels": gen.class_labels(run, "all", n)} if run.conditioning == "class" else {}
    sampler, memo = cfg.sample.sampler, Memo(run.denoiser)

    def draw(sigmas):
        x = gen.generate(run, n, seed=NOISE_SEED, sampler=sampler, schedule=sigmas, batch_size=n, condition=condition,
                         denoiser=memo, alone=True)
        return (gen.to_unit(x) if run.kind == "image" else x).numpy()

    defaults = {k: default_levels(run, k) for k in search.steps}
    hi, sd, grid = float(cfg.sample.sigma_max or run.denoiser.process.sigma_max), cfg.diffusion.sigma_data, search.grid
    what, featurize = featurizer(real.shape[1:], search.seed)
    found = choose(draw, real, candidates(hi, sd, grid, defaults), featurize, default=defaults, log=log,
                   more=lambda steps, best, tried: second_stage(best, tried, hi, sd, grid) if steps == 2 else [])
    record = {"format": FORMAT, "weights": "ema", "step": run.step, "sampler": sampler, **found,
              "default": {str(k): v for k, v in defaults.items()}}
    record["protocol"] = {
        "score": "Frechet distance of Gaussian fits of the features (lower is better)", "features": what,
        "samples": n, "noise_seeds": f"{NOISE_SEED}..{NOISE_SEED + n - 1}",
        "reference": f"{n} training images of {cfg.data.name} (numpy default_rng({search.seed}) without replacement)",
        "condition": "classes spread evenly" if condition else "none",
        "grid": search.grid, "network_batches": memo.calls, "seconds": round(time.perf_counter() - t0, 2)}
    ckpt.write_levels(run.checkpoint, record)
    return record


def after_training(result: dict, out: str, search: LevelSearch | None, *, main: bool = True, device: str = "cpu",
                   log=print) -> dict:
    """A student's ``fit()`` result with its picked levels (step count -> list) under ``levels``,
    recorded beside its checkpoint; picked by the main process only, not after an interrupted
    run, and not when ``search`` is None. A failure to pick is reported, not raised: the
    student is trained and saved, and samples on its defaults."""
    if search is None or not main or result.get("interrupted"):
        return result
    try:
        record = pick_levels(out, search, device=device, log=log)
    except (ValueError, OSError) as e:  # includes the data's and the checkpoint's errors
        log(f"levels: not picked ({type(e).__name__}: {e}); the student samples with its defaults")
        record = None
    return {**result, "levels": None if record is None else record["picked"]}
