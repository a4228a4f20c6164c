"""Command line: ``undiffuse demo`` (more subcommands arrive with training)."""
from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="undiffuse", description="Diffusion models: train, sample, steer, measure.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="sample the built-in digits model, write a grid and its scores")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--steps", type=int, default=5, help="sampler steps (default: 5)")
    d.add_argument("--count", type=int, default=64, help="images in the grid (default: 64)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--sampler", default="dpmpp_2m", help="fixed-schedule sampler to compare with (default: dpmpp_2m)")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import samplers
        from .demo import run

        import os

        if os.path.exists(args.out) and not os.path.isdir(args.out):
            parser.error(f"--out {args.out!r} exists and is not a folder")
        if args.steps < 1:
            parser.error(f"--steps must be >= 1, got {args.steps}")
        if args.count < 1:
            parser.error(f"--count must be >= 1, got {args.count}")
        if args.sampler not in samplers.names():
            parser.error(f"--sampler {args.sampler!r} is unknown; allowed: {', '.join(samplers.names())}")
        scores = run(args.out, steps=args.steps, count=args.count, seed=args.seed, sampler=args.sampler)
        print(json.dumps(scores, indent=1))
        print(f"wrote {args.out}/samples.png and {args.out}/scores.json", file=sys.stderr)
    return 0
