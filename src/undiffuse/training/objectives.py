"""Training objectives beyond plain denoising, built from a run's ``objective`` config group:
consistency (distillation from a teacher, or training from data alone) and progressive
distillation. A teacher is a trained run loaded with its EMA weights."""
from __future__ import annotations

from undiffuse.config import RunConfig
from undiffuse.inference.generate import load_run
from undiffuse.training.consistency import ConsistencyObjective
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
    raise ValueError(f"objective.kind {ob.kind!r} has no distillation objective")
