"""Few-step students from trained runs: consistency distillation and progressive distillation.

Both train a copy of the teacher's network (same architecture, started from the teacher's
EMA weights) with the ordinary trainer and a distillation objective (``consistency``,
``progressive``); the student is an ordinary run folder, sampled with ``undiffuse sample``.
The student's config names the teacher checkpoint it learns from, so ``--resume`` reloads
the very same teacher. Reflow (rectified flow) lives in ``reflow``.
"""
from __future__ import annotations

import os

from undiffuse.config import RunConfig, apply_overrides
from undiffuse.core import schedules
from undiffuse.fewstep.levels import DEFAULT_SEARCH, LevelSearch, after_training
from undiffuse.io import checkpoint as ckpt
from undiffuse.training.objectives import build_objective, load_teacher  # noqa: F401 (public)
from undiffuse.training.latent_route import run_dataset
from undiffuse.training.trainer import Trainer


def _stopping(d: dict, max_steps: int | None, time_budget: float | None) -> None:
    if (max_steps is None) == (time_budget is None):
        raise ValueError("give exactly one of max_steps and time_budget")
    d["train"]["max_steps"], d["train"]["time_budget"] = max_steps, time_budget


def _train_student(teacher, cfg: RunConfig, out: str, *, progress: bool, log, init: str | None = None,
                   levels: LevelSearch | None = None) -> dict:
    dataset = run_dataset(cfg)  # a latent teacher: the student learns on the same latents
    trainer = Trainer(cfg, dataset, out, resume="auto", progress=progress, log=log)
    if trainer.step == 0:
        if init is None:
            state = teacher.denoiser.net.state_dict()
            trainer.net.load_state_dict(state)
            trainer.ema.load_state_dict(state)
        else:
            start = _init_weights(init, cfg)
            trainer.net.load_state_dict(start["model"])
            trainer.ema.load_state_dict(start["ema"])
    return after_training(trainer.fit(), out, levels, main=trainer.world.main, device=cfg.train.device, log=log)


def _init_weights(path: str, cfg: RunConfig) -> dict:
    """A consistency student's weights (its network and EMA) to start another student from,
    refusing a run of another kind or architecture."""
    loaded = ckpt.load_checkpoint(path)
    saved = loaded["state_json"]["config"]
    if saved.get("objective", {}).get("kind") != "consistency":
        raise ValueError(f"init {path!r} is not a consistency student (objective.kind "
                         f"{saved.get('objective', {}).get('kind')!r})")
    if saved.get("model") != cfg.model:
        raise ValueError(f"init {path!r} has another network ({saved.get('model')}) than the teacher's ({cfg.model})")
    return loaded


def consistency_distill(teacher_path: str, out: str, *, max_steps: int | None = None,
                        time_budget: float | None = None, solver: str = "heun", steps: int = 18,
                        lr: float | None = None, seed: int = 0, overrides: dict | None = None,
                        init: str | None = None, levels: LevelSearch | None = DEFAULT_SEARCH,
                        progress: bool = False, log=print) -> dict:
    """Consistency distillation of a trained run into ``out``.

    ``steps``: the grid's intervals N (the teacher solves the ODE in N ``solver`` steps over
    the whole range); ``lr``: the student's learning rate (default: a tenth of the
    teacher's, constant). The student samples with the ``consistency`` sampler, 1 step by default;
    ``--steps 2`` goes through ``sample.sigma_min`` (the middle level of a 2-level Karras
    schedule), 4 sigma_data by default: on digits the best of a sweep from 0.27 to 27 sigma_data
    (BENCHMARKS.md). Runs again with the same ``out`` resume it.

    ``init``: start the student from another consistency student's network and EMA weights
    (a run or checkpoint folder of the same architecture) instead of the teacher's, with a
    fresh optimizer and step count: to train a student on with a changed recipe (``overrides``
    such as ``objective.index_sampling``, ``optim.lr`` or ``ema.halflife_samples``, which a
    plain resume keeps as saved). With ``ema.rampup`` 0 the EMA goes on from the loaded one.
    """
    teacher = load_teacher(teacher_path)
    d = teacher.config.to_dict()
    sigma_min = teacher.config.sample.sigma_min or teacher.denoiser.process.sigma_min
    d["diffusion"]["boundary_sigma"] = float(sigma_min)
    d["objective"] = {"kind": "consistency", "teacher": os.path.abspath(teacher.checkpoint), "solver": solver,
                      "steps_start": steps, "steps_end": steps}
    d["optim"].update(lr=lr or d["optim"]["lr"] / 2, warmup_steps=0, schedule="constant")
    d["sample"] = {"sampler": "consistency", "steps": 1, "schedule": "karras",
                   "sigma_min": 4 * d["diffusion"]["sigma_data"], "sigma_max": d["sample"].get("sigma_max")}
    d["train"]["seed"] = seed
    _stopping(d, max_steps, time_budget)
    cfg = RunConfig.from_dict(apply_overrides(d, overrides or {}))
    log(f"consistency distillation of {teacher.checkpoint} (step {teacher.step}): {solver} steps on a grid of "
        f"{cfg.objective.steps_start}..{cfg.objective.steps_end} intervals, lr {cfg.optim.lr:g}, into {out}"
        + (f", starting from the student {init}" if init else ""))
    return _train_student(teacher, cfg, out, progress=progress, log=log, init=init, levels=levels)


