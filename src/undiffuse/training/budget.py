"""Fitting a run's configuration to its budget.

A preset is tuned for a number of optimizer steps; a time budget decides how many steps a run
makes on this machine. The generic image presets (``small``, ``base``) were written for
hundreds of thousands of GPU steps: on a CPU a 5-minute run of them ends inside the warm-up
with a learning rate and EMA that never moved. :func:`fit_budget` makes the resolved config
fit the run it will actually be:

* **the network** (only for a default generic preset and no ``model.*`` option): the preset's
  own if the budget buys it :data:`PRESET_STEPS` steps, else the largest network of the image
  size's ladder (:data:`LADDERS`) that still makes :data:`MIN_STEPS` optimizer steps in the
  budget (the cheapest if none does): on a CPU, many steps of a narrow network beat few of a
  wide one (BENCHMARKS.md), at a step rate measured here at start-up
  (:func:`measure_rate`: a few forward and backward passes, seconds); each rung carries the
  learning rate and batch it was measured with;
* **the stopping rule**: a time budget without ``--max-steps`` drops the preset's step cap, so
  the cosine learning rate spans the budget and the progress bar counts time;
* **warm-up, EMA and checkpoint cadence**, scaled to the expected steps: warm-up at most
  :data:`WARMUP_SHARE` of them, a checkpoint at least every quarter of the run, and the EMA
  half-life at most :data:`EMA_SHARE` of the samples the run will see (the EMA ramp-up,
  on by default, does this already as the run goes: then it is only reported).

Every option the user gave (``explicit``: the config keys set on the command line) is left
alone. The choices come back as sentences (``Fit.reasons``) that ``train --dry-run`` prints.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch

from undiffuse.config import RunConfig, TEXT_EMBEDDING_DIM, build_denoiser
from undiffuse.core.losses import denoising_loss

GENERIC = ("small", "base")  # presets written for long GPU runs: the ones whose network is fitted
MIN_STEPS = 3000   # a rung is chosen only if the budget buys it this many optimizer steps
PRESET_STEPS = 20_000  # the preset's own network (and optimiser) only if the budget buys it this many
WARMUP_SHARE = 0.25 # warm-up at most this share of the expected steps
EMA_SHARE = 0.05    # EMA half-life at most this share of the expected samples (the ramp-up's own share)
POSTHOC_SNAPSHOTS = 32  # post-hoc EMA snapshots per run (by steps, or by time under a time budget alone)
RATE_BATCH = 16     # samples per probe step
FULL_BATCH_SECONDS = 1.0  # a predicted step time under this is then measured at the run's full batch


def _unet(channels, mult, blocks, attention, heads, patch=1) -> dict:
    return {"kind": "unet", "channels": channels, "channel_mult": mult, "num_res_blocks": blocks,
            "attention_levels": attention, "head_channels": heads, "dropout": 0.0, "patch_size": patch}


# Per largest image side: rungs from the cheapest network up, each with the optimiser settings
# it runs with (BENCHMARKS.md "Budget-aware defaults"): above them the preset's own network.
# Measured at equal time on mnist5k (28x28 pixels and its 4x7x7 latents); the 64 rungs follow
# the same pattern (patches that keep the grid at 16x16 or 32x32) but are not measured yet.
LADDERS: dict[int, list[dict]] = {
    8: [  # latent grids (4 x 7 x 7 for 28x28 images): noise levels drawn higher, as for emoji latents
        {"name": "unet-32", "model": _unet(32, [1, 2, 2], 1, [2], 32),
         "optim": {"lr": 4e-3, "batch_size": 64}, "diffusion": {"p_mean": -0.4}},
    ],
    32: [
        {"name": "unet-32-p2", "model": _unet(32, [1, 2], 2, [1], 32, patch=2),
         "optim": {"lr": 4e-3, "batch_size": 64}},
        {"name": "unet-48-p2", "model": _unet(48, [1, 2, 2], 1, [1, 2], 48, patch=2),
         "optim": {"lr": 4e-3, "batch_size": 64}},
        {"name": "unet-32", "model": _unet(32, [1, 2, 2], 1, [2], 32),
         "optim": {"lr": 2e-3, "batch_size": 64}},
    ],
    64: [
        {"name": "unet-32-p4", "model": _unet(32, [1, 2], 2, [1], 32, patch=4),
         "optim": {"lr": 4e-3, "batch_size": 64}},
        {"name": "unet-48-p2", "model": _unet(48, [1, 2, 2], 1, [2], 48, patch=2),
         "optim": {"lr": 4e-3, "batch_size": 64}},
    ],
}


@dataclass
class Fit:
    config: RunConfig
    reasons: list[str] = field(default_factory=list)
    steps_per_s: float | None = None
    expected_steps: int | None = None


def ladder_for(shape: tuple) -> list[dict]:
    """The rungs for images of ``shape`` (C, H, W) whose sides the patches divide; [] for
    other data (vectors, large images)."""
    if len(shape) != 3:
        return []
    side = max(shape[1:])
    for top in sorted(LADDERS):
        if side <= top:
            return [r for r in LADDERS[top] if all(s % r["model"]["patch_size"] == 0 for s in shape[1:])]
    return []


def measure_rate(cfg: RunConfig, shape: tuple) -> float:
    """Optimizer steps per second of ``cfg``'s network at its batch size, here and now (forward,
    backward and AdamW on random items). A probe at ``RATE_BATCH`` items predicts the step time;
    when that is under ``FULL_BATCH_SECONDS``, two timed steps at the full batch give the rate
    (small batches carry overhead that would understate it), else the probe scaled linearly
    does. The global random state is left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        den = build_denoiser(cfg)
        opt = torch.optim.AdamW(den.net.parameters(), lr=1e-4)
        probe = min(_step_seconds(den, opt, cfg, shape, RATE_BATCH, reps=2))
        batch = cfg.optim.batch_size
        if probe * batch / RATE_BATCH > FULL_BATCH_SECONDS:
            return RATE_BATCH / (probe * batch)
        return 1.0 / min(_step_seconds(den, opt, cfg, shape, batch, reps=2))


