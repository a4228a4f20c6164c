"""``undiffuse sample``: sample a trained run with its EMA weights and recommended sampler
unless told otherwise, optionally steered (class, prompt, classifier-free guidance,
autoguidance, classifier guidance), and write the samples (PNG grid and images with their
parameters, or ``--format npz``).

``--diffusers FOLDER`` instead samples a diffusers ``UNet2DModel`` (saved by
``save_pretrained`` with its scheduler) with any undiffuse sampler, written the same way.
Its steps are placed as the folder's scheduler places its inference timesteps unless
``--schedule`` names an undiffuse schedule. Sample ``i`` starts from the standard-normal draw
of seed ``seed + i``, so a sample does not depend on the batch it was computed in.
"""
from __future__ import annotations

import math
import os
import sys

import torch

from undiffuse import samplers
from undiffuse.cli.options import add_device, load_content_filter, load_run, log, positive_int, sigma_list
from undiffuse.config import schedule_of
from undiffuse.core import schedules
from undiffuse.core.noise import noise as make_noise
from undiffuse.core.schedules import get_sigmas, validate
from undiffuse.fewstep.calibrate import Calibration
from undiffuse.inference import generate as gen
from undiffuse.inference import control as ctl
from undiffuse.inference.interop import load_diffusers, sample_diffusers
from undiffuse.io.checkpoint import CheckpointError
from undiffuse.io.writers import write_samples
from undiffuse.samplers import driver
from undiffuse.steering.classifier_guidance import load_classifier
from undiffuse.utils import distributed as dist
from undiffuse.utils.acceleration import compiled

# sample options that need an undiffuse run (its conditioning, its recommended settings, its checksum)
_RUN_ONLY = {"class_": "--class", "prompt": "--prompt", "prompts": "--prompts", "negative_prompt": "--negative-prompt",
             "autoguide": "--autoguide", "classifier": "--classifier", "calibration": "--calibration",
             "guidance_interval": "--guidance-interval", "content_filter": "--content-filter", "expert": "--expert"}


