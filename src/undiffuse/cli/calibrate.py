"""``undiffuse calibrate``: fit a few-step sampler (step positions, solver weights, noise-level
shifts) to a trained run against an accurate solve of its probability-flow ODE; use the JSON
it writes with ``undiffuse sample --calibration``."""
from __future__ import annotations

import json
import os
import sys

from undiffuse.cli.options import add_device, check_file, load_run, positive_int
from undiffuse.fewstep.calibrate import calibrate


def add_parser(subparsers) -> None:
    c = subparsers.add_parser("calibrate", help="fit a few-step sampler to a trained run (step positions and "
                              "solver weights against an accurate ODE solve)",
                              description="Fit step positions, multistep weights and noise-level shifts for STEPS "
                              "network evaluations to a trained run, against an accurate solve of its "
                              "probability-flow ODE on other noises; validated on held-out noises. Use the result "
                              "with `sample --calibration`.")
    c.add_argument("--checkpoint", required=True, help="run folder (latest checkpoint) or checkpoint folder")
    c.add_argument("--steps", type=positive_int, required=True, help="network evaluations per sample")
    c.add_argument("--out", help="calibration JSON (default: RUN/calibration_STEPS.json)")
    c.add_argument("--iters", type=positive_int, default=100, help="optimizer iterations (default: 100)")
    c.add_argument("--train-size", type=positive_int, default=64, help="noises fitted (default: 64)")
    c.add_argument("--val-size", type=positive_int, default=64, help="held-out noises (default: 64)")
    c.add_argument("--seed", type=int, default=500_000, help="first noise seed (default: 500000, away from the "
                   "seeds `sample` uses by default)")
    c.add_argument("--weights", choices=("ema", "model"), default="ema")
    c.add_argument("--sampler", choices=("calibrated", "ipndm"), default="calibrated", help="the solver fitted: "
                   "calibrated (positions, weights of its multistep correction, shifts; default) or ipndm "
                   "(positions, learned weights on earlier derivatives, shifts)")
    c.add_argument("--history", help="ipndm: earlier derivatives each step may weigh, N or 'all' (default: 3)")
    c.add_argument("--screen", type=int, default=0, help="draw SCREEN times the noises and fit on the hardest half "
                   "plus a uniform draw of the rest, reweighted (heavy-tailed errors; 0: off, else >= 2)")
    add_device(c)


def run(args, parser) -> int:
    check_file(parser, args.out)
    loaded = load_run(parser, args.checkpoint, weights=args.weights, device=args.device)
    if args.history is not None and args.sampler != "ipndm":
        parser.error("--history is for --sampler ipndm")
    history = None if args.history is None else (args.history if args.history == "all" else _int_or(args.history))
    s = loaded.config.sample
    try:
        cal = calibrate(loaded.denoiser, loaded.shape, args.steps, sigma_min=s.sigma_min, sigma_max=s.sigma_max,
                        train_size=args.train_size, val_size=args.val_size, seed=args.seed, iters=args.iters,
                        reference_rtol=1e-5, sampler=args.sampler, history=history, screen=args.screen,
                        learn_weights=True if args.sampler == "ipndm" else None, device=args.device)
    except ValueError as e:
        parser.error(f"{e} (check --history, --screen)")
    cal.meta.update({"checkpoint": os.path.abspath(loaded.checkpoint), "step": loaded.step,
                     "weights": loaded.weights})
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(loaded.checkpoint)),
                                   f"calibration_{args.steps}.json")
    cal.save(out)
    best = min(cal.baseline.items(), key=lambda kv: kv[1])
    print(json.dumps({"calibration": out, "steps": args.steps, "val_rmse": cal.val_rmse,
                      "best_fixed_schedule": {best[0]: best[1]}}))
    print(f"wrote {out}; sample with: undiffuse sample --checkpoint {args.checkpoint} --calibration {out}",
          file=sys.stderr)
    return 0


def _int_or(text: str):
    try:
        return int(text)
    except ValueError:
        return text  # calibrate() names what is allowed
