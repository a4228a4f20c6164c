"""``undiffuse train-classifier``: a noise-aware classifier p(class | noisy image, sigma) for
classifier guidance (``undiffuse sample --classifier DIR --class C``)."""
from __future__ import annotations

import json

from undiffuse import data as _data
from undiffuse.cli.options import add_device, check_folder, duration, log, positive_int
from undiffuse.training.classifier import train_classifier


def add_parser(subparsers) -> None:
    k = subparsers.add_parser("train-classifier", help="train a noise-aware classifier for classifier guidance",
                              description="Train a classifier p(class | noisy image, sigma) on labelled images "
                              "(noise levels log-uniform in [0.002, 80]); 15%% of the data is held out and the "
                              "accuracy by noise level is recorded in DIR/classifier.json. Use it with `sample "
                              "--classifier DIR --class C`.")
    k.add_argument("--data", default="digits", help="labelled images: a built-in name, a folder with class "
                   "sub-folders, or an .npz with labels (default: digits)")
    k.add_argument("--out", required=True, help="output folder (model.safetensors + classifier.json)")
    k.add_argument("--max-steps", type=positive_int, help="optimizer steps (default: 1500)")
    k.add_argument("--time-budget", type=duration, help="or stop after this much training time")
    k.add_argument("--seed", type=int, default=0)
    add_device(k)
    k.add_argument("--no-progress", action="store_true")


def run(args, parser) -> int:
    try:
        dataset = _data.load(args.data)
    except _data.DataError as e:
        parser.error(f"--data: {e}")
    if dataset.kind != "image" or dataset.labels is None:
        parser.error(f"--data {args.data!r}: a classifier needs labelled images")
    check_folder(parser, args.out)
    steps = args.max_steps if args.max_steps or args.time_budget else 1500
    try:
        guide = train_classifier(dataset, args.out, max_steps=steps, time_budget=args.time_budget, seed=args.seed,
                                 device=args.device, progress=not args.no_progress, log=log)
    except ValueError as e:
        parser.error(str(e))
    print(json.dumps({"classifier": args.out, "accuracy_by_sigma": guide.meta.get("accuracy_by_sigma")}))
    return 0
