"""Run configuration: one dataclass per group, the presets (``presets``) resolved against data,
and the single place where a config becomes objects (network, process, denoiser).

A resolved config is plain JSON (``RunConfig.to_dict``), saved as ``RUN/config.json`` and in
every checkpoint, printed by ``undiffuse train --dry-run``.
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields

from undiffuse import samplers
from undiffuse.core import schedules
from undiffuse.core.losses import DISTANCES as LOSS_DISTANCES
from undiffuse.core.losses import NOISE_SAMPLING, WEIGHTINGS
from undiffuse.core.precond import PARAMETERIZATIONS, Denoiser
from undiffuse.data import control_maps
from undiffuse.samplers.odestep import check_solver

from . import nets
from .core import process as _process
from .presets import PRESETS


@dataclass
class DataConfig:
    name: str = "digits"          # built-in dataset name, an image folder, or a .npy/.npz file
    image_size: int | None = None  # resize + centre-crop side for image folders (None: first image's size)
    channels: int | None = None   # 1 or 3 (None: decided from the images)
    strict: bool = False          # a bad file is an error instead of a skipped warning
    num_points: int = 20_000      # points drawn for the 2-D toys
    hflip: bool = False           # random horizontal flips (augmentation)
    sample_rate: int = 8000       # sound: Hz (8000 or 16000; clips of 8192 or 16384 samples, data.audio)
    representation: str = "mel"   # sound: mel (2-D U-Net on log-mel, Griffin-Lim back) | wave (1-D U-Net on samples)
    frames: int = 16              # video: frames per clip (data.video)


@dataclass
class DiffusionConfig:
    process: dict = field(default_factory=lambda: {"name": "edm"})  # process.get(name, **rest)
    parameterization: str = "edm"  # eps | x0 | v | edm | flow
    sigma_data: float = 0.5       # data standard deviation (EDM preconditioning and weighting)
    noise_sampling: str = "lognormal"  # uniform_t | lognormal | u_shaped | sigma_max (see losses)
    p_mean: float = -1.2          # lognormal: mean of ln(sigma)
    p_std: float = 1.2            # lognormal: std of ln(sigma)
    u_a: float = 4.0              # u_shaped: a of the density cosh(a (u - 1/2)) over t (larger: more at the ends)
    weighting: str = "uniform"    # uniform | min_snr | edm (see losses)
    min_snr_gamma: float = 5.0
    distance: str = "l2"          # l2 | pseudo_huber: the per-sample distance of the network output (see losses)
    huber_c: float | None = None  # pseudo_huber: its c (None: 0.00054 * sqrt(elements per sample))
    time_scale: float = 1.0       # multiplies the network's noise label
    boundary_sigma: float | None = None  # consistency models: D(x, boundary_sigma) = x exactly (precond)


@dataclass
class OptimConfig:
    lr: float = 1e-3              # peak learning rate (AdamW)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 100       # linear warm-up from 0
    schedule: str = "cosine"      # cosine | constant, after warm-up, over max_steps or the time budget
    min_lr_ratio: float = 0.0     # cosine floor as a fraction of lr
    grad_clip: float = 1.0        # max global gradient norm (0: off)
    batch_size: int = 128         # samples per optimizer step
    accumulation: int = 1         # micro-batches per step (batch_size must divide evenly)


@dataclass
class EMAConfig:
    halflife_samples: float = 50_000  # EMA half-life in training samples (Karras et al. 2022)
    rampup: float = 0.05              # warm-up: half-life at most rampup * samples seen (0: off)
    # post-hoc EMA (training.power_ema): the relative widths of the power-function averages
    # tracked for it (--ema-posthoc: 0.05 and 0.10; empty: off), and the steps between their
    # snapshots (0: a 32nd of the run; snapshots also come with every checkpoint)
    posthoc: list = field(default_factory=list)
    posthoc_every: int = 0


POSTHOC_DEFAULT = [0.05, 0.10]
POSTHOC_SIGMA_MAX = (1 / 12) ** 0.5  # a power-function average's widest profile (the plain mean)


@dataclass
class TrainConfig:
    max_steps: int | None = None  # stop after this many optimizer steps
    time_budget: float | None = None  # or after this many seconds of training (cumulative over resumes)
    seed: int = 0
    log_every: int = 50           # steps per JSONL/TensorBoard entry (loss averaged over them)
    checkpoint_every: int = 1000  # steps between checkpoints (and one at the end)
    keep: int = 3                 # complete checkpoints kept
    sample_every: int = 0         # steps between sample grids (0: only at the end)
    sample_count: int = 64        # images in each grid
    eval_every: int = 0           # steps between evaluations of the EMA model (0: never)
    eval_samples: int = 500       # samples per evaluation, scored against the training data
    keep_best: bool = False       # keep the checkpoint with the lowest evaluation FD (RUN/best)
    max_bad_steps: int = 20       # consecutive non-finite losses before training stops
    precision: str = "fp32"       # fp32 | bf16 (bf16 autocast, CUDA only)
    device: str = "cpu"
    compile: bool = False         # torch.compile the network's forward (and so its backward)
    channels_last: bool | None = None  # channels-last memory format; None: on CUDA devices only
    tensorboard: bool = True      # also write TensorBoard events if the package is installed


CONDITIONING = ("none", "class", "text", "lowres")
TEXT_EMBEDDING_DIM = 384  # all-MiniLM-L6-v2 token embeddings (undiffuse.steering.text)


@dataclass
class ConditioningConfig:
    kind: str = "none"            # none | class | text | lowres (super-resolution from a low-res copy)
    dropout: float = 0.1          # class/text: share of training samples shown the null condition
    max_tokens: int = 16          # text: tokens per caption (padded/truncated)
    factor: int = 4               # lowres: down-sampling factor of the conditioning image
    control: str = ""             # control runs (train-control): the extractor of the maps the adapter reads


@dataclass
class SampleConfig:
    sampler: str = "heun"         # recommended sampler for this run
    steps: int = 10
    schedule: str = "karras"
    sigma_min: float | None = None  # None: the process's own
    sigma_max: float | None = None
    sigmas: list | None = None    # schedule 'custom': the fixed noise levels (ending in 0)
    guidance: float = 1.0         # recommended classifier-free guidance scale (1: none)
    expert: str | None = None     # a run that denoises every level above expert_above (relative: inside this run)
    expert_above: float = 1.0     # the noise level where the expert hands over to this run


OBJECTIVES = ("denoising", "consistency", "progressive")
DISTANCES = ("pseudo_huber", "l2")


@dataclass
class ObjectiveConfig:
    """What the trainer minimises. ``denoising``: the ordinary loss (``losses``).
    ``consistency``: consistency distillation from ``teacher`` or, without one, consistency
    training from data alone. ``progressive``: one round of progressive distillation of
    ``teacher`` (see ``undiffuse.training.consistency`` and ``undiffuse.training.progressive``)."""

    kind: str = "denoising"       # denoising | consistency | progressive
    teacher: str | None = None    # teacher checkpoint folder (absolute path; loaded with its EMA weights)
    solver: str = "heun"          # the teacher's ODE step (euler, heun or another deterministic sampler)
    steps_start: int = 18         # consistency: intervals N of the noise-level grid at the start ...
    steps_end: int = 18           # ... doubled in equal stages up to this many at the end (iCT curriculum)
    rho: float = 7.0              # consistency: Karras spacing of that grid
    index_sampling: str = "lognormal"  # consistency: lognormal (iCT) or uniform (CM) choice of interval
    p_mean: float = -1.1          # lognormal interval choice: mean of ln(sigma)
    p_std: float = 2.0            # ... and its std
    distance: str = "pseudo_huber"  # consistency: pseudo_huber (iCT) | l2
    huber_c: float | None = None  # pseudo-Huber constant (None: 0.00054 * sqrt(elements per sample))
    grid: list | None = None      # progressive: the teacher's noise levels (2n + 1, ending in 0)


@dataclass
class LatentConfig:
    autoencoder: str | None = None  # latent diffusion: absolute path of the autoencoder folder (None: pixels)
    sha256: str | None = None       # SHA-256 of its weights, checked when the run is loaded
    scale_factor: float | None = None  # latents = posterior mean * scale_factor (1 / their std)


GROUPS = {"data": DataConfig, "diffusion": DiffusionConfig, "optim": OptimConfig, "ema": EMAConfig,
          "train": TrainConfig, "sample": SampleConfig, "conditioning": ConditioningConfig,
          "objective": ObjectiveConfig, "latent": LatentConfig}


@dataclass
class RunConfig:
    preset: str = "digits"
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=dict)  # nets.build(model): {"kind": "unet", ...}
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = copy.deepcopy(d)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; allowed: {', '.join(f.name for f in fields(cls))}")
        kw = {}
        for name, group in GROUPS.items():
            if name in d:
                kw[name] = _group(group, d[name], name)
        if "optim" in kw:
            kw["optim"].betas = tuple(kw["optim"].betas)
        cfg = cls(preset=d.get("preset", "custom"), model=d.get("model", {}), **kw)
        validate(cfg)
        return cfg


def _group(group, values: dict, name: str):
    allowed = {f.name for f in fields(group)}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"config section {name!r} has no key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return group(**values)


# ----------------------------------------------------------------------------- presets (presets.py)


def preset_names() -> list[str]:
    return list(PRESETS)


def default_preset(dataset) -> str:
    if dataset.kind == "vector":
        return "toy"
    if dataset.kind == "audio":
        return "audio-" + dataset.info["audio"]["representation"]
    if dataset.kind == "video":
        return "video-latent" if getattr(dataset, "codec", None) is not None else "video"
    if dataset.name == "digits":
        return "digits"
    if dataset.name.split(":")[0] == "emoji":
        return "emoji-latent" if getattr(dataset, "codec", None) is not None else "emoji"
    return "small" if max(dataset.shape[1:]) <= 32 else "base"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "model":
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_value(text: str):
    """``--set`` values: JSON when it parses (numbers, lists, true/null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(d: dict, overrides: dict[str, object]) -> dict:
    """Apply dotted overrides such as ``{"optim.lr": 1e-3, "model.channels": 32}``."""
    d = copy.deepcopy(d)
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) < 2 or parts[0] not in {f.name for f in fields(RunConfig)}:
            raise ValueError(f"config key {key!r} must look like SECTION.KEY with SECTION one of "
                             f"{', '.join(f.name for f in fields(RunConfig) if f.name != 'preset')}")
        node = d
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"config key {key!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return d


