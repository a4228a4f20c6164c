"""Sampling from trained runs, and writing the results (PNG grid, per-image PNGs with their
generation parameters in PNG text metadata, or an ``.npz`` array) through the one output path,
``undiffuse.io.writers.write_samples`` (``save_images`` and ``save_npz`` are thin calls of it).

Image ``i`` of a call with ``seed`` uses the starting noise and (for stochastic samplers)
the fresh noise of seed ``seed + i``, so it is the same image whatever the batch size or
the number of images requested.

Conditional runs take their condition per image (``condition``: batch-aligned keyword
arguments from :func:`class_condition` or :func:`prompt_condition`) and optional guidance
(classifier-free with an interval, autoguidance with a weaker run, or a classifier's
gradient); see ``undiffuse.steering.guidance``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from undiffuse import nets
from undiffuse.config import RunConfig, build_denoiser, schedule_of
from undiffuse.core.noise import noise as make_noise
from undiffuse.core.precond import Denoiser
from undiffuse.data.audio import to_waveform
from undiffuse.inference import posthoc_ema
from undiffuse.inference.codec import AutoencoderError, load_autoencoder
from undiffuse.io import checkpoint as ckpt
from undiffuse.io import provenance as prov
from undiffuse.io.images import grid as grid  # re-exported: the pixel helpers moved to io.images
from undiffuse.io.images import save_png as save_png
from undiffuse.io.images import scatter as scatter
from undiffuse.io.images import to_uint8 as to_uint8
from undiffuse.io.images import write_bytes
from undiffuse.io.provenance import parameters_text as parameters_text
from undiffuse.io.writers import WRITERS, npz_bytes, write_samples
from undiffuse.samplers.driver import sample
from undiffuse.steering import guidance as g
from undiffuse.steering.conditioning import text_condition
from undiffuse.steering.frames import KeepGiven, paste
from undiffuse.utils import distributed as _dist

FORMATS = tuple(WRITERS)  # png, npz: the formats of io.writers.write_samples


@dataclass
class LoadedRun:
    denoiser: Denoiser
    config: RunConfig
    checkpoint: str       # the checkpoint folder the weights came from
    step: int
    weights: str          # "ema", "model" or "ema sigma_rel S" (a post-hoc EMA length)
    shape: tuple          # per-sample shape (C, H, W), (T, C, H, W) for videos, or (D,)
    kind: str             # "image", "vector", "audio" (``audio``: how a sample becomes sound) or "video"
    class_names: tuple = ()  # the training data's class names (index = label)
    decoder: object = None   # latent runs: the autoencoder (``autoencoder.LatentCodec``) that decodes samples
    levels: dict | None = None  # few-step students: the levels record picked for these weights (io.checkpoint)
    example_prompts: tuple = ()  # text runs: a few training captions (what the web page offers)
    weights_file: str = ""   # the safetensors file the weights came from (default: CHECKPOINT/WEIGHTS.safetensors)
    audio: dict | None = None  # sound runs: rate, clip length, representation (data.audio.audio_info)
    expert: dict | None = None  # joined by join_expert: the high-noise expert's run, checksum and hand-off level
    video: dict | None = None  # video runs: frames, frame rate, size (the training data's info["video"])

    @property
    def checksum(self) -> str:
        """SHA-256 of the weights file (what provenance records and watermarks name)."""
        return prov.file_checksum(self.weights_file or os.path.join(self.checkpoint, f"{self.weights}.safetensors"))

    @property
    def image_shape(self) -> tuple:
        """Shape of the samples ``generate`` returns (decoded images for a latent run)."""
        if self.decoder is None:
            return self.shape
        return (self.shape[0], *self.decoder.image_shape) if self.kind == "video" else self.decoder.image_shape

    @property
    def conditioning(self) -> str:
        return self.config.conditioning.kind


def load_run(path: str, *, weights: str = "ema", device: str = "cpu", ema_sigma_rel: float | None = None,
             experts: bool = True) -> LoadedRun:
    """Load a run folder (its latest complete checkpoint) or a checkpoint folder.
    ``ema_sigma_rel``: instead of the run's EMA, the post-hoc EMA of that relative length at
    the checkpoint's step (``posthoc_ema``: reused from ``RUN/ema/`` or rebuilt there;
    ``PosthocError`` when the run's snapshots cannot express it). A run whose config names a
    high-noise expert (``sample.expert``, written by ``train --experts``) comes joined to it
    (:func:`join_expert`, its EMA weights) unless ``experts`` is False."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if ema_sigma_rel is not None and weights != "ema":
        raise ValueError("a post-hoc EMA length replaces the EMA weights; it cannot be combined with weights 'model'")
    loaded = ckpt.load_checkpoint(path, device=device)
    state = loaded["state_json"]
    cfg = RunConfig.from_dict(state["config"])
    den = build_denoiser(cfg).to(device).eval()
    tensors, weights_file = loaded[weights], ""
    if ema_sigma_rel is not None:
        tensors, _, weights_file = posthoc_ema.reconstruct(ckpt.run_of(loaded["path"]), ema_sigma_rel, state["step"])
        weights = f"ema sigma_rel {ema_sigma_rel:g}"
    den.net.load_state_dict(tensors)
    den.net.requires_grad_(False)
    m = cfg.model
    if m["kind"] == "mlp":
        shape, kind = (m["dim"],), "vector"
    elif m["kind"] in nets.VIDEO_KINDS:
        shape, kind = (cfg.data.frames, m["in_channels"], *state["sample_size"]), "video"
    else:
        shape = (nets.image_channels(m), *state["sample_size"])
        kind = "audio" if "audio" in state.get("dataset", {}) else "image"
    names = tuple(state.get("dataset", {}).get("class_names", ()))
    levels = ckpt.read_levels(loaded["path"])
    if levels is not None and levels.get("weights", "ema") != weights:  # picked for the other weights
        levels = None
    examples = tuple(state.get("dataset", {}).get("example_prompts", ()))
    run = LoadedRun(den, cfg, loaded["path"], state["step"], weights, tuple(shape), kind, names,
                    _latent_decoder(cfg, tuple(shape), device), levels, examples, weights_file,
                    state.get("dataset", {}).get("audio"), video=state.get("dataset", {}).get("video"))
    if experts and cfg.sample.expert:
        where = expert_path(ckpt.run_of(loaded["path"]), cfg.sample.expert)
        try:
            join_expert(run, load_run(where, device=device, experts=False), cfg.sample.expert_above)
        except (ckpt.CheckpointError, ValueError) as e:
            raise ckpt.CheckpointError(f"this run samples with its high-noise expert {where!r} (sample.expert), "
                                       f"which cannot be used: {e}") from None
    return run


