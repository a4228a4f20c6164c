"""``undiffuse train``: train a model on a built-in dataset, an image folder or an array file,
from a preset plus overrides. ``--latent --autoencoder RUN``: latent diffusion on the data
encoded by an autoencoder from ``undiffuse train-autoencoder``; ``--latent`` alone first trains
one into ``OUT/autoencoder`` for a share of the budget (``training.latent_route``). The emoji
and mnist5k data take that route unless ``--no-latent`` or ``--preset`` says otherwise: it
measured best on a CPU (BENCHMARKS.md). The resolved config is fitted to the budget
(``training.budget``); ``--dry-run`` prints the choices."""
from __future__ import annotations

import argparse
import json
import os
import sys

from undiffuse import data as _data
from undiffuse.cli.options import add_device, add_set, check_folder, duration, log, positive_int
from undiffuse.config import POSTHOC_DEFAULT, default_preset, resolve
from undiffuse.fewstep.levels import DEFAULT_SEARCH, after_training
from undiffuse.inference.codec import AutoencoderError, LatentDataset, load_autoencoder
from undiffuse.io import checkpoint as ckpt
from undiffuse.io.checkpoint import CheckpointError
from undiffuse.training.budget import fit_budget, fit_stopping, keep_saved_fit
from undiffuse.training.latent_route import (AE_SHARE, AUTOENCODER, autoencoder_for, latent_overrides, planned_codec,
                                             rest_of_budget)
from undiffuse.training.trainer import Trainer, TrainingError
from undiffuse.training.expert_route import (ABOVE, GUIDANCE, HIGH, HIGH_PRESET, HIGH_SHARE, LOW_PRESET, finished,
                                             high_budget, high_state, low_overrides, rest_of_budget as expert_rest,
                                             save_plan, saved_plan)
from undiffuse.utils.distributed import barrier, env_world, teardown

# Direct options and the config key each one sets.
_TRAIN_OPTIONS = {
    "max_steps": "train.max_steps", "time_budget": "train.time_budget", "seed": "train.seed",
    "batch_size": "optim.batch_size", "lr": "optim.lr", "log_every": "train.log_every",
    "checkpoint_every": "train.checkpoint_every", "keep": "train.keep", "sample_every": "train.sample_every",
    "device": "train.device", "precision": "train.precision", "parameterization": "diffusion.parameterization",
    "image_size": "data.image_size", "channels": "data.channels", "strict": "data.strict",
    "eval_every": "train.eval_every", "eval_samples": "train.eval_samples", "keep_best": "train.keep_best",
    "conditioning": "conditioning.kind", "cond_dropout": "conditioning.dropout", "compile": "train.compile",
    "channels_last": "train.channels_last", "ema_posthoc_every": "ema.posthoc_every",
    "control": "conditioning.control", "sample_rate": "data.sample_rate", "representation": "data.representation",
    "frames": "data.frames",
}