def add_parser(subparsers) -> None:
    s = subparsers.add_parser("sample", help="sample a trained run", description="Sample a trained run with its "
                              "EMA weights and recommended sampler unless told otherwise.")
    s.add_argument("--checkpoint", help="run folder (latest checkpoint) or checkpoint folder")
    s.add_argument("--diffusers", metavar="FOLDER", help="instead of --checkpoint: a diffusers UNet2DModel with its "
                   "scheduler, saved by save_pretrained (sampler default ddim, 50 steps on the scheduler's timesteps)")
    s.add_argument("--num", type=positive_int, help="number of samples (default: 64, or one per line of --prompts)")
    s.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default: 0)")
    s.add_argument("--sampler", help="sampler name (default: the run's recommendation)")
    s.add_argument("--steps", type=positive_int, help="sampler steps (default: the run's recommendation)")
    s.add_argument("--schedule", help="sigma schedule (default: the run's recommendation)")
    s.add_argument("--sigmas", type=sigma_list, metavar="S0,S1,...,0", help="the noise levels to step through, "
                   "decreasing and ending in 0 (replaces --steps and --schedule), e.g. 8,0: one step from sigma 8")
    s.add_argument("--calibration", help="a calibration JSON from `undiffuse calibrate` (replaces --sampler, "
                   "--steps and --schedule)")
    s.add_argument("--class", dest="class_", metavar="CLASS", help="class name or index, a comma list, or 'all' "
                   "(the count spread evenly over the classes, in order); needs a class-conditional run or "
                   "--classifier")
    s.add_argument("--prompt", help="text prompt (text-conditioned runs)")
    s.add_argument("--prompts", metavar="FILE", help="a text file with one prompt per line: one sample per line, in "
                   "order (the npz holds them as 'prompts')")
    s.add_argument("--negative-prompt", help="prompt of the unconditional branch of classifier-free guidance "
                   "(default: the empty prompt)")
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale (1: none, the conditional model; "
                   "0: unconditional), or the autoguidance scale with --autoguide (default: the run's recommendation, "
                   "1 for most runs; 1 with --autoguide)")
    s.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="apply guidance only at noise levels sigma in [LO, HI]")
    s.add_argument("--autoguide", metavar="RUN", help="guide with this weaker run of the same task (an earlier or "
                   "smaller model) instead of the unconditional branch")
    s.add_argument("--expert", metavar="RUN", help="a second run of the same task that denoises every noise level "
                   "above --expert-above; --checkpoint does the rest (experts by noise level, as eDiff-I's or SDXL's "
                   "base and refiner). A run trained with `train --experts` names its own (default); 'none' samples "
                   "--checkpoint alone")
    s.add_argument("--expert-above", type=float, metavar="SIGMA", help="the noise level where --expert hands over "
                   "to --checkpoint (default: the run's, else 1)")
    s.add_argument("--classifier", metavar="DIR", help="noise-aware classifier (`undiffuse train-classifier`) for "
                   "classifier guidance towards --class")
    s.add_argument("--classifier-scale", type=float, default=1.0, help="classifier guidance scale (default: 1)")
    s.add_argument("--format", choices=("png", "npz", "wav", "gif"),
                   help="png: OUT/grid.png and one PNG per sample with metadata; wav (sound runs): one 16-bit WAV "
                        "per clip with its parameters in the file's comment, and OUT/spectrograms.png; gif (video "
                        "runs): one animated GIF per clip with its parameters in the file's comment (and an MP4 with "
                        "--mp4), and OUT/strip.png, a row of frames per clip; npz: array 'samples' (N, C, H, W) in "
                        "[0, 1], for sound (N, 1, T) waveforms in [-1, 1], for video (N, T, C, H, W) in [0, 1] "
                        "(default: png, wav for sound runs, gif for video runs)")
    s.add_argument("--fps", type=positive_int, help="video: frames per second of the GIF / MP4 (default: the "
                   "training data's)")
    s.add_argument("--mp4", action="store_true", help="video: also write an MP4 per clip (needs PyAV: pip install av)")
    s.add_argument("--out", help="output folder (png) or file (npz) (default: samples or samples.npz)")
    s.add_argument("--batch-size", type=positive_int, default=256)
    s.add_argument("--content-filter", metavar="MODULE:CALLABLE", help="called as fn(image, request) for every "
                   "image; returning False or a reason string refuses it: not written, reported on stderr")
    s.add_argument("--weights", choices=("ema", "model"), default="ema")
    s.add_argument("--control", action="append", metavar="CTRL", help="join this control adapter (a run from "
                   "`undiffuse train-control` on --checkpoint) to the run; repeat to combine several")
    s.add_argument("--control-image", action="append", metavar="FILE", help="an image (or a folder of images) each "
                   "adapter's extractor turns into its control map; one sample per image, in order; repeatable. A "
                   "control run given as --checkpoint uses its own adapter")
    s.add_argument("--control-scale", type=float, action="append", metavar="S",
                   help="strength of each adapter, in --control order (default 1; 0 is the base alone)")
    s.add_argument("--control-is-map", action="store_true", help="the control images are ready maps (e.g. an edge "
                   "drawing), not pictures for the extractor")
    s.add_argument("--ema", type=float, metavar="SIGMA_REL", help="use the post-hoc EMA of this relative length "
                   "(a run trained with --ema-posthoc; rebuilt into RUN/ema/ if not there yet, see `undiffuse ema`)")
    add_device(s)
    s.add_argument("--compile", action="store_true", help="torch.compile the network first (pays off for many "
                   "samples on a GPU; compiling takes seconds to minutes)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--no-watermark", action="store_true", help="do not embed the invisible watermark in the PNGs "
                   "(the provenance metadata is still written; see `undiffuse verify`)")


