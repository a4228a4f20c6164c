"""``undiffuse train-control --base RUN --control edges --time-budget 10m --out CTRL``: train a
control adapter (``nets.control``, ControlNet-style) on a frozen run; see ``training.control``."""
from __future__ import annotations

import json
import os

from undiffuse.cli.options import add_set, check_folder, duration, load_run, log, positive_int
from undiffuse.data import control_maps
from undiffuse.io.checkpoint import CheckpointError
from undiffuse.training.control import train_control
from undiffuse.training.trainer import TrainingError


def add_parser(subparsers) -> None:
    c = subparsers.add_parser("train-control", help="train a control adapter (edges, mask, layout, sketch, lowres) "
                              "on a frozen run",
                              description="Train a ControlNet-style adapter that steers a trained run with a "
                              "structure map (an extractor's output on an image) while the run's weights stay "
                              "frozen: a trainable copy of its down path reads the map and joins the frozen network "
                              "through zero-initialised convolutions, so before training it samples exactly like "
                              "the base. Trains on the base's own data and condition. Sample with `undiffuse sample "
                              "--checkpoint CTRL --control-image FILE` or `--checkpoint RUN --control CTRL ...`.")
    c.add_argument("--base", required=True, metavar="RUN", help="the trained run to steer (its EMA weights, frozen)")
    c.add_argument("--control", required=True, help=f"the extractor: {', '.join(control_maps.EXTRACTORS)}")
    c.add_argument("--out", required=True, help="the control run's folder (with --resume auto: continued)")
    c.add_argument("--time-budget", type=duration, help="training time, e.g. 10m")
    c.add_argument("--max-steps", type=positive_int, help="or optimizer steps")
    c.add_argument("--lr", type=float, help="learning rate (default: the base's)")
    c.add_argument("--batch-size", type=positive_int, help="default: the base's")
    c.add_argument("--seed", type=int)
    c.add_argument("--resume", help="auto: continue the control run in --out")
    add_set(c, help="any config key of the control run, e.g. --set train.checkpoint_every=500 (repeatable)")
    c.add_argument("--no-progress", action="store_true")


def run(args, parser) -> int:
    check_folder(parser, args.out)
    if args.control not in control_maps.EXTRACTORS:
        parser.error(f"--control {args.control!r} is unknown; allowed: {', '.join(control_maps.EXTRACTORS)}")
    if (args.time_budget is None) == (args.max_steps is None):
        parser.error("give --time-budget or --max-steps (one of them)")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not os.path.isdir(args.base):
        parser.error(f"--base {args.base!r} is not a run folder")
    if os.path.abspath(args.base) == os.path.abspath(args.out):
        parser.error("--out must differ from --base")
    base = load_run(parser, args.base, "--base")
    overrides = dict(args.overrides)
    for key, value in (("optim.lr", args.lr), ("optim.batch_size", args.batch_size), ("train.seed", args.seed)):
        if value is not None:
            overrides[key] = value
    try:
        result = train_control(base, args.control, args.out, max_steps=args.max_steps, time_budget=args.time_budget,
                               overrides=overrides, resume=args.resume, progress=not args.no_progress, log=log)
    except CheckpointError as e:
        parser.error(f"--resume: {e}")
    except (TrainingError, ValueError) as e:
        parser.error(str(e))
    print(json.dumps({"run": args.out, "base": args.base, "control": args.control, **result}))
    return 0