def progressive_distill(teacher_path: str, out: str, *, steps: int, rounds: int = 1, max_steps: int | None = None,
                        time_budget: float | None = None, solver: str = "euler", schedule: str | None = None,
                        lr: float | None = None, seed: int = 0, overrides: dict | None = None,
                        levels: LevelSearch | None = DEFAULT_SEARCH, progress: bool = False, log=print) -> dict:
    """``rounds`` rounds of progressive distillation: the teacher's ``steps``-step ``solver``
    (on its ``schedule``, default the run's) halved each round, ending with a student of
    ``steps / 2^rounds`` Euler steps in ``out``. Earlier rounds go to
    ``out/rounds/NN_steps``; ``max_steps`` / ``time_budget`` are per round / for all rounds.
    ``levels``: how the last student's 1- and 2-step levels are picked (``fewstep.levels``; None:
    not picked, it samples only on its fixed grid).
    """
    if rounds < 1 or steps % (2**rounds):
        raise ValueError(f"steps ({steps}) must be divisible by 2^rounds (rounds = {rounds}, >= 1)")
    teacher = load_teacher(teacher_path)
    tc = teacher.config
    if tc.objective.kind == "progressive" and tc.sample.schedule == "custom":
        fine = schedules.validate(tc.sample.sigmas)
        if len(fine) - 1 != steps:
            raise ValueError(f"the teacher {teacher_path!r} samples on its fixed {len(fine) - 1}-step grid; "
                             f"give steps {len(fine) - 1}")
    else:
        s = tc.sample
        fine = schedules.get_sigmas(schedule or s.schedule, steps, sigma_min=s.sigma_min, sigma_max=s.sigma_max,
                                    process=teacher.denoiser.process)
    fine = [float(v) for v in fine]
    budget = None if time_budget is None else time_budget / rounds
    result = {}
    for r in range(1, rounds + 1):
        n = steps // 2**r
        grid = fine[::2 ** (r - 1)]
        folder = out if r == rounds else os.path.join(out, "rounds", f"{n:02d}_steps")
        d = teacher.config.to_dict()
        d["objective"] = {"kind": "progressive", "teacher": os.path.abspath(teacher.checkpoint), "solver": solver,
                          "grid": grid}
        d["optim"].update(lr=lr or tc.optim.lr / 2, warmup_steps=0, schedule="constant")
        d["sample"].update(sampler="euler", steps=n, schedule="custom", sigmas=grid[::2])
        d["train"]["seed"] = seed
        _stopping(d, max_steps, budget)
        cfg = RunConfig.from_dict(apply_overrides(d, overrides or {}))
        log(f"progressive distillation round {r}/{rounds}: {2 * n} {solver} steps of {teacher.checkpoint} -> "
            f"{n} Euler steps, into {folder}")
        result = _train_student(teacher, cfg, folder, progress=progress, log=log,
                                levels=levels if r == rounds else None)
        teacher = load_teacher(folder)
    return {**result, "steps": steps // 2**rounds}