def run(args, parser) -> int:
    _check_options(args, parser)
    num_given = args.num
    _read_prompts(args, parser)
    if args.diffusers is not None:
        args.format = args.format or "png"
        return _sample_diffusers(args, parser)
    content_filter = load_content_filter(parser, args.content_filter)
    world = dist.setup(args.device)  # under torchrun: seeds split over the ranks, gathered on rank 0
    args.device = dist.device_for(args.device, world)
    loaded = load_run(parser, args.checkpoint, weights=args.weights, device=args.device, ema_sigma_rel=args.ema,
                      experts=args.expert is None)
    _check_format(args, parser, loaded)
    out = _out_path(args, parser)
    control = _control(args, parser, loaded, num_given)
    if args.compile:  # each network of an expert pair
        for den in (loaded.denoiser.inner, loaded.denoiser.high) if loaded.expert else (loaded.denoiser,):
            den.net = compiled(den.net)
    cal = _calibration(args, parser)
    condition, den, steer = _steering(args, parser, loaded)
    if control is not None:
        condition.update(ctl.condition(loaded, control["maps"].to(args.device)))
        steer["control"] = control["record"]
    _check_schedule(args, parser, loaded, cal)
    _report_levels(args, loaded, cal)
    x = gen.generate(loaded, args.num, seed=args.seed, sampler=args.sampler, steps=args.steps,
                     schedule=args.schedule, batch_size=args.batch_size, progress=not args.no_progress,
                     calibration=cal, condition=condition, denoiser=den)
    if world.distributed:
        dist.teardown()
        if not world.main:  # rank 0 writes everything
            return 0
    params = _params(args, loaded, cal, steer)
    if loaded.kind in ("image", "video"):
        x = gen.to_unit(x)
    elif loaded.kind == "audio":
        x = gen.to_sound(x, loaded)  # waveforms (a mel run's spectrograms through Griffin-Lim)
    return _write_samples(args, out, x, params, loaded=loaded, labels=condition.get("class_labels"),
                          prompts=args.prompt_list, content_filter=content_filter, control=control)


# ----------------------------------------------------------------------------- options

def _read_prompts(args, parser) -> None:
    """``args.prompt_list``: one prompt per sample (``--prompts``, or ``--prompt`` repeated), or None;
    ``args.num`` completed (64 unless ``--prompts`` gives the count)."""
    args.prompt_list = None
    if args.prompt is not None and not args.prompt.strip():
        parser.error("--prompt is empty; give a caption (for the unconditional model use --guidance 0 with any "
                     "prompt)")
    if args.prompts is None:
        args.num = args.num or 64
        if args.prompt is not None:
            args.prompt_list = [args.prompt] * args.num
        return
    if args.prompt is not None:
        parser.error("give --prompt (one prompt for every sample) or --prompts FILE (one per line), not both")
    try:
        with open(args.prompts, encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as e:
        parser.error(f"--prompts {args.prompts!r}: cannot read it ({e})")
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines
    if not lines:
        parser.error(f"--prompts {args.prompts!r} has no prompts; write one prompt per line")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            parser.error(f"--prompts {args.prompts!r} line {number} is empty; every line is one sample's prompt")
    if args.num is not None and args.num != len(lines):
        parser.error(f"--num {args.num} and --prompts {args.prompts!r} ({len(lines)} lines) disagree: --prompts "
                     f"draws one sample per line; omit --num")
    args.num, args.prompt_list = len(lines), [line.strip() for line in lines]


def _check_options(args, parser) -> None:
    """The checks that need no run (usage errors exit 2)."""
    if (args.checkpoint is None) == (args.diffusers is None):
        parser.error("give --checkpoint RUN (an undiffuse run) or --diffusers FOLDER (a diffusers UNet2DModel), "
                     "not both")
    if args.ema is not None and (args.weights != "ema" or args.diffusers is not None):
        parser.error("--ema SIGMA_REL replaces an undiffuse run's EMA weights; it cannot be combined with "
                     "--weights model or --diffusers")
    if args.sampler is not None and args.sampler not in samplers.names():
        parser.error(f"--sampler {args.sampler!r} is unknown; allowed: {', '.join(samplers.names())}")
    if args.schedule is not None and args.schedule not in schedules.names():
        parser.error(f"--schedule {args.schedule!r} is unknown; allowed: {', '.join(schedules.names())}")
    if args.format == "npz" and args.out and os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} is a folder; --format npz writes a file")
    if args.format != "npz" and args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} exists and is not a folder; --format {args.format or 'png'} writes a folder")