def add_parser(subparsers) -> None:
    t = subparsers.add_parser("train", help="train a diffusion model", description="Train a model on a built-in "
                              "dataset, an image folder or a .npy/.npz file. Preset plus overrides; the resolved "
                              "config is saved as RUN/config.json.")
    t.add_argument("--data", help="built-in name (digits, mnist5k, emoji, spoken-digits, notes, chords, moving-digits, moons, swiss_roll, checkerboard, "
                   "eight_gaussians, spirals), a folder of images or of sound files (.wav/.flac/.ogg), or a .npy/.npz file (default: digits, or the "
                   "resumed run's own data)")
    t.add_argument("--preset", help="config preset (default: chosen from the data: digits, toy, small, base)")
    t.add_argument("--out", help="run folder (default: runs/<data name>)")
    t.add_argument("--time-budget", type=duration, help="stop after this much training time, e.g. 5m, 90s, 1h")
    t.add_argument("--max-steps", type=positive_int, help="stop after N optimizer steps")
    t.add_argument("--resume", nargs="?", const="auto", help="'auto' (latest complete checkpoint in --out) or "
                   "a checkpoint/run path, which must exist")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--conditioning", choices=("none", "class", "text", "lowres"),
                   help="condition the model on the class label, a caption written from it (text), or a "
                        "low-resolution copy of the image (lowres: super-resolution); default: none")
    t.add_argument("--cond-dropout", type=float, help="share of training samples shown the null class or empty "
                   "caption, for classifier-free guidance (default: 0.1)")
    t.add_argument("--seed", type=int)
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--lr", type=float)
    t.add_argument("--parameterization", help="eps, x0, v, edm or flow")
    t.add_argument("--image-size", type=positive_int, help="resize + centre-crop images to this size")
    t.add_argument("--channels", type=int, choices=(1, 3))
    t.add_argument("--sample-rate", type=int, choices=_data.audio.SAMPLE_RATES, help="sound: sample rate in Hz (default 8000: "
                   "clips of 8192 samples, 1.024 s; 16000: 16384 samples)")
    t.add_argument("--representation", choices=_data.audio.REPRESENTATIONS, help="sound: what the model generates: wave "
                   "(samples, a 1-D U-Net) or mel (log-mel spectrograms, a 2-D U-Net, turned into sound by "
                   "Griffin-Lim); default: mel, which reached a far lower fd than wave at equal time (BENCHMARKS.md)")
    t.add_argument("--frames", type=positive_int, help="video: frames per clip (default 16)")
    t.add_argument("--strict", action="store_true", default=None, help="a bad data file or an image without a "
                   "caption (caption files) is an error, not a warning")
    t.add_argument("--log-every", type=positive_int)
    t.add_argument("--checkpoint-every", type=positive_int)
    t.add_argument("--keep", type=positive_int, help="complete checkpoints to keep")
    t.add_argument("--sample-every", type=int, help="steps between sample grids (0: only at the end)")
    t.add_argument("--eval-every", type=int, help="steps between evaluations of the EMA model (FD, KID, "
                   "precision/recall, copies vs the training data; logged to JSONL and TensorBoard)")
    t.add_argument("--eval-samples", type=positive_int, help="samples per evaluation (default: 500)")
    t.add_argument("--keep-best", action="store_true", default=None,
                   help="keep the checkpoint with the lowest evaluation FD as RUN/best")
    add_device(t, default=None, help="cpu, cuda, cuda:1, ... (under torchrun, cuda is each process's own GPU; on "
               "resume the run continues on the device given, default cpu)")
    t.add_argument("--precision", choices=("fp32", "bf16"))
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the network (worth it "
                   "for long GPU runs; the first steps pay the compilation)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format for the network and its images (default: on CUDA only)")
    t.add_argument("--fsdp", action="store_true", help="under torchrun: shard the network, its gradients and "
                   "optimizer state over the processes with FSDP instead of replicating them with DDP "
                   "(checkpoints are the same either way)")
    t.add_argument("--control", metavar="EXTRACTOR", help="also condition on a control map (edges, sketch, mask, "
                   "layout, lowres) of each training image, concatenated to the network's input (for latent runs on "
                   "the latent grid, space to depth); sample with --control-image. To steer a trained run instead, "
                   "see train-control")
    t.add_argument("--ema-posthoc", nargs="*", type=float, metavar="SIGMA_REL",
                   help="also track power-function EMAs of these relative lengths (default 0.05 0.10) and store "
                        "snapshots of them in RUN/ema/snapshots, so that `undiffuse ema RUN --sigma-rel S` (and "
                        "sample/sweep --ema S) can rebuild the EMA of any length after training (EDM2's post-hoc "
                        "EMA; costs a network copy per length in memory and a file per snapshot)")
    t.add_argument("--ema-posthoc-every", type=positive_int, metavar="STEPS",
                   help="steps between post-hoc EMA snapshots (default: about 32 over the run, plus one with each "
                        "checkpoint)")
    add_set(t, help="any config key, e.g. --set ema.halflife_samples=20000 (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--latent", action=argparse.BooleanOptionalAction, default=None,
                   help="latent diffusion: train on the data encoded by --autoencoder, or without it first train "
                        f"an autoencoder into OUT/autoencoder for {AE_SHARE * 100:.0f}%% of --time-budget / --max-steps "
                        "(sampling decodes transparently). Default: on for --data emoji and mnist5k without --preset, else off")
    t.add_argument("--autoencoder", metavar="RUN", help="with --latent: an autoencoder folder from "
                   "`undiffuse train-autoencoder`, trained on images of the same shape as --data")
    t.add_argument("--experts", action=argparse.BooleanOptionalAction, default=None,
                   help=f"sound as mel spectrograms: train two experts by noise level, a 1-D U-Net over the frames "
                        f"for sigma above {ABOVE:g} into OUT/{HIGH} ({HIGH_PRESET}, {HIGH_SHARE * 100:.0f}%% of --time-budget "
                        f"/ --max-steps) then the 2-D mel U-Net below it into OUT ({LOW_PRESET}); sample, serve and "
                        f"inpaint use the pair (with guidance {GUIDANCE:g} for class or text runs). Default: on for "
                        f"--data spoken-digits --conditioning class without --preset, where it measured best "
                        f"(BENCHMARKS.md), else off")