def resolve(preset: str, dataset, overrides: dict[str, object] | None = None) -> RunConfig:
    """Preset + overrides, completed from the dataset (channels, dimension), validated."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    d = _merge(RunConfig(preset=preset).to_dict(), PRESETS[preset])
    d = apply_overrides(d, overrides or {})
    model = d["model"]
    if (model.get("kind") in nets.VIDEO_KINDS) != (dataset.kind == "video"):
        raise ValueError(f"preset {preset!r} uses a {model.get('kind')} network; {dataset.name!r} holds "
                         + ("videos (use --preset video)" if dataset.kind == "video" else f"{dataset.kind}s, not videos"))
    if model.get("kind") in nets.VIDEO_KINDS:
        model.setdefault("in_channels", dataset.shape[1])
        model.setdefault("max_frames", dataset.shape[0])
        d["data"]["frames"] = dataset.shape[0]
    elif model.get("kind") in nets.IMAGE_KINDS:
        if dataset.kind == "vector":
            raise ValueError(f"preset {preset!r} uses an image network ({model['kind']}), which needs image data; "
                             f"{dataset.name!r} holds vectors (use --preset toy)")
        model.setdefault("in_channels", dataset.shape[0])
        if model.get("kind") == "unet":
            model["dims"] = len(dataset.shape) - 1  # 1: waveforms, 2: images and spectrograms
            if model.get("rows"):  # a 2-D sample read as 1-D signals, its rows as channels
                if len(dataset.shape) != 3:
                    raise ValueError(f"model.rows reads the rows of 2-D samples as channels; {dataset.name!r} holds "
                                     f"samples of shape {tuple(dataset.shape)}")
                model["dims"], model["rows"] = 1, dataset.shape[1]
            if dataset.kind == "audio":
                d["data"]["representation"] = dataset.info["audio"]["representation"]
                d["data"]["sample_rate"] = dataset.info["audio"]["sample_rate"]
        elif dataset.kind == "audio" and len(dataset.shape) != 3:
            raise ValueError(f"preset {preset!r} uses a {model['kind']} network, which reads images or spectrograms; "
                             f"waveforms need a U-Net (preset audio-wave)")
    elif model.get("kind") == "mlp":
        if dataset.kind != "vector":
            raise ValueError(f"preset {preset!r} uses an MLP for vectors; {dataset.name!r} holds images")
        model.setdefault("dim", dataset.shape[0])
    _condition_model(d, dataset)
    return RunConfig.from_dict(d)


def _condition_model(d: dict, dataset) -> None:
    """Give the network what the chosen conditioning needs, checked against the data."""
    cond, model = d.get("conditioning", {}), d["model"]
    kind = cond.get("kind", "none")
    if kind not in CONDITIONING:
        raise ValueError(f"conditioning {kind!r} is not allowed; allowed: {', '.join(CONDITIONING)}")
    captioned = getattr(dataset, "captions", None) is not None
    if kind == "class" and dataset.labels is None:
        raise ValueError(f"conditioning 'class' needs labelled data; {dataset.name!r} has no labels "
                         f"(image folders get labels from class sub-folders, .npz files from a 'labels' array)")
    if kind == "text" and dataset.labels is None and not captioned:
        raise ValueError(f"conditioning 'text' needs captions or labels; {dataset.name!r} has neither (give an image "
                         f"folder a metadata.jsonl with file_name and text per image, or a NAME.txt caption beside "
                         f"each image, or class sub-folders)")
    if kind == "class":
        model.setdefault("num_classes", dataset.num_classes)
    elif kind == "text":
        if model.get("kind") not in nets.IMAGE_KINDS + nets.VIDEO_KINDS:
            raise ValueError("conditioning 'text' needs an image or video network (unet, dit or video_unet)")
        model.setdefault("context_dim", TEXT_EMBEDDING_DIM)
    control = cond.get("control", "")
    if control and model.get("kind") != "controlled":  # the map concatenated to the input, from scratch
        if model.get("kind") != "unet" or kind == "lowres":
            raise ValueError("conditioning.control (a map concatenated to the input) needs a U-Net and no 'lowres' "
                             "conditioning")
        images = getattr(dataset, "pixels", dataset)
        f = images.shape[-1] // dataset.shape[-1]
        model.setdefault("cond_channels", control_maps.channels(control, images.shape[0]) * f * f)
    if kind == "lowres":
        if model.get("kind") not in nets.IMAGE_KINDS:  # not video_unet either
            raise ValueError("conditioning 'lowres' needs an image network (unet or dit)")
        f = int(cond.get("factor", ConditioningConfig.factor))
        if f < 2 or any(side % f for side in dataset.shape[1:]):
            raise ValueError(f"conditioning.factor {f} must be >= 2 and divide the image size {tuple(dataset.shape[1:])}")
        model.setdefault("cond_channels", dataset.shape[0])


def validate(cfg: RunConfig) -> None:
    """Check names and ranges; each error names the config key and the allowed values."""
    dif, opt, tr, smp = cfg.diffusion, cfg.optim, cfg.train, cfg.sample
    pname = dif.process.get("name")
    if pname not in _process.names():
        raise ValueError(f"diffusion.process name {pname!r} is unknown; allowed: {', '.join(_process.names())}")
    checks = [
        (dif.parameterization in PARAMETERIZATIONS, "diffusion.parameterization", dif.parameterization, PARAMETERIZATIONS),
        (dif.noise_sampling in NOISE_SAMPLING, "diffusion.noise_sampling", dif.noise_sampling, NOISE_SAMPLING),
        (dif.weighting in WEIGHTINGS, "diffusion.weighting", dif.weighting, WEIGHTINGS),
        (dif.distance in LOSS_DISTANCES, "diffusion.distance", dif.distance, LOSS_DISTANCES),
        (opt.schedule in ("cosine", "constant"), "optim.schedule", opt.schedule, ("cosine", "constant")),
        (tr.precision in ("fp32", "bf16"), "train.precision", tr.precision, ("fp32", "bf16")),
        (smp.sampler in samplers.names(), "sample.sampler", smp.sampler, samplers.names()),
        (smp.schedule in schedules.names(), "sample.schedule", smp.schedule, schedules.names()),
    ]
    con = cfg.conditioning
    checks.append((con.kind in CONDITIONING, "conditioning.kind", con.kind, CONDITIONING))
    for ok, key, value, allowed in checks:
        if not ok:
            raise ValueError(f"{key} {value!r} is not allowed; allowed: {', '.join(allowed)}")
    positive = {"optim.lr": opt.lr, "optim.batch_size": opt.batch_size, "optim.accumulation": opt.accumulation,
                "train.log_every": tr.log_every, "train.checkpoint_every": tr.checkpoint_every,
                "train.sample_count": tr.sample_count, "train.max_bad_steps": tr.max_bad_steps,
                "sample.steps": smp.steps, "diffusion.sigma_data": dif.sigma_data,
                "sample.expert_above": smp.expert_above}
    for key, value in positive.items():
        if not value > 0:
            raise ValueError(f"{key} must be > 0, got {value}")
    if not math.isfinite(smp.guidance):
        raise ValueError(f"sample.guidance must be a finite number, got {smp.guidance}")
    if smp.guidance != 1 and con.kind not in ("class", "text"):
        raise ValueError(f"sample.guidance {smp.guidance} needs class or text conditioning (conditioning.kind is "
                         f"{con.kind!r}); use 1")
    if not dif.u_a > 0:
        raise ValueError(f"diffusion.u_a must be > 0, got {dif.u_a}")
    if dif.huber_c is not None and not dif.huber_c > 0:
        raise ValueError(f"diffusion.huber_c must be > 0 (or null for the default), got {dif.huber_c}")
    if not 0 <= con.dropout < 1:
        raise ValueError(f"conditioning.dropout must be in [0, 1), got {con.dropout}")
    if con.max_tokens < 2:
        raise ValueError(f"conditioning.max_tokens must be >= 2, got {con.max_tokens}")
    if opt.batch_size % opt.accumulation:
        raise ValueError(f"optim.batch_size {opt.batch_size} must be divisible by optim.accumulation {opt.accumulation}")
    if tr.eval_every < 0 or (tr.eval_every and tr.eval_samples < 10):
        raise ValueError(f"train.eval_every must be >= 0 and train.eval_samples >= 10; got {tr.eval_every}, "
                         f"{tr.eval_samples}")
    if tr.keep_best and not tr.eval_every:
        raise ValueError("train.keep_best needs train.eval_every > 0 (the best is judged by those evaluations)")
    if tr.max_steps is not None and tr.max_steps < 0:
        raise ValueError(f"train.max_steps must be >= 0, got {tr.max_steps}")
    if tr.time_budget is not None and tr.time_budget <= 0:
        raise ValueError(f"train.time_budget must be > 0 seconds, got {tr.time_budget}")
    if tr.max_steps is None and tr.time_budget is None:
        raise ValueError("set train.max_steps (--max-steps) or train.time_budget (--time-budget)")
    _validate_posthoc(cfg.ema)
    if con.control:
        if con.control not in control_maps.EXTRACTORS:
            raise ValueError(f"conditioning.control {con.control!r} is unknown; allowed: "
                             f"{', '.join(control_maps.EXTRACTORS)}")
        if not (cfg.model.get("kind") == "controlled" or (cfg.model.get("kind") == "unet"
                                                          and cfg.model.get("cond_channels", 0) > 0)):
            raise ValueError("conditioning.control needs a control run (train-control) or a U-Net that reads the map "
                             "concatenated to its input (train --control, which sets model.cond_channels)")
    _validate_objective(cfg)
    if dif.parameterization == "flow" and pname != "flow":
        raise ValueError("diffusion.parameterization 'flow' needs diffusion.process name 'flow'")
    nets.build(cfg.model)  # raises on bad network options


def _validate_posthoc(e: EMAConfig) -> None:
    bad = [s for s in e.posthoc if not (isinstance(s, (int, float)) and 0 < s <= POSTHOC_SIGMA_MAX)]
    if bad:
        raise ValueError(f"ema.posthoc values are relative EMA widths in (0, {POSTHOC_SIGMA_MAX:.4f}]; got {bad}")
    if len(set(e.posthoc)) != len(e.posthoc):
        raise ValueError(f"ema.posthoc lists a width twice: {e.posthoc}")
    if e.posthoc_every < 0:
        raise ValueError(f"ema.posthoc_every must be >= 0 steps (0: a 32nd of the run), got {e.posthoc_every}")


def _validate_objective(cfg: RunConfig) -> None:
    ob, smp, b = cfg.objective, cfg.sample, cfg.diffusion.boundary_sigma
    checks = [(ob.kind in OBJECTIVES, "objective.kind", ob.kind, OBJECTIVES),
              (ob.distance in DISTANCES, "objective.distance", ob.distance, DISTANCES),
              (ob.index_sampling in ("lognormal", "uniform"), "objective.index_sampling", ob.index_sampling,
               ("lognormal", "uniform"))]
    for ok, key, value, allowed in checks:
        if not ok:
            raise ValueError(f"{key} {value!r} is not allowed; allowed: {', '.join(allowed)}")
    if ob.kind != "denoising":
        check_solver(ob.solver)
    if not 1 <= ob.steps_start <= ob.steps_end:
        raise ValueError(f"need 1 <= objective.steps_start <= objective.steps_end, got {ob.steps_start} and "
                         f"{ob.steps_end}")
    if ob.kind == "consistency" and b is None:
        raise ValueError("objective.kind 'consistency' needs diffusion.boundary_sigma (the sigma_min at which the "
                         "model is the identity)")
    if b is not None and not b > 0:
        raise ValueError(f"diffusion.boundary_sigma must be > 0, got {b}")
    if ob.kind == "progressive":
        if ob.teacher is None:
            raise ValueError("objective.kind 'progressive' needs objective.teacher")

        grid = schedules.validate(ob.grid or [], "objective.grid")
        if len(grid) % 2 == 0:
            raise ValueError(f"objective.grid must hold an even number of steps (2n + 1 levels), got {len(grid)} levels")
    if smp.schedule == "custom":
        schedules.validate(smp.sigmas or [], "sample.sigmas")
    elif smp.sigmas is not None:
        raise ValueError(f"sample.sigmas is used by sample.schedule 'custom' only; the schedule is {smp.schedule!r}")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1.5h``, ``1h30m`` -> seconds."""
    t = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
        if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", t).strip():
            raise ValueError(f"duration {text!r} is not understood; use e.g. 90s, 5m, 1h30m or a number of seconds")
        seconds = sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


def schedule_of(sample: SampleConfig, schedule: str | None = None):
    """The ``schedule`` argument of ``undiffuse.sample`` for a run's sample settings: the
    name, or the fixed list of sigmas for ``custom``."""
    schedule = schedule or sample.schedule
    return list(sample.sigmas) if schedule == "custom" and sample.sigmas is not None else schedule


def build_denoiser(cfg: RunConfig) -> Denoiser:
    net = nets.build(cfg.model)
    proc = _process.from_config(cfg.diffusion.process)
    return Denoiser(net, proc, cfg.diffusion.parameterization, sigma_data=cfg.diffusion.sigma_data,
                    time_scale=cfg.diffusion.time_scale, boundary_sigma=cfg.diffusion.boundary_sigma)