def _check_format(args, parser, loaded) -> None:
    """The output format fits what the run makes (default: wav for sound, gif for video, png otherwise)."""
    native = {"audio": "wav", "video": "gif"}.get(loaded.kind, "png")
    args.format = args.format or native
    if args.format not in (native, "npz"):
        what = {"png": "pictures", "wav": "sound", "gif": "video clips"}[args.format]
        parser.error(f"--format {args.format} writes {what}; {args.checkpoint!r} makes "
                     f"{'sound' if loaded.kind == 'audio' else loaded.kind + 's'}: use --format {native} or npz")
    if loaded.kind != "video" and (args.fps is not None or args.mp4):
        parser.error(f"--fps and --mp4 are for video runs; {args.checkpoint!r} makes "
                     f"{'sound' if loaded.kind == 'audio' else loaded.kind + 's'}")


def _out_path(args, parser) -> str:
    out = args.out or ("samples.npz" if args.format == "npz" else "samples")
    if args.format == "npz" and os.path.isdir(out):
        parser.error(f"--out {out!r} is a folder; --format npz writes a file")
    if args.format == "png" and os.path.exists(out) and not os.path.isdir(out):
        parser.error(f"--out {out!r} exists and is not a folder; --format png writes a folder")
    return out


def _calibration(args, parser) -> Calibration | None:
    if not args.calibration:
        return None
    if any(v is not None for v in (args.sampler, args.steps, args.schedule)):
        parser.error("--calibration replaces --sampler, --steps and --schedule; give one or the other")
    try:
        return Calibration.load(args.calibration)
    except (OSError, ValueError) as e:
        parser.error(f"--calibration: {e}")


def _check_schedule(args, parser, loaded, cal) -> None:
    """``--sigmas`` becomes the schedule, else a student's picked levels for the steps asked
    (``args.recorded``); ``--steps`` must fit a run's fixed list of noise levels."""
    args.recorded = None
    if args.sigmas is not None:
        if args.steps is not None or args.schedule is not None or cal is not None:
            parser.error("--sigmas replaces --steps, --schedule and --calibration; give one or the other")

        try:
            args.schedule = validate(args.sigmas, "--sigmas").tolist()
        except ValueError as e:
            parser.error(str(e))
    elif cal is None:  # a student's picked levels for this many steps, unless told otherwise
        args.recorded = gen.recorded_levels(loaded, sampler=args.sampler, steps=args.steps, schedule=args.schedule)
        args.schedule = args.recorded or args.schedule
    sched = schedule_of(loaded.config.sample, args.schedule)
    if args.steps is not None and not isinstance(sched, str) and args.steps != len(sched) - 1:
        parser.error(f"--steps {args.steps}: this run samples on its fixed list of {len(sched) - 1} steps "
                     f"(sample.sigmas, e.g. from progressive distillation); omit --steps or give a --schedule")


def _report_levels(args, loaded, cal) -> None:
    """Say on stderr which noise levels the samples go through, and where they come from."""
    c = loaded.config.sample
    if cal is not None:
        sigmas, why = cal.sigmas, f"from the calibration {args.calibration}"
    elif args.recorded:
        sigmas, why = args.recorded, _picked_note(loaded, args.recorded)
    else:
        try:
            sigmas = driver.schedule_of(loaded.denoiser, schedule_of(c, args.schedule), args.steps or c.steps,
                                        c.sigma_min, c.sigma_max).tolist()
        except ValueError:  # generate names the problem
            return
        why = ("given by --sigmas" if args.sigmas is not None else "the run's fixed levels"
               if (args.schedule or c.schedule) == "custom" else f"schedule {args.schedule or c.schedule}")
    print(f"undiffuse sample: {args.sampler or c.sampler}, {len(sigmas) - 1} step{'s' * (len(sigmas) > 2)} on "
          f"sigmas {_fmt(sigmas)} ({why})", file=sys.stderr)


def _picked_note(loaded, sigmas) -> str:
    """Where a student's picked levels come from, with their score and the old default's."""
    rec, steps = loaded.levels, str(len(sigmas) - 1)
    fd = {tuple(r["sigmas"]): r["fd"] for r in rec.get("candidates", {}).get(steps, [])}
    old = rec.get("default", {}).get(steps)
    note = "picked for this student" + (f", FD {fd[tuple(sigmas)]:.4g} on its validation batch"
                                        if fd.get(tuple(sigmas)) is not None else "")
    if old and fd.get(tuple(old)) is not None and list(old) != list(sigmas):
        note += f"; the default {_fmt(old)}: FD {fd[tuple(old)]:.4g}"
    return f"{note}; all scores in {os.path.join(loaded.checkpoint, 'levels.json')}; --sigmas overrides"