def run(args, parser) -> int:
    check_folder(parser, args.out)
    if args.resume not in (None, "auto") and not os.path.exists(args.resume):
        parser.error(f"--resume {args.resume!r} does not exist (use --resume auto to continue the run in --out)")
    dataset, overrides = _dataset(args, parser)
    if _experts_wanted(args, parser, dataset):
        return _train_experts(args, parser, dataset, overrides)
    try:
        cfg = resolve(args.preset or default_preset(dataset), dataset, overrides)
    except ValueError as e:
        parser.error(str(e))
    _split_budget(args, cfg, dataset)
    cfg = _fit_budget(args, cfg, dataset, overrides)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    return _fit(args, parser, cfg, dataset, _out_folder(args))


def _dataset(args, parser):
    """The training data (encoded by --autoencoder with --latent) and the config overrides the
    options make. A resumed run keeps its own data and autoencoder unless they are given again."""
    saved = _resumed_data(args) if args.resume else None
    saved_latent = _resumed_latent(args) if args.resume else None
    _latent_options(args, parser, saved_latent)
    if saved:  # resuming: the run's own data settings unless given again
        args.data = args.data or saved.get("name")
        args.image_size = args.image_size or saved.get("image_size")
        args.channels = args.channels or saved.get("channels")
        args.sample_rate = args.sample_rate or saved.get("sample_rate")
        args.representation = args.representation or saved.get("representation")
        args.frames = args.frames or saved.get("frames")
    args.data = args.data or "digits"
    try:
        dataset = _data.load(args.data, image_size=args.image_size, channels=args.channels,
                             strict=bool(args.strict), sample_rate=args.sample_rate or 8000,
                             representation=args.representation or "mel", frames=args.frames or 16)
    except _data.DataError as e:
        parser.error(f"--data: {e}")
    overrides = {key: getattr(args, name) for name, key in _TRAIN_OPTIONS.items() if getattr(args, name) is not None}
    if args.max_steps is not None and args.time_budget is None:
        overrides["train.time_budget"] = None
    if args.ema_posthoc is not None:  # the flag alone: the two lengths EDM2 tracks
        overrides["ema.posthoc"] = args.ema_posthoc or list(POSTHOC_DEFAULT)
    overrides.update(dict(args.overrides))
    overrides["data.name"] = args.data
    if args.latent is None:  # the data's own route
        args.latent = bool(args.autoencoder) or (args.preset is None and _latent_by_default(dataset))
    if args.latent and not args.autoencoder and args.dry_run:  # the shapes of the route, nothing trained
        return _planned_latent_data(args, parser, dataset, overrides), overrides
    if args.latent and not args.autoencoder:  # latent diffusion with its own autoencoder, trained first
        args.autoencoder = _own_autoencoder(args, parser, dataset, overrides)
    if args.latent:  # latent diffusion: train on the encoded data
        dataset = _latent_data(args, parser, dataset, overrides, saved_latent)
    return dataset, overrides