def expert_path(run_folder: str, expert: str) -> str:
    """Where a run's recorded expert lives: a relative name is inside the run folder (so the
    run can be moved or copied whole), an absolute one as it is."""
    return expert if os.path.isabs(expert) else os.path.join(run_folder, expert)


def join_expert(run: LoadedRun, high: LoadedRun, above: float) -> LoadedRun:
    """``run`` denoising with ``high`` above the noise level ``above`` and itself at and below it
    (``steering.guidance.Experts``); ValueError unless the two make the same thing (conditioning,
    sample shape, sound representation, classes). ``run.expert`` records the pair."""
    if not above > 0 or not math.isfinite(above):
        raise ValueError(f"the expert hand-off level must be a noise level > 0, got {above}")
    if high.conditioning != run.conditioning or high.shape != run.shape or high.audio != run.audio:
        raise ValueError(f"the expert must make what the run makes: its conditioning {high.conditioning!r} and samples "
                         f"{high.shape} vs {run.conditioning!r} and {run.shape}"
                         + ("" if high.audio == run.audio else " (and the same sound representation)"))
    if high.class_names != run.class_names:
        raise ValueError(f"the expert has classes {list(high.class_names)[:12]}, the run has {list(run.class_names)[:12]}")
    run.denoiser = g.Experts(run.denoiser, high.denoiser, above)
    run.expert = {"run": os.path.abspath(ckpt.run_of(high.checkpoint)), "checkpoint": os.path.abspath(high.checkpoint),
                  "sha256": high.checksum, "above": float(above)}
    return run


