"""``undiffuse distill``: a few-step student from a trained teacher run, started from the
teacher's EMA weights: consistency distillation, progressive distillation or rectified-flow
reflow. The student is a run like any other (``undiffuse sample --checkpoint STUDENT``)."""
from __future__ import annotations

import json
import os

from undiffuse.cli.options import add_device, add_set, check_folder, duration, log, positive_int
from undiffuse.core import schedules
from undiffuse.fewstep.distill import consistency_distill, progressive_distill
from undiffuse.fewstep.levels import LevelSearch
from undiffuse.fewstep.reflow import reflow
from undiffuse.io.checkpoint import CheckpointError
from undiffuse.samplers.odestep import check_solver
from undiffuse.training.trainer import TrainingError
from undiffuse.utils.distributed import teardown

# the teacher's ODE solver when --sampler is not given
_SOLVERS = {"consistency": "heun", "progressive": "euler", "reflow": "heun"}


def add_parser(subparsers) -> None:
    r = subparsers.add_parser("distill", help="make a few-step student from a trained run (consistency, "
                              "progressive, reflow)",
                              description="Train a few-step student from a trained teacher run, started from the "
                              "teacher's EMA weights. consistency: consistency distillation (Song et al. 2023), "
                              "1-step sampling with the consistency sampler. progressive: progressive distillation "
                              "(Salimans & Ho 2022), the teacher's --steps halved --rounds times. reflow: "
                              "rectified-flow reflow (Liu et al. 2023) from N noise-to-sample pairs of the teacher's "
                              "ODE. Sample the student as any run: `undiffuse sample --checkpoint STUDENT` (its "
                              "recommended sampler and steps are saved in its config; the 1- and 2-step noise "
                              "levels that scored best on a validation batch after training are recorded beside "
                              "its checkpoint and used by `sample --steps 1` and `--steps 2` unless --sigmas).")
    r.add_argument("--method", choices=("consistency", "progressive", "reflow"), required=True,
                   help="distillation method")
    r.add_argument("--teacher", required=True, help="a trained diffusion run (reflow: a rectified-flow run, "
                   "train --parameterization flow --set diffusion.process='{\"name\": \"flow\"}')")
    r.add_argument("--out", required=True, help="student run folder (an existing one is resumed)")
    r.add_argument("--max-steps", type=positive_int, help="student training steps (progressive: per round; "
                   "default: 1000 unless --time-budget)")
    r.add_argument("--time-budget", type=duration, help="student training time instead, e.g. 5m (progressive: "
                   "shared by the rounds)")
    r.add_argument("--lr", type=float, help="student learning rate (default: consistency and progressive half "
                   "the teacher's, constant; reflow the teacher's)")
    r.add_argument("--sampler", help="the teacher's deterministic ODE solver (default: consistency heun, "
                   "progressive euler (= DDIM), reflow heun)")
    r.add_argument("--steps", type=positive_int, help="the teacher solver's steps: consistency the grid's "
                   "intervals N (default 18); progressive the teacher's starting steps (default 2^rounds x 4); "
                   "reflow the coupling solves' steps (default: the teacher's)")
    r.add_argument("--rounds", type=positive_int, default=1, help="progressive: halvings (default: 1)")
    r.add_argument("--schedule", help="progressive and reflow: the teacher's schedule (default: the teacher's)")
    r.add_argument("--couplings", type=positive_int, default=4096, help="reflow: noise-sample pairs (default: 4096)")
    r.add_argument("--init", help="reflow: start the student from this run's EMA weights (same network) instead "
                   "of the teacher's, e.g. a reflow student for a 1-step stage with --set "
                   "diffusion.noise_sampling=sigma_max")
    r.add_argument("--couplings-file", help="reflow: a .safetensors file keeping the pairs for the next student: "
                   "read if it exists and was drawn the same way (teacher, sampler, steps, schedule, --seed), "
                   "written otherwise")
    add_set(r, help="any student config key, e.g. --set objective.index_sampling=uniform (repeatable)")
    r.add_argument("--levels-samples", type=positive_int, default=LevelSearch.samples, help="after training, the "
                   "student's 1- and 2-step noise levels are picked by sampling this many validation images per "
                   "candidate list and scoring them (FD) against as many training images; recorded beside its "
                   f"checkpoint and used by `undiffuse sample --steps 1/2` (default: {LevelSearch.samples})")
    r.add_argument("--levels-grid", type=positive_int, default=LevelSearch.grid, help="levels per candidate grid "
                   f"(1-step start levels; 2-step middle levels) (default: {LevelSearch.grid})")
    r.add_argument("--no-levels", action="store_true", help="do not pick levels: the student samples 1 and 2 "
                   "steps on the run's default schedule")
    r.add_argument("--seed", type=int, default=0)
    add_device(r, default=None, help="where the teacher and the student run: cpu (default), cuda, ...")
    r.add_argument("--no-progress", action="store_true")


