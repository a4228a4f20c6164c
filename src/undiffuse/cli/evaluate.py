"""``undiffuse evaluate``: score samples against a reference set (Frechet distance, KID,
precision/recall, density/coverage, near-copies); every number comes with its protocol."""
from __future__ import annotations

import json
import os

import numpy as np

from undiffuse.cli.options import add_device, check_file, positive_int
from undiffuse.inference import generate as gen
from undiffuse.metrics import evaluate as ev
from undiffuse.metrics.copies import copy_pairs_grid
from undiffuse.steering import text
from undiffuse.utils.atomic import write_json


def add_parser(subparsers) -> None:
    e = subparsers.add_parser("evaluate", help="score samples against a reference set (FD, KID, precision/recall, "
                              "copies)", description="Score samples against a reference set. Every number comes "
                              "with its protocol.")
    e.add_argument("samples", help="samples: .npz (array 'samples' in [0, 1], as `sample --format npz` writes), "
                   ".npy, an image folder, or a built-in dataset name")
    e.add_argument("--reference", default="digits", help="built-in dataset, image folder or .npz/.npy (default: "
                   "digits)")
    e.add_argument("--train", help="set searched for near-copies (default: the reference)")
    e.add_argument("--features", default="auto", help="feature space: auto, digits, mnist (the in-project mnist5k classifier, 1x28x28), pixels, emoji (the in-project "
                   "image-text scorer; adds clip_score and prompt_accuracy when the npz holds prompts), inception (FID "
                   "Inception-v3; needs --inception-weights or $UNDIFFUSE_INCEPTION_WEIGHTS), spoken-digits (the "
                   "in-project spoken-digit classifier on log-mel spectrograms; adds is, and adherence with labels), "
                   "video (clips (N, T, 1, H, W): per-frame fd, clip_fd, identity, motion; reference e.g. "
                   "moving-digits or moving-digits:heldout, rendered at the clips' size and frame count) "
                   "(default: auto = emoji for --reference emoji, spoken-digits for waveforms (N, 1, T), video for "
                   "clips (N, T, C, H, W), digits for 1x8x8 images, mnist for 1x28x28, else pixels)")
    e.add_argument("--inception-weights", metavar="PATH", help="pt_inception-2015-12-05-6726825d.pth (checked by "
                   "SHA-256, loaded without unpickling code) or its safetensors copy; never downloaded")
    e.add_argument("--sample-rate", type=int, choices=(8000, 16000), help="sound: the samples' sample rate "
                   "(default: what the .npz records, else 8000)")
    e.add_argument("--k", type=positive_int, default=5, help="neighbours for precision/recall/density/coverage")
    e.add_argument("--kid-subsets", type=positive_int, default=100)
    e.add_argument("--kid-subset-size", type=positive_int, default=1000)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    add_device(e, help="where the Inception network runs (--features inception): cpu (default), cuda, ...")
    e.add_argument("--out", help="also write the JSON to this file")
    e.add_argument("--pairs", help="write a PNG of the closest sample/training pairs (images only)")


def run(args, parser) -> int:
    if args.features not in ev.FEATURE_SPACES:
        parser.error(f"--features {args.features!r} is unknown; allowed: {', '.join(ev.FEATURE_SPACES)}")
    if args.inception_weights:
        os.environ["UNDIFFUSE_INCEPTION_WEIGHTS"] = args.inception_weights
    for opt, path in (("--out", args.out), ("--pairs", args.pairs)):
        check_file(parser, path, opt)
    space = args.features
    if space == "auto" and args.reference.split(":")[0] == "emoji":
        space = "emoji"
    prompts = ev.requested_prompts(args.samples) if space == "emoji" else None
    controls, extractors = ev.requested_controls(args.samples)
    try:
        samples, _ = ev.load_set(args.samples, what="samples")
        size = samples.shape[-1] if space == "emoji" and samples.ndim == 4 else None  # emoji renders at any size
        frames = None
        if samples.ndim == 5:  # clips: the reference at the samples' frame size and count
            size, frames = tuple(samples.shape[-2:]), samples.shape[1]
        rate = args.sample_rate or ev.sample_rate_of(args.samples) or 8000  # sound: the samples' own rate
        reference, ref_desc = ev.load_set(args.reference, what="--reference", image_size=size, sample_rate=rate,
                                          frames=frames)
        train = ev.load_set(args.train, what="--train")[0] if args.train else None
        result = ev.evaluate(samples, reference, feature_space=space, train=train, k=args.k,
                             kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                             reference_name=f"{args.reference}: {ref_desc}", labels=ev.requested_labels(args.samples),
                             device=args.device, prompts=prompts, controls=controls, control_extractors=extractors,
                             sentence=text.sentence_embeddings if space == "emoji" else None, sample_rate=rate)
    except ValueError as e:
        parser.error(str(e))
    out = ev.to_json(result)
    out["protocol"]["samples_file"] = args.samples
    if args.out:
        write_json(args.out, out)
    if args.pairs:
        if samples.ndim != 4:
            parser.error("--pairs needs image samples")

        pairs = copy_pairs_grid(samples, train if train is not None else reference, result["_copies"], k=16)
        gen.save_png(args.pairs, (np.asarray(pairs).reshape(*pairs.shape[:2], -1) * 255).round().astype(np.uint8),
                     scale=4)
    if args.json:
        print(json.dumps(out))
    else:
        print("\n".join(ev.summary_lines(result)))
    return 0