def _fit_budget(args, cfg, dataset, overrides: dict, saved: dict | None = None, default_preset: bool | None = None):
    """The config fitted to the run's budget (``training.budget``), each choice logged; a run
    being resumed (``saved``: its config, default the one in --out) keeps its saved fit (only the
    stopping rule is applied again), and under torchrun nothing is measured (every process must
    choose alike)."""
    explicit = set(overrides) - {"data.name"}
    saved = _resumed_config(args) if saved is None else saved
    if default_preset is None:
        default_preset = args.preset is None
    if saved is not None:
        cfg = keep_saved_fit(cfg, saved, explicit)
    if saved is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        reasons = fit_stopping(cfg, explicit)
    else:
        fit = fit_budget(cfg, dataset.shape, explicit, default_preset=default_preset)
        cfg, reasons = fit.config, fit.reasons
    for reason in reasons:
        log(f"budget: {reason}")
    return cfg


def _fit(args, parser, cfg, dataset, out: str, *, resume=None, last: bool = True, extra: dict | None = None):
    """Train ``cfg`` into ``out`` and print the result as JSON (rank 0; ``extra`` joins it);
    returns the exit status. A first stage (``last`` False) that ends normally returns its
    result instead, prints nothing and keeps the process group for the next stage.
    ``resume``: default ``--resume``."""
    try:
        trainer = Trainer(cfg, dataset, out, resume=args.resume if resume is None else resume,
                          progress=not args.no_progress, log=log, fsdp=args.fsdp)
    except (CheckpointError, TrainingError, ValueError) as e:
        parser.error(str(e))
    try:
        result = trainer.fit()
    except TrainingError as e:
        teardown()
        print(f"undiffuse train: error: {e}", file=sys.stderr)
        return 1
    except BaseException:
        teardown()
        raise
    if not last and not result["interrupted"]:
        barrier(trainer.world)  # rank 0's last checkpoint is written before any rank reads it
        return result
    teardown()  # under torchrun: wait for every rank, leave the process group
    if args.fsdp and not trainer.world.distributed:
        print("undiffuse train: note: --fsdp shards over torchrun's processes; a single process trains unsharded",
              file=sys.stderr)
    if trainer.world.main and cfg.objective.kind != "denoising":  # a few-step student: its 1- and 2-step levels
        result = after_training(result, out, DEFAULT_SEARCH, device=cfg.train.device, log=log)
    if trainer.world.main:
        print(json.dumps({"run": out, **result, **(extra or {})}))
    return 0


def _resumed_config(args) -> dict | None:
    """The saved config of the run being resumed, if any."""
    path = args.out if args.resume == "auto" else args.resume
    if not path:
        return None
    try:
        return ckpt.load_checkpoint_config(path)
    except (ckpt.CheckpointError, KeyError):
        return None


def _resumed_data(args) -> dict | None:
    """The data settings saved in the run being resumed (or in its high-noise expert, for a pair
    stopped in its first stage), if any."""
    saved = _resumed_config(args)
    if saved is None and args.resume == "auto" and args.out:
        saved = (high_state(args.out) or {}).get("config")
    return (saved or {}).get("data")


# ----------------------------------------------------------------------------- latent diffusion