def run(args, parser) -> int:
    solver = _check_options(args, parser)
    stop = {"max_steps": args.max_steps if args.max_steps or args.time_budget else 1000,
            "time_budget": args.time_budget}
    overrides = dict(args.overrides)
    if args.device:
        overrides["train.device"] = args.device
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    levels = None if args.no_levels else LevelSearch(samples=args.levels_samples, grid=args.levels_grid)
    common = dict(seed=args.seed, progress=not args.no_progress, levels=levels,
                  log=log if main_rank else (lambda m: None))
    try:
        result = _distill(args, parser, solver, overrides, **stop, **common)
    except CheckpointError as e:
        parser.error(f"--teacher: {e}")
    except (TrainingError, ValueError) as e:
        parser.error(str(e))
    finally:
        # under torchrun: every rank waits for the others (rank 0 still writing) before leaving the
        # group; a rank that exits first aborts its gloo threads and torchrun fails the job
        teardown()
    if main_rank:
        print(json.dumps({"run": args.out, "method": args.method, **result}))
    return 0


def _check_options(args, parser) -> str:
    """Usage checks (status 2); the teacher's solver."""
    check_folder(parser, args.out)
    if not os.path.exists(args.teacher):
        parser.error(f"--teacher {args.teacher!r} does not exist")
    if os.path.abspath(args.teacher) == os.path.abspath(args.out):
        parser.error("--out must differ from --teacher")
    if args.max_steps is not None and args.time_budget is not None:
        parser.error("give --max-steps or --time-budget, not both")
    if args.schedule is not None and args.schedule not in schedules.names():
        parser.error(f"--schedule {args.schedule!r} is unknown; allowed: {', '.join(schedules.names())}")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.method != "progressive" and args.rounds != 1:
        parser.error("--rounds is for --method progressive")
    if args.couplings_file is not None and args.method != "reflow":
        parser.error("--couplings-file is for --method reflow")
    if args.init is not None and args.method != "reflow":
        parser.error("--init is for --method reflow")
    if args.init is not None and not os.path.isdir(args.init):
        parser.error(f"--init {args.init!r} is not a run folder")
    if args.levels_samples < 2:
        parser.error(f"--levels-samples must be >= 2 (a covariance needs two samples), got {args.levels_samples}")
    solver = args.sampler or _SOLVERS[args.method]
    try:
        check_solver(solver)
    except ValueError as e:
        parser.error(f"--sampler: {e}")
    return solver


def _distill(args, parser, solver: str, overrides: dict, **options) -> dict:
    """Train the student with ``--method``; ``options`` are the stop conditions, seed and logging."""
    if args.method == "consistency":
        return consistency_distill(args.teacher, args.out, solver=solver, steps=args.steps or 18, lr=args.lr,
                                   overrides=overrides, **options)
    if args.method == "progressive":
        steps = args.steps or 4 * 2**args.rounds
        if steps % 2**args.rounds:
            parser.error(f"--steps {steps} must be divisible by 2^--rounds = {2**args.rounds}")
        return progressive_distill(args.teacher, args.out, steps=steps, rounds=args.rounds, solver=solver,
                                   schedule=args.schedule, lr=args.lr, overrides=overrides, **options)
    if args.lr:
        overrides["optim.lr"] = args.lr
    try:
        return reflow(args.teacher, args.out, n=args.couplings, sampler=solver, steps=args.steps,
                      schedule=args.schedule, overrides=overrides, couplings_file=args.couplings_file,
                      init=args.init or "ema", **options)
    except ValueError as e:  # name the CLI options, not the function's arguments
        parser.error(str(e).replace("couplings_file: ", "--couplings-file: ").replace("init '", "--init '"))