def to_sound(x: torch.Tensor, run: LoadedRun, iterations: int = 64) -> torch.Tensor:
    """A sound run's samples as waveforms ``(N, 1, T)`` in [-1, 1] (a mel run's spectrograms
    turned into sound by Griffin-Lim, ``data.audio.to_waveform``)."""
    if run.audio is None:
        raise ValueError(f"{run.checkpoint} is not a sound run; it makes {run.kind}s")
    return to_waveform(x.cpu(), run.audio, iterations=iterations)


def recorded_levels(run: LoadedRun, *, sampler: str | None = None, steps: int | None = None,
                    schedule=None) -> list[float] | None:
    """The noise levels picked for this student at ``steps`` (default: the run's steps) when the
    request leaves them open: no ``schedule`` (or sigmas) given and the sampler they were picked
    with (the run's own unless ``sampler`` names another). None otherwise, and for runs without
    picked levels (ordinary runs, students from before levels were picked), which sample as before."""
    rec = run.levels
    if rec is None or schedule is not None or (sampler or run.config.sample.sampler) != rec["sampler"]:
        return None
    picked = rec["picked"].get(str(steps or run.config.sample.steps))
    return None if picked is None else [float(v) for v in picked]


def _latent_decoder(cfg: RunConfig, shape: tuple, device):
    """The autoencoder of a latent run, checked against the checksum and shape the run recorded
    (``CheckpointError`` when it is missing or changed); None for a pixel run."""
    lat = cfg.latent
    if lat.autoencoder is None:
        return None

    try:
        codec = load_autoencoder(lat.autoencoder, device=device, expect_sha256=lat.sha256)
    except AutoencoderError as e:
        raise ckpt.CheckpointError(f"this latent run needs its autoencoder {lat.autoencoder!r}: {e}") from None
    if codec.latent_shape != (shape[1:] if len(shape) == 4 else shape):  # a video run: per frame
        raise ckpt.CheckpointError(f"the autoencoder {lat.autoencoder!r} makes latents of shape {codec.latent_shape}, "
                                   f"the run was trained on {shape}")
    codec.scale_factor = float(lat.scale_factor)  # the scale the run was trained with
    return codec


