"""The trainer's objectives, built from a run's ``objective`` config group: denoising (the
diffusion loss, ``training.denoising``), consistency (distillation from a teacher, or
training from data alone) and progressive distillation. A teacher is a trained run loaded
with its EMA weights.

Every objective is called as ``objective(trainer, x0, cond)`` and returns one loss per row of
``x0`` (``training.loop.Objective``); the trainer only averages, steps and logs. Its random
draws come from ``trainer.gen``, made for the whole micro-batch (``trainer.batch.size`` rows)
with this process keeping ``trainer.batch.rows``, so N processes draw what one process draws.
"""
from __future__ import annotations

from undiffuse.config import OBJECTIVES, RunConfig
from undiffuse.inference.generate import load_run
from undiffuse.training.consistency import ConsistencyObjective
from undiffuse.training.denoising import DenoisingObjective
from undiffuse.training.progressive import ProgressiveObjective


def load_teacher(path: str, device="cpu"):
    """Load a teacher run's EMA weights, refusing what cannot teach (not a run, or a
    consistency model, whose output is not a denoiser of any ODE)."""
    run = load_run(path, weights="ema", device=str(device))
    if run.config.objective.kind == "consistency":
        raise ValueError(f"{path!r} is a consistency model (its output jumps to the end of the ODE path); a "
                         f"teacher must be a diffusion run with a denoiser")
    return run


def build_objective(cfg: RunConfig, dataset, device):
    """The trainer's objective for ``cfg.objective`` (the teacher loaded from its path)."""
    ob = cfg.objective
    if ob.kind == "denoising":
        return DenoisingObjective(cfg.diffusion)
    teacher = None
    if ob.teacher is not None:
        run = load_teacher(ob.teacher, device)
        if tuple(run.shape) != tuple(dataset.shape):
            raise ValueError(f"the teacher {ob.teacher!r} makes items of shape {tuple(run.shape)}; the data has "
                             f"{tuple(dataset.shape)}")
        teacher = run.denoiser
    if ob.kind == "consistency":
        return ConsistencyObjective(ob, teacher)
    if ob.kind == "progressive":
        if teacher is None:
            raise ValueError("progressive distillation needs objective.teacher")
        return ProgressiveObjective(teacher, ob.grid, ob.solver)
    raise ValueError(f"unknown objective.kind {ob.kind!r}; allowed: {', '.join(OBJECTIVES)}")