def _fmt(sigmas) -> str:
    v = [f"{float(s):.4g}" for s in sigmas]
    return ", ".join(v) if len(v) <= 8 else f"{', '.join(v[:3])}, ..., {', '.join(v[-2:])} ({len(v)} levels)"


def _params(args, loaded, cal, steer: dict) -> dict:
    """The sampling parameters recorded with the samples."""
    c = loaded.config.sample
    params = {"checkpoint": os.path.abspath(loaded.checkpoint), "step": loaded.step, "weights": loaded.weights,
              "sampler": args.sampler or c.sampler,
              "steps": len(args.sigmas) - 1 if args.sigmas is not None else args.steps or c.steps,
              "schedule": args.schedule or c.schedule, **steer}
    if cal is not None:
        params.update(sampler=cal.sampler, steps=cal.steps, schedule=f"calibration {os.path.abspath(args.calibration)}")
    if loaded.audio is not None:
        params.update(sample_rate=loaded.audio["sample_rate"], representation=loaded.audio["representation"])
    return params


# ----------------------------------------------------------------------------- steering

def _control(args, parser, loaded, num_given) -> dict | None:
    """Control adapters joined or scaled and the maps of ``--control-image`` (one sample per
    image: ``args.num`` becomes their count); None without control images."""
    if not args.control_image:
        for given, flag in ((args.control, "--control"), (args.control_scale, "--control-scale"),
                            (args.control_is_map or None, "--control-is-map")):
            if given:
                parser.error(f"{flag} needs --control-image FILE (the image each adapter's extractor reads, or a "
                             f"ready map with --control-is-map)")
        return None
    try:
        if args.control:
            ctl.join(loaded, args.control, args.control_scale or [1.0] * len(args.control))
        elif args.control_scale:
            ctl.set_scales(loaded, args.control_scale)
        files = ctl.image_files(args.control_image)
        maps = ctl.maps_for(loaded, files, is_map=args.control_is_map, note=log)
    except (ctl.ControlError, CheckpointError) as e:
        parser.error(str(e))
    if num_given is not None and num_given != len(files):
        parser.error(f"--num {num_given} and --control-image ({len(files)} images) disagree: one sample is drawn per "
                     f"control image; omit --num")
    if args.prompts is not None and len(args.prompt_list) != len(files):
        parser.error(f"--prompts has {len(args.prompt_list)} lines for {len(files)} control images; give one per image")
    args.num = len(files)
    if args.prompt is not None:
        args.prompt_list = [args.prompt] * args.num
    adapters = ctl.adapters_of(loaded)
    m = loaded.config.model
    record = {"extractors": [a.extractor for a in adapters], "scales": list(m.get("scales", [1.0])),
              "runs": m.get("control_runs", [os.path.abspath(loaded.checkpoint)]),
              "images": [os.path.abspath(f) for f in files], "is_map": bool(args.control_is_map)}
    return {"maps": maps, "record": record, "channels": [a.extractor for a in adapters for _ in range(a.channels)]}


def _steering(args, parser, loaded):
    """Condition, guided denoiser and metadata from the sample options (usage errors exit 2)."""
    steer, condition = {}, {}
    _check_conditioning(args, parser, loaded.conditioning)
    if args.guidance_interval is not None:
        lo, hi = args.guidance_interval
        if not 0 <= lo < hi:
            parser.error(f"--guidance-interval needs 0 <= LO < HI, got {lo} {hi}")
        steer["guidance_interval"] = [lo, hi]
    weak, classifier = _guides(args, parser, loaded, steer)
    if args.guidance is None:  # the run's recommendation (for classifier-free guidance)
        args.guidance = 1.0 if weak is not None else loaded.config.sample.guidance
    _experts(args, parser, loaded, steer)
    try:
        if args.class_ is not None:
            condition["class_labels"] = gen.class_labels(loaded, args.class_, args.num)
            steer["class"] = args.class_
        if args.prompt_list is not None:
            condition.update(gen.prompt_condition(loaded, args.prompt if args.prompts is None else args.prompt_list))
            steer["prompt" if args.prompts is None else "prompts"] = args.prompt or os.path.abspath(args.prompts)
            if args.negative_prompt is not None:
                steer["negative_prompt"] = args.negative_prompt
        den = gen.guided(loaded, guidance=args.guidance, interval=args.guidance_interval,
                         negative_prompt=args.negative_prompt, weak=weak, classifier=classifier,
                         classifier_scale=args.classifier_scale if classifier is not None else 0.0)
    except ValueError as e:
        parser.error(str(e))
    if args.guidance != 1 or weak is not None:
        steer["guidance"] = args.guidance
    return condition, den, steer


