"""``undiffuse ema RUN --sigma-rel 0.05``: rebuild the EMA of any relative length from the
post-hoc snapshots a run stored (``train --ema-posthoc``), written into the run as
``RUN/ema/sigma_rel_0.050.safetensors`` with its provenance; ``--list`` shows what a run
holds. ``sample --ema`` and ``sweep --ema`` use (and if needed build) the same files."""
from __future__ import annotations

import json
import os

from undiffuse.cli.options import log
from undiffuse.inference import posthoc_ema as ph
from undiffuse.io.checkpoint import CheckpointError


def add_parser(subparsers) -> None:
    e = subparsers.add_parser("ema", help="rebuild the EMA of any length from a run's post-hoc snapshots",
                              description="Rebuild the weights of a power-function EMA of relative length "
                              "SIGMA_REL (the average's width as a share of the training run; 0.05 and 0.10 are "
                              "tracked by --ema-posthoc) as the least-squares combination of the snapshots the run "
                              "stored, and write it into RUN/ema/ with its provenance (snapshots used, coefficients, "
                              f"the fit's residual). A length the snapshots cannot express within "
                              f"{ph.MAX_RESIDUAL:.0%} is refused with the range they support.")
    e.add_argument("run", metavar="RUN", help="a run folder trained with --ema-posthoc")
    e.add_argument("--sigma-rel", nargs="+", type=float, metavar="SIGMA_REL",
                   help=f"relative EMA lengths to rebuild, in (0, {ph.SIGMA_REL_MAX:.4f}]")
    e.add_argument("--step", type=int, help="rebuild the average as it was at this snapshot's step "
                                            "(default: the last snapshot)")
    e.add_argument("--list", action="store_true", help="print the run's snapshots and stored reconstructions")


def run(args, parser) -> int:
    if not os.path.isdir(args.run):
        parser.error(f"RUN {args.run!r} is not a folder")
    if not args.list and not args.sigma_rel:
        parser.error("give --sigma-rel SIGMA_REL [...] (or --list)")
    try:
        if args.list:
            print(json.dumps(ph.describe(args.run), indent=1))
            return 0
        for s in args.sigma_rel:  # every length checked before anything is written
            ph.plan(args.run, s, args.step)
        out = []
        for s in args.sigma_rel:
            _, rec, path = ph.reconstruct(args.run, s, args.step)
            log(f"sigma_rel {s:g} at step {rec['step']}: {len(rec['parts'])} snapshot averages, fit residual "
                f"{rec['residual']:.2%}; {path}")
            out.append({"sigma_rel": s, "path": path, "step": rec["step"], "residual": rec["residual"],
                        "parts": len(rec["parts"])})
    except (ph.PosthocError, CheckpointError) as err:
        parser.error(str(err))
    print(json.dumps(out, indent=1))
    return 0
