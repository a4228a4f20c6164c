"""Command line: ``undiffuse COMMAND``. A thin shell over the library.

One module per subcommand (``inverse`` holds inpaint, img2img, upscale and restore; ``video`` predict and
interpolate), each
with ``add_parser(subparsers)`` and ``run(args, parser) -> int``; what they share is in
``options``. Usage errors (bad option values, unknown names, missing files) exit with status
2 and name the option; errors during a run exit with status 1.
"""
from __future__ import annotations

from undiffuse.cli import (
    calibrate,
    demo,
    distill,
    ema,
    evaluate,
    export,
    inverse,
    sample,
    serve,
    sweep,
    train,
    train_autoencoder,
    train_classifier,
    train_control,
    verify,
    video,
)
from undiffuse.cli.options import Parser

# In the order `undiffuse --help` lists them.
COMMANDS = (train, sample, calibrate, evaluate, sweep, ema, train_classifier, train_control, distill, inverse, video,
            train_autoencoder, serve, verify, export, demo)


def main(argv=None) -> int:
    parser = Parser(prog="undiffuse", description="Diffusion models: train, sample, steer, measure.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    owner = {}  # command name -> its module
    for module in COMMANDS:
        known = set(subparsers.choices)
        module.add_parser(subparsers)
        owner.update(dict.fromkeys(set(subparsers.choices) - known, module))
    args = parser.parse_args(argv)
    try:
        return owner[args.command].run(args, subparsers.choices[args.command])
    except KeyboardInterrupt:
        return 130