def _latent_options(args, parser, saved: dict | None) -> None:
    """Check ``--latent`` / ``--autoencoder``; a resumed latent run keeps its own autoencoder."""
    bad = [k for k, _ in getattr(args, "overrides", []) if k.startswith("latent.")]
    if bad:
        parser.error(f"--set {bad[0]}: the latent section is written by --latent --autoencoder RUN, not by --set")
    saved_ae = (saved or {}).get("autoencoder")
    if saved_ae and not args.latent and not args.autoencoder:
        args.latent, args.autoencoder = True, saved_ae
    if args.autoencoder and args.latent is False:
        parser.error(f"--autoencoder {args.autoencoder!r} is only used for latent diffusion; drop --no-latent "
                     f"or drop --autoencoder")


_LATENT_BY_DEFAULT = ("emoji", "mnist5k", "moving-digits")  # BENCHMARKS.md: latent vs pixels at equal time on each


def _latent_by_default(dataset) -> bool:
    """Data whose measured best route is latent diffusion: the emoji and mnist5k images, the
    moving-digits clips."""
    return dataset.kind in ("image", "video") and dataset.name.split(":")[0] in _LATENT_BY_DEFAULT


def _own_autoencoder(args, parser, dataset, overrides: dict) -> str:
    """``--latent`` without ``--autoencoder``: the run's ``OUT/autoencoder``, trained now for
    ``AE_SHARE`` of the budget unless it is there already (a resumed run); the diffusion model
    gets the rest of the budget (``training.latent_route``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error("--latent without --autoencoder trains the autoencoder in one process; under torchrun train it "
                     "first with `undiffuse train-autoencoder` and pass --autoencoder RUN")
    if dataset.kind not in ("image", "video"):
        parser.error(f"--latent: an autoencoder needs image or video data; --data {args.data!r} holds {dataset.kind}s")
    out = _out_folder(args)
    if args.resume is None and os.path.isdir(os.path.join(out, ckpt.CHECKPOINTS)):  # before training anything
        parser.error(f"{out!r} already holds checkpoints; pass --resume auto to continue it or choose another --out")
    budget, steps = overrides.get("train.time_budget", "preset"), overrides.get("train.max_steps")
    if budget == "preset":  # the preset's own budget, as the diffusion stage would use it
        budget = resolve(args.preset or default_preset(dataset), dataset, {}).train.time_budget
    if budget is None and steps is None:
        parser.error("--latent without --autoencoder needs --time-budget or --max-steps to split between the "
                     "autoencoder and the diffusion model")
    try:
        codec = autoencoder_for(dataset, out, time_budget=budget, max_steps=steps, seed=int(overrides.get(
            "train.seed", 0)), log=log)
    except ValueError as e:
        parser.error(f"--latent: {e}")
    log(f"latent diffusion on {codec.path} (--no-latent trains on pixels)")
    return codec.path


def _planned_latent_data(args, parser, dataset, overrides: dict):
    """``--dry-run`` of a route that trains its own autoencoder: the data encoded by the untrained
    autoencoder it would train (``latent_route.planned_codec``), so the printed config has the
    real latent shapes and budget split; the autoencoder's checksum and scale are not known yet."""
    if dataset.kind not in ("image", "video"):
        parser.error(f"--latent: an autoencoder needs image or video data; --data {args.data!r} holds {dataset.kind}s")
    budget = overrides.get("train.time_budget", "preset")
    if budget == "preset":
        budget = resolve(args.preset or default_preset(dataset), dataset, {}).train.time_budget
    try:
        codec = planned_codec(dataset, _out_folder(args), time_budget=budget)
        latents = LatentDataset(dataset, codec)
    except ValueError as e:
        parser.error(f"--latent: {e}")
    log(f"dry run: latent diffusion on {codec.latent_shape} latents of the autoencoder the run would train "
        f"first into {codec.path} ({AE_SHARE:.0%} of the budget)")
    overrides.update({**latent_overrides(codec), "latent.sha256": None, "latent.scale_factor": None})
    return latents


