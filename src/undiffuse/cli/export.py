"""``undiffuse export RUN --format onnx``: the command-line side of ``undiffuse.inference.export``."""
from __future__ import annotations

import json
import os
import sys

from undiffuse.cli.options import check_file, load_run, log
from undiffuse.inference.export import FORMATS, QUANTIZATIONS, export_onnx
from undiffuse.inference.generate import expert_path
from undiffuse.io.checkpoint import find_checkpoint, run_of


def add_parser(subparsers) -> None:
    e = subparsers.add_parser("export", help="export a run's denoiser network (ONNX)",
                              description="Write the run's network (with its noise-level input, a dynamic batch axis "
                              "and the denoiser settings in its metadata) as ONNX. Sample it through onnxruntime with "
                              "undiffuse.inference.export.load_onnx_denoiser(FILE) and any sampler.")
    e.add_argument("run", metavar="RUN", help="run folder (latest checkpoint) or checkpoint folder")
    e.add_argument("--format", choices=FORMATS, required=True, help="export format")
    e.add_argument("--out", help="output file (default: RUN/model.onnx, or RUN/model-int8.onnx)")
    e.add_argument("--quantize", choices=QUANTIZATIONS, help="int8: onnxruntime dynamic quantisation")
    e.add_argument("--weights", choices=("ema", "model"), default="ema")


def run(args, parser) -> int:
    loaded = load_run(parser, args.run, "RUN", weights=args.weights, experts=False)
    expert = loaded.config.sample.expert
    if expert:  # a pair is two networks; ONNX holds one
        log(f"note: {args.run!r} samples with its high-noise expert {expert!r} above sigma "
            f"{loaded.config.sample.expert_above:g}; this file holds only its own network, for the levels at and "
            f"below it (export the expert as well: undiffuse export {expert_path(run_of(loaded.checkpoint), expert)} ...)")
    name = "model-int8.onnx" if args.quantize else "model.onnx"
    out = args.out or os.path.join(run_of(find_checkpoint(args.run)), name)
    check_file(parser, out)
    try:
        export_onnx(loaded, out, quantize=args.quantize)
    except ImportError as e:
        print(f"undiffuse export: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        parser.error(str(e))
    print(json.dumps({"onnx": out, "checkpoint": loaded.checkpoint, "step": loaded.step, "weights": loaded.weights,
                      "quantize": args.quantize}))
    return 0