def _step_seconds(den, opt, cfg: RunConfig, shape: tuple, n: int, reps: int) -> list[float]:
    x, cond = torch.randn(n, *shape), _conditions(cfg, n, shape)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sigma = torch.exp(torch.randn(n) - 1.2)
        loss = denoising_loss(den, x, sigma, torch.randn_like(x), **cond).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def _conditions(cfg: RunConfig, n: int, shape: tuple) -> dict:
    """Stand-ins for the run's condition (their cost is what matters)."""
    m, extra = cfg.model, {}
    if m.get("kind") == "controlled":  # a control run: its maps, and its base's condition
        a = m["adapters"]
        extra = {"control": torch.zeros(n, sum(x["control_channels"] for x in a), a[0]["map_size"], a[0]["map_size"])}
        m = m["base"]
    if m.get("num_classes"):
        return {"class_labels": torch.zeros(n, dtype=torch.long), **extra}
    if m.get("context_dim"):
        return {"context": torch.zeros(n, cfg.conditioning.max_tokens, TEXT_EMBEDDING_DIM),
                "context_mask": torch.ones(n, cfg.conditioning.max_tokens, dtype=torch.bool), **extra}
    if m.get("cond_channels"):
        return {"cond_image": torch.zeros(n, m["cond_channels"], *shape[1:]), **extra}
    return extra


def fit_stopping(cfg: RunConfig, explicit: set[str]) -> list[str]:
    """A time budget without an explicit step cap: no step cap (the schedule and the progress
    bar then follow time). Deterministic, so a resumed run gets the same rule."""
    tr = cfg.train
    if tr.time_budget is not None and tr.max_steps is not None and "train.max_steps" not in explicit:
        cap, tr.max_steps = tr.max_steps, None
        return [f"stopping: the time budget of {tr.time_budget:g} s alone ends the run (the preset's cap of "
                f"{cap} steps dropped), so the cosine learning rate spans the budget and the bar counts time"]
    return []


# what a fit may change: a resumed run takes these from its saved config unless given again
FITTED = ("model", "optim.lr", "optim.batch_size", "diffusion.p_mean", "optim.warmup_steps",
          "ema.halflife_samples", "train.checkpoint_every", "train.sample_every")


def keep_saved_fit(cfg: RunConfig, saved: dict, explicit: set[str]) -> RunConfig:
    """``cfg`` with the fitted values of the run being resumed (``saved``: its config dict),
    so resuming neither refits (the rate may differ now) nor reports the fit as a change."""
    d = cfg.to_dict()
    for key in FITTED:
        if key == "model":
            if not any(k.startswith("model.") for k in explicit) and "model" in saved:
                d["model"] = copy.deepcopy(saved["model"])
            continue
        sec, name = key.split(".")
        if key not in explicit and name in saved.get(sec, {}):
            d[sec][name] = saved[sec][name]
    return RunConfig.from_dict(d)


def fit_budget(cfg: RunConfig, shape: tuple, explicit: set[str], *, default_preset: bool,
               rate=measure_rate) -> Fit:
    """``cfg`` fitted to its budget (a copy); see the module docstring. ``shape``: one training
    item's shape; ``default_preset``: the preset was chosen from the data, not named by the user;
    ``rate(cfg, shape)``: steps per second of a config (measured; tests pass their own)."""
    cfg = RunConfig.from_dict(cfg.to_dict())
    reasons = fit_stopping(cfg, explicit)
    tr = cfg.train
    if tr.time_budget is None and tr.max_steps is None:
        return Fit(cfg, reasons)
    steps_per_s = None
    if tr.time_budget is not None:
        if default_preset and cfg.preset in GENERIC and not any(k.startswith("model.") for k in explicit):
            reasons += _fit_network(cfg, shape, explicit, rate)
        steps_per_s = rate(cfg, shape)
        expected = max(1, int(tr.time_budget * steps_per_s))
        if tr.max_steps is not None:
            expected = min(expected, tr.max_steps)
        reasons.append(f"expected steps: about {expected} ({steps_per_s:.2f} steps/s measured at start-up at batch "
                       f"{cfg.optim.batch_size}, over {tr.time_budget:g} s)")
    else:
        expected = tr.max_steps
    reasons += _scale_to_steps(cfg, expected, explicit)
    return Fit(cfg, reasons, steps_per_s, expected)