def _split_budget(args, cfg, dataset) -> None:
    """A run with its own autoencoder (``OUT/autoencoder``, trained by ``--latent`` alone): the
    diffusion stage gets what the autoencoder left of the budget, fresh or resumed alike."""
    own = os.path.realpath(os.path.join(_out_folder(args), AUTOENCODER))
    codec = getattr(dataset, "codec", None)
    if codec is not None and codec.path and os.path.realpath(codec.path) == own:
        cfg.train.time_budget, cfg.train.max_steps = rest_of_budget(cfg.train.time_budget, cfg.train.max_steps, codec)


def _out_folder(args) -> str:
    return args.out or os.path.join("runs", os.path.basename(os.path.normpath(args.data)).split(".")[0])


def _latent_data(args, parser, dataset, overrides: dict, saved: dict | None = None):
    """The dataset encoded by ``--autoencoder`` and the config overrides that record it; usage
    errors (not an autoencoder, images of another shape) exit 2."""
    try:
        codec = load_autoencoder(args.autoencoder)
    except AutoencoderError as e:
        parser.error(f"--autoencoder: {e}")
    if saved and saved.get("sha256") and saved["sha256"] != codec.sha256:
        parser.error(f"--autoencoder {args.autoencoder!r} is not the autoencoder the resumed run was trained with "
                     f"(weights SHA-256 {codec.sha256[:16]}..., the run recorded {saved['sha256'][:16]}...)")
    frame = tuple(dataset.shape[1:] if dataset.kind == "video" else dataset.shape)
    if dataset.kind not in ("image", "video") or frame != codec.image_shape:
        parser.error(f"--autoencoder {args.autoencoder!r} was trained on images of shape {codec.image_shape} "
                     f"({codec.meta.get('data', {}).get('name')}); --data {args.data!r} has items of shape "
                     f"{tuple(dataset.shape)}, so the latent shapes would not match (allowed: data of shape "
                     f"{codec.image_shape}, or train an autoencoder on this data)")
    try:
        latents = LatentDataset(dataset, codec)
    except ValueError as e:
        parser.error(f"--autoencoder: {e}")
    overrides.update({"latent.autoencoder": codec.path, "latent.sha256": codec.sha256,
                      "latent.scale_factor": codec.scale_factor})
    overrides.setdefault("diffusion.sigma_data", 1.0)  # scaled latents have unit std
    return latents


def _resumed_latent(args) -> dict | None:
    """The latent settings saved in the run being resumed, if any."""
    path = args.out if args.resume == "auto" else args.resume
    if not path:
        return None
    try:
        return ckpt.load_checkpoint_config(path).get("latent")
    except (ckpt.CheckpointError, KeyError, OSError):
        return None


# ----------------------------------------------------------------------------- experts by noise level

def _experts_wanted(args, parser, dataset) -> bool:
    """Whether this run is a pair of experts (``training.expert_route``): ``--experts``, a resumed
    pair, or by default spoken digits as class-conditional mel spectrograms without --preset."""
    saved = _resumed_config(args)
    resumed_pair = bool(((saved or {}).get("sample") or {}).get("expert")) or (
        args.resume is not None and saved is None and high_state(_out_folder(args)) is not None)
    if resumed_pair and args.experts is False:
        parser.error(f"--no-experts: {_out_folder(args)!r} is a pair of experts; resume it without --no-experts")
    if args.experts is None:
        audio = dataset.info.get("audio", {}) if dataset.kind == "audio" else {}
        args.experts = resumed_pair or (
            args.preset is None and not args.latent and dataset.name.split(":")[0] == "spoken-digits"
            and audio.get("representation") == "mel" and args.conditioning == "class")
    if not args.experts:
        return False
    rep = (dataset.info.get("audio") or {}).get("representation") if dataset.kind == "audio" else None
    if rep != "mel":
        parser.error(f"--experts trains two experts on log-mel spectrograms; --data {args.data!r} holds "
                     + (f"{dataset.kind}s" if rep is None else "waveforms (--representation wave)")
                     + " (allowed: sound data with --representation mel)")
    for given, flag in ((args.preset, "--preset"), (args.latent, "--latent"), (args.control, "--control")):
        if given:
            parser.error(f"--experts trains the presets {HIGH_PRESET} and {LOW_PRESET} on the spectrograms; "
                         f"{flag} cannot be combined with it (drop {flag}, or pass --no-experts)")
    if args.resume not in (None, "auto"):
        parser.error("--experts resumes with --resume auto (and --out RUN): the pair's two stages live in RUN")
    return True