def _check_conditioning(args, parser, kind: str) -> None:
    """The steering options the run's conditioning allows."""
    for given, flag in ((args.prompt, "--prompt"), (args.prompts, "--prompts")):
        if given is not None and kind != "text":
            parser.error(f"{flag} needs a text-conditioned run (train --conditioning text); {args.checkpoint!r} is "
                         f"conditioned on {kind!r}")
    if args.negative_prompt is not None and kind != "text":
        parser.error("--negative-prompt needs a text-conditioned run")
    if kind == "text" and args.prompt_list is None:
        parser.error("this run is text-conditioned: give --prompt TEXT or --prompts FILE")
    if kind == "lowres":
        parser.error("this run is a super-resolution model: use `undiffuse upscale --checkpoint RUN --image LOW`")
    if args.classifier is None and args.class_ is not None and kind != "class":
        parser.error(f"--class needs a class-conditional run (train --conditioning class) or --classifier; "
                     f"{args.checkpoint!r} is conditioned on {kind!r}")
    if args.classifier is not None and args.class_ is None:
        parser.error("--classifier needs --class (the class to guide towards)")


def _guides(args, parser, loaded, steer: dict):
    """The weak run of ``--autoguide`` and the classifier of ``--classifier`` (None when not
    given), recorded in ``steer``."""
    weak = classifier = None
    if args.autoguide:
        weak = load_run(parser, args.autoguide, "--autoguide", weights=args.weights, device=args.device)
        steer["autoguide"] = os.path.abspath(weak.checkpoint)
    if args.classifier:
        try:
            classifier = load_classifier(args.classifier, device=args.device)
        except (OSError, ValueError) as e:
            parser.error(f"--classifier: {e}")
        names = list(getattr(classifier, "class_names", []) or [])
        if not loaded.class_names and names:
            loaded.class_names = tuple(names)
        steer.update(classifier=os.path.abspath(args.classifier), classifier_scale=args.classifier_scale)
    return weak, classifier


def _experts(args, parser, loaded, steer: dict) -> None:
    """``--expert RUN``: the run's denoiser becomes RUN's above ``--expert-above`` and its own
    below (``generate.join_expert``); without it, the expert the run names (joined by
    ``load_run``, its hand-off level replaced by ``--expert-above``); ``none``: the run alone.
    The pair is recorded in ``steer``."""
    if args.expert is None and loaded.expert is None or args.expert == "none":
        if args.expert_above is not None:
            parser.error("--expert-above needs an expert: --expert RUN, or a run trained with `train --experts`")
        return
    if args.expert_above is not None and not (args.expert_above > 0 and math.isfinite(args.expert_above)):
        parser.error(f"--expert-above must be a noise level > 0, got {args.expert_above}")
    if args.expert is None:  # the run's own pair
        if args.expert_above is not None:
            loaded.denoiser.above = loaded.expert["above"] = args.expert_above
    else:
        high = load_run(parser, args.expert, "--expert", weights=args.weights, device=args.device, experts=False)
        try:
            gen.join_expert(loaded, high, 1.0 if args.expert_above is None else args.expert_above)
        except ValueError as e:
            parser.error(f"--expert {args.expert!r}: {e}")
    steer.update(expert=loaded.expert["checkpoint"], expert_above=loaded.expert["above"],
                 expert_sha256=loaded.expert["sha256"])


# ----------------------------------------------------------------------------- --diffusers

