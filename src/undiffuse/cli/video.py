"""``undiffuse predict | interpolate``: a video run continues clips or fills their middle.

``--video`` is a video file (GIF; MP4 / WebM with PyAV), a ``.npy`` / ``.npz`` array of clips
(N, T, C, H, W) with values in [0, 1] (an ``.npz`` as ``sample --format npz`` writes it), a
folder of videos, or a built-in video dataset (``moving-digits:heldout``); ``--index`` picks
clips. Output as ``sample`` writes it: one GIF per result (``--format gif``, given frames
included) and ``strip.png``, or an ``.npz`` with ``samples`` and, where the input had them,
the true frames (``truth``) and their scores (``predict``: PSNR and SSIM per horizon against
the copy-last-frame baseline).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from undiffuse import data as _data
from undiffuse.cli.options import add_device, check_file, check_folder, load_run, positive_int
from undiffuse.data.base import DataError
from undiffuse.inference import generate as gen
from undiffuse.inference import video_edit
from undiffuse.io.writers import write_samples
from undiffuse.metrics import video as video_metrics


def add_parser(subparsers) -> None:
    def common(p):
        p.add_argument("--checkpoint", required=True, help="a video run folder (latest checkpoint) or checkpoint folder")
        p.add_argument("--video", required=True, help="video file (GIF; MP4/WebM with PyAV), .npy/.npz clips "
                       "(N, T, C, H, W) in [0, 1], a folder of videos, or a built-in video dataset "
                       "(e.g. moving-digits:heldout)")
        p.add_argument("--index", help="comma list of clips of --video to use (default: all of a file, the first 8 "
                       "of a dataset)")
        p.add_argument("--num", type=positive_int, default=1, help="results per input clip (default: 1)")
        p.add_argument("--seed", type=int, default=0, help="result i uses seed + i (default: 0)")
        p.add_argument("--sampler", help="sampler (default: the run's)")
        p.add_argument("--steps", type=positive_int, help="steps (default: the run's)")
        p.add_argument("--class", dest="class_", metavar="CLASS", help="class of a class-conditional run "
                       "(default: the null class)")
        p.add_argument("--prompt", help="prompt of a text-conditioned run")
        p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the run's)")
        p.add_argument("--format", choices=("gif", "npz"), default="gif", help="gif: one GIF per result and "
                       "OUT/strip.png; npz: 'samples' (N, T, C, H, W) in [0, 1] (default: gif)")
        p.add_argument("--fps", type=positive_int, help="frames per second of the GIFs (default: the run's data)")
        p.add_argument("--out", help="output folder (gif) or file (npz) (default: the command's name)")
        p.add_argument("--weights", choices=("ema", "model"), default="ema")
        add_device(p)

    p = subparsers.add_parser("predict", help="continue video clips from their first frames",
                              description="Give the first --context frames of each clip and predict --frames more "
                              "(window by window past the run's clip length). The given frames are kept exactly.")
    common(p)
    p.add_argument("--context", type=positive_int, required=True, help="frames given (from the start of each clip)")
    p.add_argument("--frames", type=positive_int, required=True, help="frames to predict after them")

    i = subparsers.add_parser("interpolate", help="fill the missing middle frames of video clips",
                              description="Keep the frames outside --missing and generate those inside it.")
    common(i)
    i.add_argument("--missing", metavar="START:END", help="frames to generate, END excluded (default: the middle "
                   "half)")


def run(args, parser) -> int:
    usage = parser.error
    loaded = load_run(parser, args.checkpoint, weights=args.weights, device=args.device)
    if loaded.kind != "video":
        usage(f"{args.command} needs a video run; {args.checkpoint!r} makes "
              f"{'sound' if loaded.kind == 'audio' else loaded.kind + 's'}")
    if not loaded.config.model.get("frame_cond", True):
        usage(f"{args.checkpoint!r} was trained without given frames (model.frame_cond false): it can only generate")
    out = args.out or (args.command + (".npz" if args.format == "npz" else ""))
    (check_file if args.format == "npz" else check_folder)(parser, out)
    clips = _read_clips(args, usage, loaded)
    clips = clips.repeat_interleave(args.num, 0)  # input j's results are rows j*num .. j*num+num-1
    condition, den, steer = _steering(args, usage, loaded, len(clips))
    kw = {"seed": args.seed, "condition": condition, "denoiser": den, "sampler": args.sampler, "steps": args.steps}
    t = loaded.shape[0]
    params = {"command": args.command, "checkpoint": os.path.abspath(loaded.checkpoint), "step": loaded.step,
              "sampler": args.sampler or loaded.config.sample.sampler, "steps": args.steps or loaded.config.sample.steps,
              "video": args.video, **steer}
    truth, scores = None, None
    try:
        if args.command == "predict":
            if clips.shape[1] < args.context:
                usage(f"--video {args.video!r} has {clips.shape[1]} frames, fewer than --context {args.context}")
            if args.context >= t:
                usage(f"--context {args.context}: this run's clips have {t} frames, so at most {t - 1} can be given")
            x = video_edit.predict(loaded, clips[:, :args.context], args.frames, **kw)
            params.update(context=args.context, frames=args.frames)
            if clips.shape[1] > args.context:  # the true future, as far as the input goes
                truth = clips[:, :args.context + args.frames]
                scores = video_metrics.prediction_scores(gen.to_unit(x[:, :truth.shape[1]]).numpy(),
                                                         gen.to_unit(truth).numpy(), args.context)
        else:
            start, end = _missing(args, usage, t)
            if clips.shape[1] < t:
                usage(f"--video {args.video!r} has {clips.shape[1]} frames; interpolation needs the run's {t}")
            truth = clips[:, :t]
            x = video_edit.interpolate(loaded, truth, start, end, **kw)
            params["missing"] = f"{start}:{end}"
    except ValueError as e:
        usage(str(e))
    x = gen.to_unit(x)
    options = {"fps": args.fps or gen.video_fps(loaded)} if args.format == "gif" else {}
    if args.format == "npz" and truth is not None:
        options["truth"] = gen.to_unit(truth).numpy()
    written = write_samples(x, out, format=args.format, seed=args.seed, params=params, watermark=False, **options)
    if scores is not None:
        print(json.dumps({"prediction": _jsonable(scores)}))
    what = f"{out}" if args.format == "npz" else f"{len(written.items)} GIFs and {out}/strip.png in {out}/"
    print(f"wrote {what}", file=sys.stderr)
    return 0


def _missing(args, usage, frames: int) -> tuple[int, int]:
    if args.missing is None:
        return frames // 4, frames - frames // 4
    try:
        start, end = (int(v) for v in args.missing.split(":"))
    except ValueError:
        usage(f"--missing {args.missing!r} must be START:END frame numbers, e.g. 4:12")
    if not 0 <= start < end <= frames or (start, end) == (0, frames):
        usage(f"--missing {args.missing!r} must lie inside 0:{frames} (this run's clips) and keep a frame")
    return start, end


def _read_clips(args, usage, loaded) -> torch.Tensor:
    """The input clips in model space (N, t, C, H, W), checked against the run's frames."""
    _, c, h, w = loaded.image_shape
    builtin = args.video.split(":")[0] in _data.names() and not os.path.exists(args.video)
    try:  # frames of another size are an error (check_clips), except for built-in data made at the run's size
        clips = _data.video.read_clips(args.video, frames=None, image_size=(h, w) if builtin else None, channels=c)
    except (DataError, OSError) as e:
        usage(f"--video {args.video!r}: {e}")
    if args.index is not None:
        try:
            idx = [int(v) for v in args.index.split(",")]
        except ValueError:
            usage(f"--index {args.index!r} must be a comma list of clip numbers")
        bad = [i for i in idx if not 0 <= i < len(clips)]
        if bad:
            usage(f"--index {bad}: --video {args.video!r} has clips 0..{len(clips) - 1}")
        clips = clips[idx]
    elif builtin:  # a built-in dataset: its first 8 clips
        clips = clips[:8]
    x = torch.as_tensor(clips).float() / 255 * 2 - 1
    try:
        return video_edit.check_clips(loaded, x, f"--video {args.video!r}")
    except ValueError as e:
        usage(str(e))


def _steering(args, usage, loaded, n: int):
    condition, steer = {}, {}
    kind = loaded.conditioning
    if args.class_ is not None and kind != "class":
        usage(f"--class needs a class-conditional run; {args.checkpoint!r} is conditioned on {kind!r}")
    if args.prompt is not None and kind != "text":
        usage(f"--prompt needs a text-conditioned run; {args.checkpoint!r} is conditioned on {kind!r}")
    if kind == "text" and args.prompt is None:
        usage("this run is text-conditioned: give --prompt TEXT")
    guidance = loaded.config.sample.guidance if args.guidance is None else args.guidance
    try:
        if args.class_ is not None:
            condition["class_labels"] = gen.class_labels(loaded, args.class_, n)
            steer["class"] = args.class_
        if args.prompt is not None:
            condition.update(gen.prompt_condition(loaded, [args.prompt] * n))
            steer["prompt"] = args.prompt
        den = gen.guided(loaded, guidance=guidance)
    except ValueError as e:
        usage(str(e))
    if guidance != 1:
        steer["guidance"] = guidance
    return condition, den, steer


def _jsonable(scores: dict) -> dict:
    return {k: (np.asarray(v).round(6).tolist() if not isinstance(v, (int, float)) else v) for k, v in scores.items()}
