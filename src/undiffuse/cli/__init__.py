"""Command line: ``undiffuse train | sample | serve | verify | export | demo``. A thin shell over the library.

Usage errors (bad option values, unknown names, missing files) exit with status 2 and name
the option; errors during a run exit with status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from undiffuse import data as _data
from undiffuse import samplers
from undiffuse.cli import export as cli_export
from undiffuse.cli import inverse as cli_inverse
from undiffuse.cli import latent as cli_latent
from undiffuse.cli import serve as cli_serve
from undiffuse.cli.analytic_demo import run as run_analytic
from undiffuse.cli.demo import run
from undiffuse.cli.export import add_parsers as _export_parsers
from undiffuse.cli.interop import sample as sample_diffusers
from undiffuse.cli.inverse import add_parsers as _inverse_parsers
from undiffuse.cli.latent import add_parser as _latent_parser
from undiffuse.cli.latent import train_autoencoder
from undiffuse.cli.serve import add_parsers as _serve_parsers
from undiffuse.config import default_preset, parse_duration, parse_value, resolve, schedule_of
from undiffuse.core import schedules
from undiffuse.core.schedules import validate
from undiffuse.fewstep.calibrate import Calibration, calibrate
from undiffuse.fewstep.distill import consistency_distill, progressive_distill
from undiffuse.fewstep.reflow import reflow
from undiffuse.inference import generate as gen
from undiffuse.inference.guidance_sweep import guidance_report, guidance_sweep
from undiffuse.inference.sweep import report, sweep
from undiffuse.io import checkpoint as ckpt
from undiffuse.io.checkpoint import CheckpointError
from undiffuse.io.content_filter import load_filter, refusal
from undiffuse.metrics import evaluate as ev
from undiffuse.metrics.copies import copy_pairs_grid
from undiffuse.samplers.odestep import check_solver
from undiffuse.steering.classifier_guidance import load_classifier
from undiffuse.training.classifier import train_classifier
from undiffuse.training.trainer import Trainer, TrainingError
from undiffuse.utils import distributed as dist
from undiffuse.utils.acceleration import compiled, device_option
from undiffuse.utils.atomic import write_json
from undiffuse.utils.distributed import teardown


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: status 2, message names the option
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), parse_value(v)


def _sigma_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 8,0 or 80,3,0, got {text!r}") from None


# Direct options and the config key each one sets.
TRAIN_OPTIONS = {
    "max_steps": "train.max_steps", "time_budget": "train.time_budget", "seed": "train.seed",
    "batch_size": "optim.batch_size", "lr": "optim.lr", "log_every": "train.log_every",
    "checkpoint_every": "train.checkpoint_every", "keep": "train.keep", "sample_every": "train.sample_every",
    "device": "train.device", "precision": "train.precision", "parameterization": "diffusion.parameterization",
    "image_size": "data.image_size", "channels": "data.channels", "strict": "data.strict",
    "eval_every": "train.eval_every", "eval_samples": "train.eval_samples", "keep_best": "train.keep_best",
    "conditioning": "conditioning.kind", "cond_dropout": "conditioning.dropout", "compile": "train.compile",
    "channels_last": "train.channels_last",
}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="undiffuse", description="Diffusion models: train, sample, steer, measure.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a diffusion model", description="Train a model on a built-in "
                       "dataset, an image folder or a .npy/.npz file. Preset plus overrides; the resolved "
                       "config is saved as RUN/config.json.")
    t.add_argument("--data", help="built-in name (digits, mnist5k, moons, swiss_roll, checkerboard, "
                   "eight_gaussians, spirals), an image folder, or a .npy/.npz file (default: digits, or the "
                   "resumed run's own data)")
    t.add_argument("--preset", help="config preset (default: chosen from the data: digits, toy, small, base)")
    t.add_argument("--out", help="run folder (default: runs/<data name>)")
    t.add_argument("--time-budget", type=_duration, help="stop after this much training time, e.g. 5m, 90s, 1h")
    t.add_argument("--max-steps", type=_positive_int, help="stop after N optimizer steps")
    t.add_argument("--resume", nargs="?", const="auto", help="'auto' (latest complete checkpoint in --out) or "
                   "a checkpoint/run path, which must exist")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--conditioning", choices=("none", "class", "text", "lowres"),
                   help="condition the model on the class label, a caption written from it (text), or a "
                        "low-resolution copy of the image (lowres: super-resolution); default: none")
    t.add_argument("--cond-dropout", type=float, help="share of training samples shown the null class or empty "
                   "caption, for classifier-free guidance (default: 0.1)")
    t.add_argument("--seed", type=int)
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--lr", type=float)
    t.add_argument("--parameterization", help="eps, x0, v, edm or flow")
    t.add_argument("--image-size", type=_positive_int, help="resize + centre-crop images to this size")
    t.add_argument("--channels", type=int, choices=(1, 3))
    t.add_argument("--strict", action="store_true", default=None, help="a bad data file is an error, not a warning")
    t.add_argument("--log-every", type=_positive_int)
    t.add_argument("--checkpoint-every", type=_positive_int)
    t.add_argument("--keep", type=_positive_int, help="complete checkpoints to keep")
    t.add_argument("--sample-every", type=int, help="steps between sample grids (0: only at the end)")
    t.add_argument("--eval-every", type=int, help="steps between evaluations of the EMA model (FD, KID, "
                   "precision/recall, copies vs the training data; logged to JSONL and TensorBoard)")
    t.add_argument("--eval-samples", type=_positive_int, help="samples per evaluation (default: 500)")
    t.add_argument("--keep-best", action="store_true", default=None,
                   help="keep the checkpoint with the lowest evaluation FD as RUN/best")
    t.add_argument("--device", type=device_option, help="cpu, cuda, cuda:1, ... (under torchrun, cuda is each "
                   "process's own GPU; on resume the run continues on the device given, default cpu)")
    t.add_argument("--precision", choices=("fp32", "bf16"))
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the network (worth it "
                   "for long GPU runs; the first steps pay the compilation)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format for the network and its images (default: on CUDA only)")
    t.add_argument("--fsdp", action="store_true", help="under torchrun: shard the network, its gradients and "
                   "optimizer state over the processes with FSDP instead of replicating them with DDP "
                   "(checkpoints are the same either way)")
    t.add_argument("--set", dest="overrides", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set ema.halflife_samples=20000 (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--latent", action="store_true", help="latent diffusion: train on the data encoded by "
                   "--autoencoder (sampling decodes transparently)")
    t.add_argument("--autoencoder", metavar="RUN", help="with --latent: an autoencoder folder from "
                   "`undiffuse train-autoencoder`, trained on images of the same shape as --data")

    s = sub.add_parser("sample", help="sample a trained run", description="Sample a trained run with its EMA "
                       "weights and recommended sampler unless told otherwise.")
    s.add_argument("--checkpoint", help="run folder (latest checkpoint) or checkpoint folder")
    s.add_argument("--diffusers", metavar="FOLDER", help="instead of --checkpoint: a diffusers UNet2DModel with its "
                   "scheduler, saved by save_pretrained (sampler default ddim, 50 steps on the scheduler's timesteps)")
    s.add_argument("--num", type=_positive_int, default=64, help="number of samples (default: 64)")
    s.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default: 0)")
    s.add_argument("--sampler", help="sampler name (default: the run's recommendation)")
    s.add_argument("--steps", type=_positive_int, help="sampler steps (default: the run's recommendation)")
    s.add_argument("--schedule", help="sigma schedule (default: the run's recommendation)")
    s.add_argument("--sigmas", type=_sigma_list, metavar="S0,S1,...,0", help="the noise levels to step through, "
                   "decreasing and ending in 0 (replaces --steps and --schedule), e.g. 8,0: one step from sigma 8")
    s.add_argument("--calibration", help="a calibration JSON from `undiffuse calibrate` (replaces --sampler, "
                   "--steps and --schedule)")
    s.add_argument("--class", dest="class_", metavar="CLASS", help="class name or index, a comma list, or 'all' "
                   "(the count spread evenly over the classes, in order); needs a class-conditional run or "
                   "--classifier")
    s.add_argument("--prompt", help="text prompt (text-conditioned runs)")
    s.add_argument("--negative-prompt", help="prompt of the unconditional branch of classifier-free guidance "
                   "(default: the empty prompt)")
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: none, the "
                   "conditional model; 0: unconditional), or the autoguidance scale with --autoguide (default: 1)")
    s.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="apply guidance only at noise levels sigma in [LO, HI]")
    s.add_argument("--autoguide", metavar="RUN", help="guide with this weaker run of the same task (an earlier or "
                   "smaller model) instead of the unconditional branch")
    s.add_argument("--classifier", metavar="DIR", help="noise-aware classifier (`undiffuse train-classifier`) for "
                   "classifier guidance towards --class")
    s.add_argument("--classifier-scale", type=float, default=1.0, help="classifier guidance scale (default: 1)")
    s.add_argument("--format", choices=("png", "npz"), default="png",
                   help="png: OUT/grid.png and one PNG per sample with metadata; npz: array 'samples' (N, C, H, W) "
                        "in [0, 1]")
    s.add_argument("--out", help="output folder (png) or file (npz) (default: samples or samples.npz)")
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--content-filter", metavar="MODULE:CALLABLE", help="called as fn(image, request) for every "
                   "image; returning False or a reason string refuses it: not written, reported on stderr")
    s.add_argument("--weights", choices=("ema", "model"), default="ema")
    s.add_argument("--device", type=device_option, default="cpu", help="cpu (default), cuda, cuda:1, ...")
    s.add_argument("--compile", action="store_true", help="torch.compile the network first (pays off for many "
                   "samples on a GPU; compiling takes seconds to minutes)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--no-watermark", action="store_true", help="do not embed the invisible watermark in the PNGs "
                   "(the provenance metadata is still written; see `undiffuse verify`)")

    c = sub.add_parser("calibrate", help="fit a few-step sampler to a trained run (step positions and solver "
                       "weights against an accurate ODE solve)",
                       description="Fit step positions, multistep weights and noise-level shifts for STEPS network "
                       "evaluations to a trained run, against an accurate solve of its probability-flow ODE on "
                       "other noises; validated on held-out noises. Use the result with `sample --calibration`.")
    c.add_argument("--checkpoint", required=True, help="run folder (latest checkpoint) or checkpoint folder")
    c.add_argument("--steps", type=_positive_int, required=True, help="network evaluations per sample")
    c.add_argument("--out", help="calibration JSON (default: RUN/calibration_STEPS.json)")
    c.add_argument("--iters", type=_positive_int, default=100, help="optimizer iterations (default: 100)")
    c.add_argument("--train-size", type=_positive_int, default=64, help="noises fitted (default: 64)")
    c.add_argument("--val-size", type=_positive_int, default=64, help="held-out noises (default: 64)")
    c.add_argument("--seed", type=int, default=500_000, help="first noise seed (default: 500000, away from the "
                   "seeds `sample` uses by default)")
    c.add_argument("--weights", choices=("ema", "model"), default="ema")
    c.add_argument("--sampler", choices=("calibrated", "ipndm"), default="calibrated", help="the solver fitted: "
                   "calibrated (positions, weights of its multistep correction, shifts; default) or ipndm "
                   "(positions, learned weights on earlier derivatives, shifts)")
    c.add_argument("--history", help="ipndm: earlier derivatives each step may weigh, N or 'all' (default: 3)")
    c.add_argument("--screen", type=int, default=0, help="draw SCREEN times the noises and fit on the hardest half "
                   "plus a uniform draw of the rest, reweighted (heavy-tailed errors; 0: off, else >= 2)")
    c.add_argument("--device", type=device_option, default="cpu", help="cpu (default), cuda, cuda:1, ...")

    e = sub.add_parser("evaluate", help="score samples against a reference set (FD, KID, precision/recall, copies)",
                       description="Score samples against a reference set. Every number comes with its protocol.")
    e.add_argument("samples", help="samples: .npz (array 'samples' in [0, 1], as `sample --format npz` writes), "
                   ".npy, an image folder, or a built-in dataset name")
    e.add_argument("--reference", default="digits", help="built-in dataset, image folder or .npz/.npy (default: digits)")
    e.add_argument("--train", help="set searched for near-copies (default: the reference)")
    e.add_argument("--features", default="auto", help="feature space: auto, digits, pixels, inception (FID "
                   "Inception-v3; needs --inception-weights or $UNDIFFUSE_INCEPTION_WEIGHTS) (default: auto = digits "
                   "for 1x8x8 images, else pixels)")
    e.add_argument("--inception-weights", metavar="PATH", help="pt_inception-2015-12-05-6726825d.pth (checked by "
                   "SHA-256, loaded without unpickling code) or its safetensors copy; never downloaded")
    e.add_argument("--k", type=_positive_int, default=5, help="neighbours for precision/recall/density/coverage")
    e.add_argument("--kid-subsets", type=_positive_int, default=100)
    e.add_argument("--kid-subset-size", type=_positive_int, default=1000)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--device", type=device_option, default="cpu", help="where the Inception network runs "
                   "(--features inception): cpu (default), cuda, ...")
    e.add_argument("--out", help="also write the JSON to this file")
    e.add_argument("--pairs", help="write a PNG of the closest sample/training pairs (images only)")

    w = sub.add_parser("sweep", help="quality against network evaluations and wall time for several samplers",
                       description="Sample a trained run with each sampler at each NFE budget, score every point "
                       "with the evaluation suite, and write sweep.json, FD plots and a Markdown report.")
    w.add_argument("--checkpoint", required=True, help="run folder (latest checkpoint) or checkpoint folder")
    w.add_argument("--reference", default=None, help="reference set (default: the run's own data)")
    w.add_argument("--samplers", nargs="+", default=["heun", "dpmpp_2m", "unipc", "euler"])
    w.add_argument("--nfe", nargs="+", type=_positive_int, default=[5, 10, 20], help="NFE budgets per sample")
    w.add_argument("--num", type=_positive_int, default=500, help="samples per point (default: 500)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--features", default="auto")
    w.add_argument("--out", default="sweep", help="output folder (default: sweep)")
    w.add_argument("--device", type=device_option, default="cpu", help="where the run samples: cpu (default), cuda, ...")
    w.add_argument("--guidance", nargs="+", type=float, metavar="SCALE",
                   help="instead: sweep these guidance scales on a class- or text-conditioned run with its own "
                        "sampler (adherence, FD, precision, recall, coverage; plots and report)")
    w.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"))
    w.add_argument("--autoguide", metavar="RUN", help="with --guidance: autoguidance scales with this weak run")

    k = sub.add_parser("train-classifier", help="train a noise-aware classifier for classifier guidance",
                       description="Train a classifier p(class | noisy image, sigma) on labelled images (noise "
                       "levels log-uniform in [0.002, 80]); 15%% of the data is held out and the accuracy by noise "
                       "level is recorded in DIR/classifier.json. Use it with `sample --classifier DIR --class C`.")
    k.add_argument("--data", default="digits", help="labelled images: a built-in name, a folder with class "
                   "sub-folders, or an .npz with labels (default: digits)")
    k.add_argument("--out", required=True, help="output folder (model.safetensors + classifier.json)")
    k.add_argument("--max-steps", type=_positive_int, help="optimizer steps (default: 1500)")
    k.add_argument("--time-budget", type=_duration, help="or stop after this much training time")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--device", type=device_option, default="cpu", help="cpu (default), cuda, cuda:1, ...")
    k.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("distill", help="make a few-step student from a trained run (consistency, progressive, reflow)",
                       description="Train a few-step student from a trained teacher run, started from the teacher's EMA "
                       "weights. consistency: consistency distillation (Song et al. 2023), 1-step sampling with the "
                       "consistency sampler. progressive: progressive distillation (Salimans & Ho 2022), the teacher's "
                       "--steps halved --rounds times. reflow: rectified-flow reflow (Liu et al. 2023) from N noise-to-"
                       "sample pairs of the teacher's ODE. Sample the student as any run: `undiffuse sample "
                       "--checkpoint STUDENT` (its recommended sampler and steps are saved in its config).")
    r.add_argument("--method", choices=("consistency", "progressive", "reflow"), required=True,
                   help="distillation method")
    r.add_argument("--teacher", required=True, help="a trained diffusion run (reflow: a rectified-flow run, "
                   "train --parameterization flow --set diffusion.process='{\"name\": \"flow\"}')")
    r.add_argument("--out", required=True, help="student run folder (an existing one is resumed)")
    r.add_argument("--max-steps", type=_positive_int, help="student training steps (progressive: per round; "
                   "default: 1000 unless --time-budget)")
    r.add_argument("--time-budget", type=_duration, help="student training time instead, e.g. 5m (progressive: "
                   "shared by the rounds)")
    r.add_argument("--lr", type=float, help="student learning rate (default: consistency and progressive half "
                   "the teacher's, constant; reflow the teacher's)")
    r.add_argument("--sampler", help="the teacher's deterministic ODE solver (default: consistency heun, "
                   "progressive euler (= DDIM), reflow heun)")
    r.add_argument("--steps", type=_positive_int, help="the teacher solver's steps: consistency the grid's "
                   "intervals N (default 18); progressive the teacher's starting steps (default 2^rounds x 4); "
                   "reflow the coupling solves' steps (default: the teacher's)")
    r.add_argument("--rounds", type=_positive_int, default=1, help="progressive: halvings (default: 1)")
    r.add_argument("--schedule", help="progressive and reflow: the teacher's schedule (default: the teacher's)")
    r.add_argument("--couplings", type=_positive_int, default=4096, help="reflow: noise-sample pairs (default: 4096)")
    r.add_argument("--init", help="reflow: start the student from this run's EMA weights (same network) instead "
                   "of the teacher's, e.g. a reflow student for a 1-step stage with --set "
                   "diffusion.noise_sampling=sigma_max")
    r.add_argument("--couplings-file", help="reflow: a .safetensors file keeping the pairs for the next student: "
                   "read if it exists and was drawn the same way (teacher, sampler, steps, schedule, --seed), "
                   "written otherwise")
    r.add_argument("--set", dest="overrides", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="any student config key, e.g. --set objective.index_sampling=uniform (repeatable)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", type=device_option, help="where the teacher and the student run: cpu (default), "
                   "cuda, ...")
    r.add_argument("--no-progress", action="store_true")


    _inverse_parsers(sub, _positive_int)

    _latent_parser(sub, _positive_int, _duration)


    _serve_parsers(sub, _positive_int)


    _export_parsers(sub)

    d = sub.add_parser("demo", help="train on digits, sample a grid, score it (the README's main job)")
    d.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    d.add_argument("--time-budget", type=_duration, default=300.0, help="training time (default: 5m)")
    d.add_argument("--max-steps", type=_positive_int, help="train for N steps instead of a time budget")
    d.add_argument("--num", type=_positive_int, default=1797, help="samples scored (default: 1797)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--set", dest="overrides", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--analytic", action="store_true",
                   help="instead: sample an exact Gaussian-mixture model of digits with a calibrated 5-step solver")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]
    try:
        if args.command in cli_serve.COMMANDS:
            return cli_serve.run(args, sub)
        if args.command in cli_export.COMMANDS:
            return cli_export.run(args, sub)
        return {"train": _train, "sample": _sample, "evaluate": _evaluate, "calibrate": _calibrate, "sweep": _sweep,
                "demo": _demo, "inpaint": cli_inverse.run, "img2img": cli_inverse.run, "upscale": cli_inverse.run,
                "restore": cli_inverse.run, "train-classifier": _train_classifier, "distill": _distill,
                "train-autoencoder": _train_autoencoder}[args.command](args, sub)
    except KeyboardInterrupt:
        return 130


def _usage(sub, message: str):
    sub.error(message)


def _train(args, sub) -> int:
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        _usage(sub, f"--out {args.out!r} exists and is not a folder")
    if args.resume not in (None, "auto") and not os.path.exists(args.resume):
        _usage(sub, f"--resume {args.resume!r} does not exist (use --resume auto to continue the run in --out)")
    saved = _resumed_data(args) if args.resume else None

    saved_latent = cli_latent.resumed_latent(args) if args.resume else None
    cli_latent.latent_options(args, sub, saved_latent)
    if saved:  # resuming: the run's own data settings unless given again
        args.data = args.data or saved.get("name")
        args.image_size = args.image_size or saved.get("image_size")
        args.channels = args.channels or saved.get("channels")
    args.data = args.data or "digits"
    try:
        dataset = _data.load(args.data, image_size=args.image_size, channels=args.channels,
                             strict=bool(args.strict))
    except _data.DataError as e:
        _usage(sub, f"--data: {e}")
    overrides = {key: getattr(args, name) for name, key in TRAIN_OPTIONS.items() if getattr(args, name) is not None}
    if args.max_steps is not None and args.time_budget is None:
        overrides["train.time_budget"] = None
    overrides.update(dict(args.overrides))
    overrides["data.name"] = args.data
    if args.latent:  # latent diffusion: train on the encoded data
        dataset = cli_latent.latent_data(args, sub, dataset, overrides, saved_latent)
    try:
        cfg = resolve(args.preset or default_preset(dataset), dataset, overrides)
    except ValueError as e:
        _usage(sub, str(e))
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    out = args.out or os.path.join("runs", os.path.basename(os.path.normpath(args.data)).split(".")[0])
    try:
        trainer = Trainer(cfg, dataset, out, resume=args.resume, progress=not args.no_progress,
                          log=lambda m: print(m, file=sys.stderr), fsdp=args.fsdp)
    except (CheckpointError, TrainingError, ValueError) as e:
        _usage(sub, str(e))
    try:
        result = trainer.fit()
    except TrainingError as e:
        print(f"undiffuse train: error: {e}", file=sys.stderr)
        return 1
    finally:
        teardown()  # under torchrun: wait for every rank, leave the process group
    if args.fsdp and not trainer.world.distributed:
        print("undiffuse train: note: --fsdp shards over torchrun's processes; a single process trains unsharded",
              file=sys.stderr)
    if trainer.world.main:
        print(json.dumps({"run": out, **result}))
    return 0


def _distill(args, sub) -> int:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        _usage(sub, f"--out {args.out!r} exists and is not a folder")
    if not os.path.exists(args.teacher):
        _usage(sub, f"--teacher {args.teacher!r} does not exist")
    if os.path.abspath(args.teacher) == os.path.abspath(args.out):
        _usage(sub, "--out must differ from --teacher")
    if args.max_steps is not None and args.time_budget is not None:
        _usage(sub, "give --max-steps or --time-budget, not both")
    if args.schedule is not None and args.schedule not in schedules.names():
        _usage(sub, f"--schedule {args.schedule!r} is unknown; allowed: {', '.join(schedules.names())}")
    if args.lr is not None and not args.lr > 0:
        _usage(sub, f"--lr must be > 0, got {args.lr}")
    if args.method != "progressive" and args.rounds != 1:
        _usage(sub, "--rounds is for --method progressive")
    if args.couplings_file is not None and args.method != "reflow":
        _usage(sub, "--couplings-file is for --method reflow")
    if args.init is not None and args.method != "reflow":
        _usage(sub, "--init is for --method reflow")
    if args.init is not None and not os.path.isdir(args.init):
        _usage(sub, f"--init {args.init!r} is not a run folder")
    solver = args.sampler or {"consistency": "heun", "progressive": "euler", "reflow": "heun"}[args.method]
    try:
        check_solver(solver)
    except ValueError as e:
        _usage(sub, f"--sampler: {e}")
    stop = {"max_steps": args.max_steps if args.max_steps or args.time_budget else 1000,
            "time_budget": args.time_budget}
    overrides = dict(args.overrides)
    if args.device:
        overrides["train.device"] = args.device
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    common = dict(seed=args.seed, progress=not args.no_progress,
                  log=(lambda m: print(m, file=sys.stderr)) if main_rank else (lambda m: None))
    try:
        if args.method == "consistency":
            result = consistency_distill(args.teacher, args.out, solver=solver, steps=args.steps or 18, lr=args.lr,
                                         overrides=overrides, **stop, **common)
        elif args.method == "progressive":
            steps = args.steps or 4 * 2**args.rounds
            if steps % 2**args.rounds:
                _usage(sub, f"--steps {steps} must be divisible by 2^--rounds = {2**args.rounds}")
            result = progressive_distill(args.teacher, args.out, steps=steps, rounds=args.rounds, solver=solver,
                                         schedule=args.schedule, lr=args.lr, overrides=overrides, **stop, **common)
        else:
            if args.lr:
                overrides["optim.lr"] = args.lr
            try:
                result = reflow(args.teacher, args.out, n=args.couplings, sampler=solver, steps=args.steps,
                                schedule=args.schedule, overrides=overrides, couplings_file=args.couplings_file,
                                init=args.init or "ema", **stop, **common)
            except ValueError as e:  # name the CLI options, not the function's arguments
                _usage(sub, str(e).replace("couplings_file: ", "--couplings-file: ").replace("init '", "--init '"))
    except CheckpointError as e:
        _usage(sub, f"--teacher: {e}")
    except (TrainingError, ValueError) as e:
        _usage(sub, str(e))
    finally:
        # under torchrun: every rank waits for the others (rank 0 still writing) before leaving the
        # group; a rank that exits first aborts its gloo threads and torchrun fails the job
        teardown()
    if main_rank:
        print(json.dumps({"run": args.out, "method": args.method, **result}))
    return 0


def _train_autoencoder(args, sub) -> int:
    return train_autoencoder(args, sub)


def _train_classifier(args, sub) -> int:
    try:
        dataset = _data.load(args.data)
    except _data.DataError as e:
        _usage(sub, f"--data: {e}")
    if dataset.kind != "image" or dataset.labels is None:
        _usage(sub, f"--data {args.data!r}: a classifier needs labelled images")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        _usage(sub, f"--out {args.out!r} exists and is not a folder")
    steps = args.max_steps if args.max_steps or args.time_budget else 1500
    try:
        guide = train_classifier(dataset, args.out, max_steps=steps, time_budget=args.time_budget, seed=args.seed,
                                 device=args.device, progress=not args.no_progress,
                                 log=lambda m: print(m, file=sys.stderr))
    except ValueError as e:
        _usage(sub, str(e))
    print(json.dumps({"classifier": args.out, "accuracy_by_sigma": guide.meta.get("accuracy_by_sigma")}))
    return 0


def _resumed_data(args) -> dict | None:
    """The data settings saved in the run being resumed, if any."""
    path = args.out if args.resume == "auto" else args.resume
    if not path:
        return None
    try:
        return ckpt.load_checkpoint_config(path)["data"]
    except (ckpt.CheckpointError, KeyError):
        return None


def _sample(args, sub) -> int:
    if (args.checkpoint is None) == (args.diffusers is None):
        _usage(sub, "give --checkpoint RUN (an undiffuse run) or --diffusers FOLDER (a diffusers UNet2DModel), "
                    "not both")
    if args.sampler is not None and args.sampler not in samplers.names():
        _usage(sub, f"--sampler {args.sampler!r} is unknown; allowed: {', '.join(samplers.names())}")
    if args.schedule is not None and args.schedule not in schedules.names():
        _usage(sub, f"--schedule {args.schedule!r} is unknown; allowed: {', '.join(schedules.names())}")
    if args.format == "npz" and args.out and os.path.isdir(args.out):
        _usage(sub, f"--out {args.out!r} is a folder; --format npz writes a file")
    if args.format == "png" and args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        _usage(sub, f"--out {args.out!r} exists and is not a folder; --format png writes a folder")
    if args.diffusers is not None:
        return sample_diffusers(args, sub)
    content_filter = None
    if args.content_filter:
        try:
            content_filter = load_filter(args.content_filter)
        except ValueError as e:
            _usage(sub, f"--content-filter: {e}")
    out = args.out or ("samples.npz" if args.format == "npz" else "samples")
    if args.format == "npz" and os.path.isdir(out):
        _usage(sub, f"--out {out!r} is a folder; --format npz writes a file")
    if args.format == "png" and os.path.exists(out) and not os.path.isdir(out):
        _usage(sub, f"--out {out!r} exists and is not a folder; --format png writes a folder")

    world = dist.setup(args.device)  # under torchrun: seeds split over the ranks, gathered on rank 0
    args.device = dist.device_for(args.device, world)
    try:
        run = gen.load_run(args.checkpoint, weights=args.weights, device=args.device)
    except CheckpointError as e:
        _usage(sub, f"--checkpoint: {e}")
    if args.compile:
        run.denoiser.net = compiled(run.denoiser.net)
    cal = None
    if args.calibration:
        if any(v is not None for v in (args.sampler, args.steps, args.schedule)):
            _usage(sub, "--calibration replaces --sampler, --steps and --schedule; give one or the other")
        try:
            cal = Calibration.load(args.calibration)
        except (OSError, ValueError) as e:
            _usage(sub, f"--calibration: {e}")
    condition, den, steer = _steering(args, sub, run)
    if args.sigmas is not None:
        if args.steps is not None or args.schedule is not None or cal is not None:
            _usage(sub, "--sigmas replaces --steps, --schedule and --calibration; give one or the other")

        try:
            args.schedule = validate(args.sigmas, "--sigmas").tolist()
        except ValueError as e:
            _usage(sub, str(e))
    sched = schedule_of(run.config.sample, args.schedule)
    if args.steps is not None and not isinstance(sched, str) and args.steps != len(sched) - 1:
        _usage(sub, f"--steps {args.steps}: this run samples on its fixed list of {len(sched) - 1} steps "
                    f"(sample.sigmas, e.g. from progressive distillation); omit --steps or give a --schedule")
    x = gen.generate(run, args.num, seed=args.seed, sampler=args.sampler, steps=args.steps, schedule=args.schedule,
                     batch_size=args.batch_size, progress=not args.no_progress, calibration=cal,
                     condition=condition, denoiser=den)
    if world.distributed:
        dist.teardown()
        if not world.main:  # rank 0 writes everything
            return 0
    c = run.config.sample
    params = {"checkpoint": os.path.abspath(run.checkpoint), "step": run.step, "weights": run.weights,
              "sampler": args.sampler or c.sampler,
              "steps": len(args.sigmas) - 1 if args.sigmas is not None else args.steps or c.steps,
              "schedule": args.schedule or c.schedule, **steer}
    if cal is not None:
        params.update(sampler=cal.sampler, steps=cal.steps, schedule=f"calibration {os.path.abspath(args.calibration)}")
    if run.kind == "image":
        x = gen.to_unit(x)
    labels = condition.get("class_labels")
    per_image = None if labels is None else [{"class": run.class_names[k]} for k in labels.tolist()]
    keep = None
    if content_filter is not None:
        keep = _filtered(content_filter, run, x, params, args.seed, per_image)
        x = x[keep]
        labels = None if labels is None else labels[keep]
        params["refused_seeds"] = sorted(set(range(args.seed, args.seed + args.num)) - {args.seed + k for k in keep})
        if not keep:
            print("undiffuse sample: error: the content filter refused every sample; nothing written", file=sys.stderr)
            return 1
    if args.format == "npz":
        extra = {} if keep is None else {"seeds": [args.seed + k for k in keep]}
        gen.save_npz(out, x.numpy().astype(np.float32), {**params, "seed": args.seed, "count": len(x), **extra},
                     labels=None if labels is None else labels.numpy())
        print(f"wrote {out} ({len(x)} samples)", file=sys.stderr)
    elif run.kind == "image":
        gen.save_images(out, x, params, seed=args.seed, per_image=per_image, run=run, index=keep,
                        watermark=not args.no_watermark)
        print(f"wrote {out}/grid.png and {len(x)} images in {out}/", file=sys.stderr)
    else:
        os.makedirs(out, exist_ok=True)
        gen.save_png(os.path.join(out, "scatter.png"), gen.scatter(x.numpy()),
                     text={"parameters": gen.parameters_text({**params, "seed": args.seed})})
        print(f"wrote {out}/scatter.png", file=sys.stderr)
    return 0


def _filtered(fn, run, x, params, seed: int, per_image) -> list[int]:
    """Indices of the samples the content filter keeps; each refusal is reported on stderr."""
    outputs = gen.to_uint8(x) if run.kind == "image" else x.numpy()
    keep = []
    for i, out in enumerate(outputs):
        rec = gen.provenance_record(run, params, seed + i, **(per_image[i] if per_image else {}))
        reason = refusal(fn, out, {**params, **rec})
        if reason is None:
            keep.append(i)
        else:
            print(f"undiffuse sample: content filter refused seed {seed + i}: {reason}", file=sys.stderr)
    return keep


def _steering(args, sub, run):
    """Condition, guided denoiser and metadata from the sample options (usage errors exit 2)."""
    kind, steer, condition = run.conditioning, {}, {}
    if args.prompt is not None and kind != "text":
        _usage(sub, f"--prompt needs a text-conditioned run (train --conditioning text); {args.checkpoint!r} is "
                    f"conditioned on {kind!r}")
    if args.negative_prompt is not None and kind != "text":
        _usage(sub, "--negative-prompt needs a text-conditioned run")
    if kind == "text" and args.prompt is None:
        _usage(sub, "this run is text-conditioned: give --prompt (use --prompt '' for the unconditional model)")
    if kind == "lowres":
        _usage(sub, "this run is a super-resolution model: use `undiffuse upscale --checkpoint RUN --image LOW`")
    if args.classifier is None and args.class_ is not None and kind != "class":
        _usage(sub, f"--class needs a class-conditional run (train --conditioning class) or --classifier; "
                    f"{args.checkpoint!r} is conditioned on {kind!r}")
    if args.classifier is not None and args.class_ is None:
        _usage(sub, "--classifier needs --class (the class to guide towards)")
    if args.guidance_interval is not None:
        lo, hi = args.guidance_interval
        if not 0 <= lo < hi:
            _usage(sub, f"--guidance-interval needs 0 <= LO < HI, got {lo} {hi}")
        steer["guidance_interval"] = [lo, hi]
    weak = classifier = None
    if args.autoguide:
        try:
            weak = gen.load_run(args.autoguide, weights=args.weights, device=args.device)
        except CheckpointError as e:
            _usage(sub, f"--autoguide: {e}")
        steer["autoguide"] = os.path.abspath(weak.checkpoint)
    if args.classifier:
        try:
            classifier = load_classifier(args.classifier, device=args.device)
        except (OSError, ValueError) as e:
            _usage(sub, f"--classifier: {e}")
        names = list(getattr(classifier, "class_names", []) or [])
        if not run.class_names and names:
            run.class_names = tuple(names)
        steer.update(classifier=os.path.abspath(args.classifier), classifier_scale=args.classifier_scale)
    try:
        if args.class_ is not None:
            condition["class_labels"] = gen.class_labels(run, args.class_, args.num)
            steer["class"] = args.class_
        if args.prompt is not None:
            condition.update(gen.prompt_condition(run, args.prompt))
            steer["prompt"] = args.prompt
            if args.negative_prompt is not None:
                steer["negative_prompt"] = args.negative_prompt
        den = gen.guided(run, guidance=args.guidance, interval=args.guidance_interval,
                         negative_prompt=args.negative_prompt, weak=weak, classifier=classifier,
                         classifier_scale=args.classifier_scale if classifier is not None else 0.0)
    except ValueError as e:
        _usage(sub, str(e))
    if args.guidance != 1 or weak is not None:
        steer["guidance"] = args.guidance
    return condition, den, steer


def _int_or(text: str):
    try:
        return int(text)
    except ValueError:
        return text  # calibrate() names what is allowed


def _calibrate(args, sub) -> int:
    if args.out and os.path.isdir(args.out):
        _usage(sub, f"--out {args.out!r} is a folder; give a file name")
    try:
        run = gen.load_run(args.checkpoint, weights=args.weights, device=args.device)
    except CheckpointError as e:
        _usage(sub, f"--checkpoint: {e}")
    if args.history is not None and args.sampler != "ipndm":
        _usage(sub, "--history is for --sampler ipndm")
    history = None if args.history is None else (args.history if args.history == "all" else _int_or(args.history))
    s = run.config.sample
    try:
        cal = calibrate(run.denoiser, run.shape, args.steps, sigma_min=s.sigma_min, sigma_max=s.sigma_max,
                        train_size=args.train_size, val_size=args.val_size, seed=args.seed, iters=args.iters,
                        reference_rtol=1e-5, sampler=args.sampler, history=history, screen=args.screen,
                        learn_weights=True if args.sampler == "ipndm" else None, device=args.device)
    except ValueError as e:
        _usage(sub, f"{e} (check --history, --screen)")
    cal.meta.update({"checkpoint": os.path.abspath(run.checkpoint), "step": run.step, "weights": run.weights})
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(run.checkpoint)), f"calibration_{args.steps}.json")
    cal.save(out)
    best = min(cal.baseline.items(), key=lambda kv: kv[1])
    print(json.dumps({"calibration": out, "steps": args.steps, "val_rmse": cal.val_rmse,
                      "best_fixed_schedule": {best[0]: best[1]}}))
    print(f"wrote {out}; sample with: undiffuse sample --checkpoint {args.checkpoint} --calibration {out}",
          file=sys.stderr)
    return 0


def _sweep(args, sub) -> int:
    bad = [n for n in args.samplers if n not in samplers.names()]
    if bad:
        _usage(sub, f"--samplers: unknown {', '.join(bad)}; allowed: {', '.join(samplers.names())}")
    if args.features not in ev.FEATURE_SPACES:
        _usage(sub, f"--features {args.features!r} is unknown; allowed: {', '.join(ev.FEATURE_SPACES)}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        _usage(sub, f"--out {args.out!r} exists and is not a folder")
    try:
        run = gen.load_run(args.checkpoint, device=args.device)
    except CheckpointError as e:
        _usage(sub, f"--checkpoint: {e}")
    spec = args.reference or run.config.data.name
    try:
        reference, _ = ev.load_set(spec, what="--reference")
    except ValueError as e:
        _usage(sub, str(e))
    if args.guidance:
        return _guidance_sweep(args, sub, run, reference)
    rows = sweep(run, reference, samplers=args.samplers, nfes=args.nfe, num=args.num, seed=args.seed,
                 feature_space=args.features,
                 progress=lambda r: print(f"{r['sampler']} NFE {r['nfe']}: FD {r['fd']:.4g} ({r['seconds']:.1f} s)",
                                          file=sys.stderr))
    path = report(rows, args.out, title=f"Sampler sweep: {run.checkpoint}")
    print(json.dumps({"report": path, "points": len(rows)}))
    return 0


def _guidance_sweep(args, sub, run, reference) -> int:
    weak = None
    if args.autoguide:
        try:
            weak = gen.load_run(args.autoguide, device=args.device)
        except CheckpointError as e:
            _usage(sub, f"--autoguide: {e}")
    try:
        rows = guidance_sweep(run, reference, scales=args.guidance, num=args.num, seed=args.seed,
                              interval=args.guidance_interval, weak=weak, feature_space=args.features,
                              progress=lambda r: print(f"guidance {r['guidance']:g}: FD {r['fd']:.4g}"
                                                       + ("" if r["adherence"] is None
                                                          else f", adherence {r['adherence']:.1%}"), file=sys.stderr))
    except ValueError as e:
        _usage(sub, str(e))
    path = guidance_report(rows, args.out, title=f"Guidance sweep: {run.checkpoint}")
    print(json.dumps({"report": path, "points": len(rows)}))
    return 0


def _evaluate(args, sub) -> int:
    if args.features not in ev.FEATURE_SPACES:
        _usage(sub, f"--features {args.features!r} is unknown; allowed: {', '.join(ev.FEATURE_SPACES)}")
    if args.inception_weights:
        os.environ["UNDIFFUSE_INCEPTION_WEIGHTS"] = args.inception_weights
    for opt, path in (("--out", args.out), ("--pairs", args.pairs)):
        if path and os.path.isdir(path):
            _usage(sub, f"{opt} {path!r} is a folder; give a file name")
    try:
        samples, _ = ev.load_set(args.samples, what="samples")
        reference, ref_desc = ev.load_set(args.reference, what="--reference")
        train = ev.load_set(args.train, what="--train")[0] if args.train else None
        result = ev.evaluate(samples, reference, feature_space=args.features, train=train, k=args.k,
                             kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                             reference_name=f"{args.reference}: {ref_desc}", labels=ev.requested_labels(args.samples),
                             device=args.device)
    except ValueError as e:
        _usage(sub, str(e))
    out = ev.to_json(result)
    out["protocol"]["samples_file"] = args.samples
    if args.out:
        write_json(args.out, out)
    if args.pairs:
        if samples.ndim != 4:
            _usage(sub, "--pairs needs image samples")

        pairs = copy_pairs_grid(samples, train if train is not None else reference, result["_copies"], k=16)
        gen.save_png(args.pairs, (np.asarray(pairs).reshape(*pairs.shape[:2], -1) * 255).round().astype(np.uint8),
                     scale=4)
    if args.json:
        print(json.dumps(out))
    else:
        print("\n".join(ev.summary_lines(result)))
    return 0


def _demo(args, sub) -> int:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        _usage(sub, f"--out {args.out!r} exists and is not a folder")
    if args.analytic:
        scores = run_analytic(args.out, seed=args.seed)
        print(json.dumps(scores, indent=1))
        return 0

    try:
        scores = run(args.out, time_budget=None if args.max_steps else args.time_budget, max_steps=args.max_steps,
                     num=args.num, seed=args.seed, overrides=dict(args.overrides), progress=not args.no_progress,
                     log=lambda m: print(m, file=sys.stderr))
    except ValueError as e:
        _usage(sub, str(e))
    print(json.dumps(scores, indent=1))
    print(f"wrote {scores['grid']}, {args.out}/scores.json and checkpoints in {args.out}/checkpoints",
          file=sys.stderr)
    return 0

