"""``undiffuse sweep``: sample a trained run with each sampler at each NFE budget (or, with
``--guidance``, at each guidance scale), score every point with the evaluation suite, and
write the points as JSON, plots and a Markdown report."""
from __future__ import annotations

import json
import sys

from undiffuse import samplers
from undiffuse.cli.options import add_device, check_folder, load_run, positive_int
from undiffuse.inference import posthoc_ema
from undiffuse.inference.ema_sweep import ema_report, ema_sweep
from undiffuse.inference.guidance_sweep import guidance_report, guidance_sweep
from undiffuse.io import checkpoint as ckpt
from undiffuse.io.checkpoint import CheckpointError
from undiffuse.inference.sweep import report, sweep
from undiffuse.metrics import evaluate as ev


def add_parser(subparsers) -> None:
    w = subparsers.add_parser("sweep", help="quality against network evaluations and wall time for several samplers",
                              description="Sample a trained run with each sampler at each NFE budget, score every "
                              "point with the evaluation suite, and write sweep.json, FD plots and a Markdown report.")
    w.add_argument("--checkpoint", required=True, help="run folder (latest checkpoint) or checkpoint folder")
    w.add_argument("--reference", default=None, help="reference set (default: the run's own data)")
    w.add_argument("--samplers", nargs="+", help=f"default: {' '.join(_SAMPLERS)} (with --ema: the run's own)")
    w.add_argument("--nfe", nargs="+", type=positive_int, help=f"NFE budgets per sample (default: "
                   f"{' '.join(map(str, _NFES))}; with --ema: the run's own steps)")
    w.add_argument("--num", type=positive_int, default=500, help="samples per point (default: 500)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--features", default="auto")
    w.add_argument("--out", default="sweep", help="output folder (default: sweep)")
    add_device(w, help="where the run samples: cpu (default), cuda, ...")
    w.add_argument("--guidance", nargs="+", type=float, metavar="SCALE",
                   help="instead: sweep these guidance scales on a class- or text-conditioned run with its own "
                        "sampler (adherence, FD, precision, recall, coverage; plots and report)")
    w.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"))
    w.add_argument("--autoguide", metavar="RUN", help="with --guidance: autoguidance scales with this weak run")
    w.add_argument("--ema", nargs="+", type=float, metavar="SIGMA_REL",
                   help="instead: score the run's own EMA and the post-hoc EMA of each of these relative lengths "
                        "(a run trained with --ema-posthoc), at each --guidance scale (conditioned runs, default 1) "
                        "or with each --samplers / --nfe point (default: the run's own); FD plot and report")

_SAMPLERS = ("heun", "dpmpp_2m", "unipc", "euler")
_NFES = (5, 10, 20)


def run(args, parser) -> int:
    bad = [n for n in args.samplers or () if n not in samplers.names()]
    if bad:
        parser.error(f"--samplers: unknown {', '.join(bad)}; allowed: {', '.join(samplers.names())}")
    if args.features not in ev.FEATURE_SPACES:
        parser.error(f"--features {args.features!r} is unknown; allowed: {', '.join(ev.FEATURE_SPACES)}")
    check_folder(parser, args.out)
    if args.ema:
        return _ema_sweep(args, parser)
    loaded = load_run(parser, args.checkpoint, device=args.device)
    spec = args.reference or loaded.config.data.name
    try:
        reference, _ = ev.load_set(spec, what="--reference", sample_rate=(loaded.audio or {}).get("sample_rate", 8000))
    except ValueError as e:
        parser.error(str(e))
    if args.guidance:
        return _guidance_sweep(args, parser, loaded, reference)
    rows = sweep(loaded, reference, samplers=args.samplers or _SAMPLERS, nfes=args.nfe or _NFES, num=args.num, seed=args.seed,
                 feature_space=args.features,
                 progress=lambda r: print(f"{r['sampler']} NFE {r['nfe']}: FD {r['fd']:.4g}"
                                          + (f", adherence {r['adherence']:.1%}" if "adherence" in r else "")
                                          + f" ({r['seconds']:.1f} s)", file=sys.stderr))
    path = report(rows, args.out, title=f"Sampler sweep: {loaded.checkpoint}", run=loaded)
    print(json.dumps({"report": path, "points": len(rows)}))
    return 0


def _guidance_sweep(args, parser, loaded, reference) -> int:
    weak = load_run(parser, args.autoguide, "--autoguide", device=args.device) if args.autoguide else None
    try:
        rows = guidance_sweep(loaded, reference, scales=args.guidance, num=args.num, seed=args.seed,
                              interval=args.guidance_interval, weak=weak, feature_space=args.features,
                              progress=lambda r: print(f"guidance {r['guidance']:g}: FD {r['fd']:.4g}"
                                                       + ("" if r["adherence"] is None
                                                          else f", adherence {r['adherence']:.1%}"), file=sys.stderr))
    except ValueError as e:
        parser.error(str(e))
    path = guidance_report(rows, args.out, title=f"Guidance sweep: {loaded.checkpoint}", run=loaded)
    print(json.dumps({"report": path, "points": len(rows)}))
    return 0


def _ema_sweep(args, parser) -> int:
    if args.autoguide or args.guidance_interval:
        parser.error("--ema sweeps EMA lengths at plain guidance scales; --autoguide and --guidance-interval are not "
                     "supported with it")
    loaded = load_run(parser, args.checkpoint, device=args.device)
    try:
        reference, _ = ev.load_set(args.reference or loaded.config.data.name, what="--reference",
                                   sample_rate=(loaded.audio or {}).get("sample_rate", 8000))
        for s in args.ema:  # every length checked before anything is sampled
            posthoc_ema.plan(ckpt.run_of(loaded.checkpoint), s, loaded.step)
        rows = ema_sweep(args.checkpoint, reference, sigma_rels=args.ema, guidance=args.guidance,
                         sampler_names=args.samplers, nfes=args.nfe, num=args.num, seed=args.seed,
                         feature_space=args.features, device=args.device,
                         progress=lambda r: print(f"{r['weights']}: FD {r['fd']:.4g}", file=sys.stderr))
    except (ValueError, CheckpointError) as e:  # PosthocError is a ValueError
        parser.error(str(e))
    path = ema_report(rows, args.out, title=f"EMA length sweep: {loaded.checkpoint}")
    print(json.dumps({"report": path, "points": len(rows)}))
    return 0