def _train_experts(args, parser, dataset, overrides: dict) -> int:
    """Train the high-noise expert into OUT/expert-high (unless it finished already), then the
    low-noise one into OUT for the rest of the budget; OUT's config names the pair."""
    out = _out_folder(args)
    if env_world().distributed and args.dry_run:
        parser.error("--dry-run prints the plan in one process; run it without torchrun")
    if args.resume:  # the options the pair was started with, then those given now
        overrides = {**saved_plan(out), **overrides}
    budget, steps = overrides.get("train.time_budget", "preset"), overrides.get("train.max_steps")
    if budget == "preset":  # the presets' own budgets, as measured: the whole recipe's is their sum
        budget = sum(resolve(p, dataset, {}).train.time_budget for p in (HIGH_PRESET, LOW_PRESET))
    state = high_state(out)
    for folder in (os.path.join(out, HIGH), out):  # before training anything
        if args.resume is None and os.path.isdir(os.path.join(folder, ckpt.CHECKPOINTS)):
            parser.error(f"{folder!r} already holds checkpoints; pass --resume auto to continue the pair or choose "
                         f"another --out")
    if not args.resume and not args.dry_run and env_world().rank == 0:
        save_plan(out, overrides)
    if finished(state):
        log(f"experts: the high-noise expert {os.path.join(out, HIGH)} finished ({state['step']} steps); reusing it")
    else:
        h_budget, h_steps = high_budget(budget, steps)
        try:
            cfg = resolve(HIGH_PRESET, dataset, {**overrides, "train.time_budget": h_budget, "train.max_steps": h_steps})
        except ValueError as e:
            parser.error(str(e))
        log(f"experts: the high-noise expert ({HIGH_PRESET}, sigma above {ABOVE:g}) into {os.path.join(out, HIGH)}")
        if args.dry_run:
            state = {"step": h_steps or 0, "elapsed": h_budget or 0.0}
            log(f"dry run: {HIGH_PRESET} would train for {h_budget and f'{h_budget:g} s'}"
                f"{f', at most {h_steps} steps' if h_steps else ''}")
        else:
            cfg = _fit_budget(args, cfg, dataset, overrides, saved=(state or {}).get("config"), default_preset=False)
            high = _fit(args, parser, cfg, dataset, os.path.join(out, HIGH), resume="auto" if state else None,
                        last=False)
            if not isinstance(high, dict):  # failed or stopped: the low expert waits for --resume auto
                return high
            state = high_state(out)
    l_budget, l_steps = expert_rest(budget, steps, state)
    over = {**overrides, "train.time_budget": l_budget, "train.max_steps": l_steps, **low_overrides()}
    if overrides.get("conditioning.kind", "none") not in ("class", "text"):
        over["sample.guidance"] = 1.0  # nothing to guide
    try:
        cfg = resolve(LOW_PRESET, dataset, over)
    except ValueError as e:
        parser.error(str(e))
    log(f"experts: the low-noise expert ({LOW_PRESET}) into {out}"
        + (f", for {l_budget:.0f} s" if l_budget else "") + (f", at most {l_steps} steps" if l_steps else ""))
    saved = _resumed_config(args) if args.resume else None
    cfg = _fit_budget(args, cfg, dataset, over, saved=saved, default_preset=False) if not args.dry_run else cfg
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    extra = {"expert": {"run": os.path.join(out, HIGH), "step": state["step"], "elapsed": state["elapsed"]}}
    return _fit(args, parser, cfg, dataset, out, resume="auto" if saved else None, extra=extra)