def _fit_network(cfg: RunConfig, shape: tuple, explicit: set[str], rate) -> list[str]:
    """The largest rung that makes MIN_STEPS steps in the budget (the cheapest if none does)."""
    rungs = ladder_for(shape)
    if not rungs:
        return []
    budget = cfg.train.time_budget
    preset_rate = rate(cfg, shape)
    if preset_rate * budget >= PRESET_STEPS:
        return [f"network: the {cfg.preset} preset's own ({preset_rate:.2f} steps/s: {int(preset_rate * budget)} "
                f"steps in the budget, at least {PRESET_STEPS} wanted for it)"]
    chosen, seen = None, []
    for rung in rungs:
        trial = _with_rung(cfg, rung, explicit)
        r = rate(trial, shape)
        seen.append(f"{rung['name']} {r:.2f}")
        if chosen is None or r * budget >= MIN_STEPS:
            chosen = (rung, trial, r)
        if r * budget < MIN_STEPS:
            break
    rung, trial, r = chosen
    cfg.model, cfg.optim, cfg.diffusion = trial.model, trial.optim, trial.diffusion
    return [f"network: {rung['name']} ({_describe(rung['model'])}), the largest that makes at least {MIN_STEPS} "
            f"steps in {budget:g} s (steps/s measured: {', '.join(seen)}; the {cfg.preset} preset's own network "
            f"{preset_rate:.2f}); learning rate {cfg.optim.lr:g}, batch {cfg.optim.batch_size}"
            + "".join(f", diffusion.{k} {v:g}" for k, v in rung.get("diffusion", {}).items())]


def _with_rung(cfg: RunConfig, rung: dict, explicit: set[str]) -> RunConfig:
    d = cfg.to_dict()
    keep = {k: d["model"][k] for k in ("in_channels", "num_classes", "context_dim", "cond_channels") if k in d["model"]}
    d["model"] = {**copy.deepcopy(rung["model"]), **keep}
    for sec in ("optim", "diffusion"):
        for key, value in rung.get(sec, {}).items():
            if f"{sec}.{key}" not in explicit:
                d[sec][key] = value
    return RunConfig.from_dict(d)


def _describe(model: dict) -> str:
    patch = f", {model['patch_size']}x{model['patch_size']} patches" if model.get("patch_size", 1) > 1 else ""
    return (f"{model['channels']} channels x{'/x'.join(str(m) for m in model['channel_mult'])}, "
            f"{model['num_res_blocks']} block(s) per level{patch}")


def _scale_to_steps(cfg: RunConfig, steps: int, explicit: set[str]) -> list[str]:
    out = []
    o, e, tr = cfg.optim, cfg.ema, cfg.train
    warm = max(1, math.floor(WARMUP_SHARE * steps))
    if "optim.warmup_steps" not in explicit and o.warmup_steps > warm:
        out.append(f"warm-up: {warm} steps (at most {WARMUP_SHARE:.0%} of the expected steps; the preset has "
                   f"{o.warmup_steps})")
        o.warmup_steps = warm
    samples = steps * o.batch_size
    half = EMA_SHARE * samples
    if e.rampup > 0 and e.halflife_samples > e.rampup * samples:
        out.append(f"EMA half-life: {e.rampup:.0%} of the samples seen, about {e.rampup * samples:,.0f} at the end "
                   f"(the ramp-up; the preset's {e.halflife_samples:,.0f} is longer than the run)")
    elif "ema.halflife_samples" not in explicit and e.halflife_samples > half:
        out.append(f"EMA half-life: {half:,.0f} samples ({EMA_SHARE:.0%} of the {samples:,} the run will see; "
                   f"the preset's {e.halflife_samples:,.0f} is longer than the run)")
        e.halflife_samples = half
    every = max(50, steps // 4)
    if "train.checkpoint_every" not in explicit and tr.checkpoint_every > every:
        out.append(f"checkpoints: every {every} steps (a quarter of the run)")
        tr.checkpoint_every = every
    if e.posthoc and not e.posthoc_every:
        out.append(f"post-hoc EMA: a snapshot every {POSTHOC_SNAPSHOTS}th of the "
                   + ("training time" if tr.max_steps is None else "steps") + " and one with each checkpoint")
    if "train.sample_every" not in explicit and tr.sample_every > steps:
        tr.sample_every = 0
    return out