def class_labels(run: LoadedRun, spec, num: int) -> torch.Tensor:
    """Labels for ``num`` images from a class name or index, a list of them, or ``"all"``
    (the count spread evenly over the classes, in order)."""
    names = list(run.class_names)
    if not names:
        raise ValueError("this run's training data has no classes; --class needs a class-conditional run "
                         "(train --conditioning class) or a classifier")
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return torch.arange(num) * len(names) // num
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    labels = []
    for item in items:
        item = str(item).strip()
        if item in names:
            labels.append(names.index(item))
        elif item.lstrip("-").isdigit() and 0 <= int(item) < len(names):
            labels.append(int(item))
        else:
            raise ValueError(f"unknown class {item!r}; allowed: {', '.join(names)} (or an index 0..{len(names) - 1}, "
                             f"or 'all')")
    return torch.tensor(labels).repeat((num + len(labels) - 1) // len(labels))[:num]


def prompt_condition(run: LoadedRun, prompts, num: int | None = None) -> dict:
    """``context``/``context_mask`` for one prompt (shared) or one per image."""
    if run.conditioning != "text":
        raise ValueError(f"a prompt needs a text-conditioned run (train --conditioning text); this run's "
                         f"conditioning is {run.conditioning!r}")

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    device = next(run.denoiser.net.parameters()).device
    return text_condition(prompts, run.config.conditioning.max_tokens, device)


def guided(run: LoadedRun, *, guidance: float = 1.0, interval=None, negative_prompt: str | None = None,
           weak: "LoadedRun | None" = None, classifier=None, classifier_scale: float = 0.0):
    """The run's denoiser wrapped for guidance (unchanged when no guidance is asked for).

    ``guidance`` is the classifier-free scale, or the autoguidance scale when a ``weak`` run
    is given; ``negative_prompt`` replaces the empty prompt of the unconditional branch;
    ``classifier`` (with ``log_prob(x, sigma, labels)``) adds classifier guidance.
    """
    den = _guided_by_model(run, guidance, interval, negative_prompt, weak)
    if classifier is not None and classifier_scale != 0:
        den = g.ClassifierGuidance(den, classifier.log_prob, classifier_scale, interval=interval,
                                   forward_labels=run.conditioning == "class")
    return den


def _guided_by_model(run: LoadedRun, guidance, interval, negative_prompt, weak):
    if weak is not None:
        if weak.conditioning != run.conditioning or weak.shape != run.shape:
            raise ValueError("the autoguidance model must have the same conditioning and sample shape as the main "
                             f"model; got {weak.conditioning!r} {weak.shape} vs {run.conditioning!r} {run.shape}")
        return g.Autoguidance(run.denoiser, weak.denoiser, guidance, interval=interval)
    if guidance == 1 and negative_prompt is None:
        return run.denoiser
    if run.conditioning == "class":
        return g.ClassifierFree(run.denoiser, guidance, interval=interval)
    if run.conditioning == "text":
        return g.ClassifierFree(run.denoiser, guidance, interval=interval,
                                uncond=prompt_condition(run, negative_prompt or ""))
    raise ValueError(f"classifier-free guidance needs a class- or text-conditioned run; this run's conditioning is "
                     f"{run.conditioning!r} (use a classifier or an autoguidance model instead)")


def generate(run: LoadedRun, num: int, *, seed: int = 0, sampler: str | None = None, steps: int | None = None,
             schedule: str | None = None, batch_size: int = 256, progress: bool = False, calibration=None,
             condition: dict | None = None, denoiser=None, alone: bool = False, **options) -> torch.Tensor:
    """``num`` samples in model space (images in [-1, 1]; a latent run's samples decoded), float32
    on the CPU.

    ``calibration`` (a ``calibrate.Calibration``) replaces sampler, steps and schedule by its
    fitted solver and sigmas. Without a ``schedule``, a few-step student samples 1 or 2 steps
    on the levels picked for it (:func:`recorded_levels`). ``condition`` holds the network's conditioning keyword
    arguments, each with ``num`` rows or one shared row; ``denoiser`` replaces the run's own
    (e.g. by :func:`guided`).

    Under ``torchrun`` (an initialised process group) the batches are dealt to the ranks in
    turn and gathered on rank 0, which returns the same tensor, byte for byte, as one process;
    the other ranks return None. ``alone``: this process draws all ``num`` samples even then
    (e.g. rank 0 scoring a student by itself).
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    s = run.config.sample
    if calibration is not None:
        kw = {**calibration.sample_kwargs(), **options}
    else:
        sched = schedule_of(s, recorded_levels(run, sampler=sampler, steps=steps, schedule=schedule) or schedule)
        if not isinstance(sched, str) and steps is not None and steps != len(sched) - 1:
            raise ValueError(f"this run samples on its fixed list of {len(sched) - 1} steps (sample.sigmas, e.g. "
                             f"from progressive distillation); steps {steps} do not fit it (give {len(sched) - 1}, "
                             f"or a schedule name)")
        kw = dict(sampler=sampler or s.sampler, steps=steps or s.steps, schedule=sched,
                  sigma_min=s.sigma_min, sigma_max=s.sigma_max, **options)
    device = next(run.denoiser.net.parameters()).device
    den = denoiser or run.denoiser
    condition = _check_condition(run, condition or {}, num)
    if "cond_frames" in condition:  # a video run's given frames: kept as given (steering.frames)
        den = KeepGiven(den)
    world = _dist.World() if alone else _dist.current()
    starts = _dist.my_batches(num, batch_size, world)  # all batches for a single process
    out = []
    bar = None
    if progress and world.main:
        bar = tqdm(total=sum(min(batch_size, num - s) for s in starts), unit="img", desc="sample")
    for start in starts:
        seeds = list(range(seed + start, seed + min(start + batch_size, num)))
        z = make_noise((len(seeds), *run.shape), seed=seeds, device=device)
        extra = {k: v if v.shape[0] == 1 else v[start:start + len(seeds)] for k, v in condition.items()}
        x = sample(den, z, seed=seeds, extra=extra, **kw)
        if "cond_frames" in extra:
            x = paste(x, extra["cond_frames"], extra["frame_mask"])
        if run.decoder is not None:  # latent run: scaled latents -> images
            x = run.decoder.decode(x)
        out.append(x.float().cpu())
        if bar is not None:
            bar.update(len(seeds))
    if bar is not None:
        bar.close()
    if not world.distributed:
        return torch.cat(out)
    full = torch.zeros((num, *run.shape))
    for start, x in zip(starts, out):
        full[start:start + len(x)] = x
    return _dist.gather_rows(full, batch_size, world)


def _check_condition(run: LoadedRun, condition: dict, num: int) -> dict:
    needs = {"class": (), "text": ("context",), "lowres": ("cond_image",), "none": ()}[run.conditioning]
    missing = [k for k in needs if k not in condition]
    if missing:
        raise ValueError(f"this run is conditioned on {run.conditioning!r}; give {', '.join(missing)} "
                         f"(e.g. a prompt)")
    out = {}
    for k, v in condition.items():
        v = torch.as_tensor(v)
        if v.dim() == 0:
            v = v.reshape(1)
        if v.shape[0] not in (1, num):
            raise ValueError(f"condition {k!r} has {v.shape[0]} rows for {num} samples (give 1 or {num})")
        out[k] = v
    return out


def video_fps(run: LoadedRun, default: int = 8) -> int:
    """The frame rate a video run's clips are shown at: its training data's (``info["video"]``)."""
    return int((run.video or {}).get("fps", default))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model-space images in [-1, 1] to [0, 1] (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


def provenance_record(run: LoadedRun, params: dict, seed: int, **extra) -> dict:
    """The JSON provenance record (``undiffuse.io.provenance``) of one image of ``run``: the run
    folder's name, the checksum of its weights, sampler, steps, seed, guidance (and a joined
    high-noise expert's checksum and hand-off level)."""
    name = os.path.basename(ckpt.run_of(run.checkpoint))
    if run.expert is not None:
        extra = {"expert_sha256": run.expert["sha256"], "expert_above": run.expert["above"], **extra}
    return prov.record(name, run.checksum, sampler=params.get("sampler"),
                       steps=params.get("steps"), seed=seed, guidance=params.get("guidance", 1.0),
                       step=run.step, weights=run.weights, **extra)


def save_images(out: str, x01: torch.Tensor, params: dict, *, seed: int, individual: bool = True,
                grid_scale: int = 4, per_image: list[dict] | None = None, run: LoadedRun | None = None,
                index: list[int] | None = None, watermark: bool = True) -> list[str]:
    """Write ``out/grid.png`` and ``out/000000.png``...; each image's PNG carries its own seed
    (and its entry of ``per_image``, e.g. its class). With ``run``, every PNG also carries the
    JSON ``provenance`` record (``undiffuse verify`` reads it). ``index`` gives each row's
    position in the request when some were left out (image ``k`` has seed ``seed + k`` and is
    written as ``k:06d.png``).

    ``watermark``: embed the invisible mark (``undiffuse.io.watermark``; payload: the run's weights
    checksum, 0 without ``run``) in every PNG at least ``watermark.MIN_SIZE`` px a side (the
    grid after its ``grid_scale`` upscaling); the record's ``watermark`` field says
    ``embedded``, ``too small`` or ``off``.

    A thin call of ``writers.write_samples`` (format ``png``), which also runs a content filter."""
    os.makedirs(out, exist_ok=True)
    index = list(range(len(x01))) if index is None else list(index)
    extra = [dict(per_image[i]) if per_image else {} for i in index]
    records = None if run is None else [provenance_record(run, params, seed + i, **e) for i, e in zip(index, extra)]
    return write_samples(x01, out, format="png", seed=seed, params=params, per_sample=extra, records=records,
                         index=index, watermark=watermark, individual=individual, grid_scale=grid_scale).paths


def save_npz(path: str, samples: np.ndarray, params: dict, *, labels: np.ndarray | None = None) -> None:
    """``samples`` array plus a JSON string ``parameters`` (``params`` as given: ``write_samples``
    with format ``npz`` adds the seed and count itself) and the requested class of each sample as
    ``labels`` when given; written atomically, encoded as ``write_samples`` encodes ``npz``."""
    write_bytes(path, npz_bytes(samples, params, labels=labels), suffix=".npz")