def _sample_diffusers(args, parser) -> int:
    given = [flag for name, flag in _RUN_ONLY.items() if getattr(args, name, None) is not None]
    if args.guidance not in (None, 1.0):
        given.append("--guidance")
    if given:
        parser.error(f"{', '.join(given)} cannot be used with --diffusers (an unconditional diffusers UNet2DModel); "
                     "they need an undiffuse run (--checkpoint)")
    if dist.env_world().distributed:
        parser.error("--diffusers samples in one process; run it without torchrun")
    sampler, steps = args.sampler or "ddim", args.steps or 50
    out = args.out or ("samples.npz" if args.format == "npz" else "samples")
    try:
        model = load_diffusers(args.diffusers, device=args.device)
    except (FileNotFoundError, OSError, ValueError) as e:
        parser.error(f"--diffusers: {e}")
    except ImportError as e:
        print(f"undiffuse sample: error: {e}", file=sys.stderr)
        return 1
    sigmas = None
    if args.schedule is not None:
        try:
            sigmas = get_sigmas(args.schedule, steps, process=model.denoiser.process)
        except ValueError as e:
            parser.error(f"--schedule: {e}")
    parts = []
    for start in range(0, args.num, args.batch_size):
        seeds = list(range(args.seed + start, args.seed + min(start + args.batch_size, args.num)))
        z = make_noise((len(seeds), *model.shape), seed=seeds, device=args.device)
        parts.append(sample_diffusers(model, z, sampler=sampler, steps=steps, seed=seeds, sigmas=sigmas).float().cpu())
    x = gen.to_unit(torch.cat(parts))
    params = {"diffusers": os.path.abspath(args.diffusers), "sampler": sampler, "steps": steps,
              "schedule": args.schedule or f"scheduler ({model.scheduler_config.get('_class_name', '?')} timesteps)"}
    return _write_samples(args, out, x, params)


# ----------------------------------------------------------------------------- output

def _write_samples(args, out: str, x, params: dict, *, loaded=None, labels=None, prompts=None,
                   content_filter=None, control=None) -> int:
    """The samples ``x`` (images in [0, 1], or vectors) of the run ``loaded`` (None for
    ``--diffusers``) through the one output path (``io.writers.write_samples``: content filter,
    file with metadata, provenance, watermark) as ``--format`` asks. Status 1 when the filter
    refuses every sample."""
    per_image = None if labels is None else [{"class": loaded.class_names[k]} for k in labels.tolist()]
    if prompts is not None and args.prompts is not None:  # one prompt shared by all is in params already
        per_image = [{**(per_image[i] if per_image else {}), "prompt": p} for i, p in enumerate(prompts)]
    records = None if loaded is None else [
        gen.provenance_record(loaded, params, args.seed + i, **(per_image[i] if per_image else {}))
        for i in range(len(x))]
    options = {}
    if args.format == "npz":
        options = {"labels": None if labels is None else labels.numpy(), "prompts": prompts}
        if control is not None:
            options.update(controls=control["maps"].numpy(), control_extractors=control["channels"])
    if args.format == "wav":
        options = {"sample_rate": loaded.audio["sample_rate"]}
    if args.format == "gif":
        options = {"fps": args.fps or gen.video_fps(loaded), "mp4": args.mp4}
    written = write_samples(x, out, format=args.format, seed=args.seed, params=params, per_sample=per_image,
                            records=records, content_filter=content_filter, watermark=not args.no_watermark,
                            **options)
    for no in written.refused:
        print(f"undiffuse sample: content filter refused seed {no['seed']}: {no['reason']}", file=sys.stderr)
    if not written.items:
        print("undiffuse sample: error: the content filter refused every sample; nothing written", file=sys.stderr)
        return 1
    n = len(written.items)
    if args.format == "npz":
        print(f"wrote {out} ({n} samples)", file=sys.stderr)
    elif args.format == "wav":
        print(f"wrote {n} WAV files and {out}/spectrograms.png in {out}/", file=sys.stderr)
    elif args.format == "gif":
        print(f"wrote {n} GIF{' and MP4' if args.mp4 else ''} files and {out}/strip.png in {out}/", file=sys.stderr)
    elif loaded is None or loaded.kind == "image":
        print(f"wrote {out}/grid.png and {n} images in {out}/", file=sys.stderr)
    else:
        print(f"wrote {out}/scatter.png", file=sys.stderr)
    return 0
