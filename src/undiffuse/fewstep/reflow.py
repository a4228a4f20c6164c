"""Rectified flow's reflow step (Liu et al. 2023, "Flow Straight and Fast", Algorithm 1).

A flow model transports noise ``z`` to data along the paths of its probability-flow ODE.
Those paths are curved wherever the marginal velocity averages over many data points, so
few-step samplers cut the corners. Reflow fixes the *pairing* instead of the solver:

1. draw noise ``z`` and solve the teacher's ODE deterministically, ``x0 = ODE(z)``
   (:func:`couplings`);
2. train a student with the ordinary flow loss, but with each data point ``x0`` always
   noised towards *its own* ``z`` (:class:`PairedDataset`, which the trainer recognises by
   its ``noise_of`` method) instead of fresh noise.

The student's velocity then regresses ``z - x0`` on interpolations of paired points that
(being the ends of non-crossing ODE paths) cross much less than independent pairs do, so its
own paths are straighter (Liu et al. 2023, Theorem 3.6) and one Euler step from ``z`` lands
near ``x0``. :func:`straightness` measures this directly.

Flow time: ``x_t = (1 - t) x0 + t z``, ``t = sigma / (1 + sigma)``, and the rescaled-space
state of every sampler here is ``x = x_t / (1 - t)`` (see ``process.RectifiedFlow``). For
any denoiser the probability-flow velocity in flow time is

    v(x_t, t) = E[z - x0 | x_t] = (x_t - D(x_t / (1 - t), t / (1 - t))) / t,

so :func:`straightness` works for trained flow networks, other parameterizations and the
analytic mixtures alike.
"""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import torch
from safetensors import safe_open

from undiffuse import samplers as _samplers
from undiffuse.config import RunConfig, apply_overrides
from undiffuse.core.noise import noise as make_noise
from undiffuse.core.types import denoiser_info
from undiffuse.fewstep.levels import DEFAULT_SEARCH, LevelSearch, after_training
from undiffuse.inference.generate import load_run
from undiffuse.io.checkpoint import CheckpointError, load_tensors, save_tensors
from undiffuse.samplers.driver import sample
from undiffuse.training.trainer import Trainer
from undiffuse.utils import distributed as _dist

Tensor = torch.Tensor


# --------------------------------------------------------------------------- couplings


def couplings(denoiser, n: int, shape: Sequence[int], *, seed: int = 0, sampler: str = "heun", steps: int = 40,
              schedule: str = "karras", batch_size: int = 256, sigma_min: float | None = None,
              sigma_max: float | None = None, device="cpu", world=None) -> tuple[Tensor, Tensor]:
    """Noise-to-sample pairs ``(z, x0)`` of the teacher's deterministic ODE, each ``(n, *shape)``
    float32 on the CPU.

    ``z[i]`` is the standard normal noise of seed ``seed + i`` alone (``undiffuse.noise``) and
    ``x0[i]`` the result of ``undiffuse.sample`` from it with a deterministic ``sampler``, so
    pair i does not depend on ``n`` or ``batch_size``. As in ``sample``, the ODE starts at
    ``sigma_max * z`` (flow time ``t_max``, i.e. ``x_t = t_max z``).

    ``world`` (``undiffuse.utils.distributed.World``, under torchrun): the batches are dealt to the
    processes in turn and the pairs gathered on every process; the same pairs, byte for byte.
    """
    if _samplers.info(sampler).stochastic:
        raise ValueError(f"sampler {sampler!r} is stochastic; couplings need a deterministic ODE sampler "
                         f"(e.g. heun, euler, dpmpp_2m)")
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"n and batch_size must be positive, got n={n}, batch_size={batch_size}")
    world = world or _dist.World()
    zs, xs = torch.zeros((n, *shape)), torch.zeros((n, *shape))  # this process fills its own batches
    for start in _dist.my_batches(n, batch_size, world):
        seeds = list(range(seed + start, seed + min(start + batch_size, n)))
        z = make_noise((len(seeds), *shape), seed=seeds, device=device)
        x0 = sample(denoiser, z, sampler=sampler, steps=steps, schedule=schedule, sigma_min=sigma_min,
                    sigma_max=sigma_max)
        zs[start:start + len(seeds)] = z.float().cpu()
        xs[start:start + len(seeds)] = x0.float().cpu()
    return _dist.all_gather_rows(zs, batch_size, world), _dist.all_gather_rows(xs, batch_size, world)


# --------------------------------------------------------------------------- a couplings file


def save_couplings(path: str, z: Tensor, x0: Tensor, meta: dict) -> None:
    """Write pairs to a safetensors file (tensors ``z`` and ``x0``) with ``meta`` (how they were
    drawn: JSON-able values) as JSON in its header; atomic."""
    if z.shape != x0.shape:
        raise ValueError(f"z and x0 must have the same shape, got {tuple(z.shape)} and {tuple(x0.shape)}")
    save_tensors(path, {"z": z.contiguous(), "x0": x0.contiguous()},
                 metadata={"couplings": json.dumps({**meta, "n": int(z.shape[0])}, sort_keys=True)})


def load_couplings(path: str) -> tuple[Tensor, Tensor, dict]:
    """``(z, x0, meta)`` of a file written by :func:`save_couplings`."""
    t = load_tensors(path)  # refuses anything that is not a safetensors file
    with safe_open(path, framework="pt") as f:
        header = (f.metadata() or {}).get("couplings")
    if header is None or set(t) != {"z", "x0"}:
        raise CheckpointError(f"{path} is not a couplings file (tensors z and x0 with a 'couplings' header)")
    return t["z"], t["x0"], json.loads(header)


def _cached_couplings(path: str, n: int, meta: dict, draw) -> tuple[Tensor, Tensor]:
    """The first ``n`` pairs of the couplings file ``path`` if it was drawn the same way
    (``meta``), else ``draw()``'s pairs, then saved there. Pair i depends on its seed alone, so
    the first n of a larger file are exactly the pairs a draw of n would give."""
    if os.path.exists(path):
        z, x0, saved = load_couplings(path)
        differ = {k: (saved.get(k), v) for k, v in meta.items() if saved.get(k) != v}
        if differ:
            raise ValueError(f"couplings file {path!r} was drawn differently: " + ", ".join(
                f"{k} {a!r} there, {b!r} here" for k, (a, b) in sorted(differ.items()))
                + "; give another file or delete it")
        if saved["n"] < n:
            raise ValueError(f"couplings file {path!r} holds {saved['n']} pairs, fewer than the {n} asked for; "
                             f"give another file, delete it or ask for at most {saved['n']}")
        return z[:n], x0[:n]
    z, x0 = draw()
    save_couplings(path, z, x0, meta)
    return z, x0


# --------------------------------------------------------------------------- straightness


def flow_velocity(denoiser, x_t: Tensor, t: float) -> Tensor:
    """``v(x_t, t) = (x_t - D(x_t / (1 - t), t / (1 - t))) / t`` for ``0 < t < 1``."""
    sigma = torch.full((x_t.shape[0],), t / (1 - t), dtype=torch.float64, device=x_t.device)
    den = denoiser(x_t / (1 - t), sigma).to(x_t.dtype)
    return (x_t - den) / t


def straightness(denoiser, z: Tensor, *, steps: int = 200, t_max: float | None = None,
                 return_path: bool = False):
    """Liu et al.'s straightness ``S = (1/T) int_0^T ||v(x_t, t) - (x_T - x_0) / T||^2 dt`` of
    the probability-flow path from each noise ``z``, per sample (shape ``(B,)``, float64).

    Exactly what is computed, in float64:

    * the path starts at flow time ``T = t_max`` (default: the denoiser's ``sigma_max`` mapped
      to flow time, as every sampler starts) at ``x_T = T z``;
    * it is integrated to ``t = 0`` with ``steps`` explicit-midpoint (RK2) steps on a uniform
      grid in ``t`` of width ``h = T / steps``: ``x_mid = x_k - (h/2) v(x_k, t_k)``,
      ``x_{k+1} = x_k - h v(x_mid, t_k - h/2)``. No evaluation happens at ``t = 0`` or ``1``;
    * the integral is the midpoint rule over the same evaluations: ``S = mean_k
      ||v(x_mid_k, t_k - h/2) - (x_T - x_0) / T||^2``, ``||.||^2`` summed over all elements of
      a sample.

    ``S = 0`` exactly when the velocity is constant along the path (the path is a straight
    line traversed at constant speed); with ``T = 1`` this is S(Z) of Liu et al. 2023, eq. 7.
    ``2 * steps`` denoiser evaluations. With ``return_path`` also returns ``x_0`` (the end
    of the path, no final denoising jump).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if t_max is None:
        s_max = denoiser_info(denoiser).sigma_max
        if s_max is None:
            raise ValueError("give t_max: the denoiser has no sigma_max")
        t_max = float(s_max) / (1 + float(s_max)) if math.isfinite(s_max) else 1.0
    if not 0 < t_max < 1:
        raise ValueError(f"t_max must be in (0, 1), got {t_max}")
    x = z.to(torch.float64) * t_max
    start = x
    h = t_max / steps
    vs = []
    with torch.no_grad():
        for k in range(steps):
            t = t_max - k * h
            v1 = flow_velocity(denoiser, x, t)
            x_mid = x - (h / 2) * v1
            v_mid = flow_velocity(denoiser, x_mid, t - h / 2)
            x = x - h * v_mid
            vs.append(v_mid)
    chord = (start - x) / t_max
    s = torch.stack([(v - chord).pow(2).flatten(1).sum(1) for v in vs]).mean(0)
    return (s, x) if return_path else s


# --------------------------------------------------------------------------- training data


class PairedDataset:
    """Fixed ``(x0, z)`` pairs that look like ``undiffuse.data.Dataset`` to the trainer.

    ``noise_of(index)`` returns the paired noises; the trainer uses them as eps instead of
    fresh noise, so the interpolation ``x_t = (1 - t) x0 + t z`` always joins a pair. Both
    tensors are stored as float32 ``(N, *shape)``; ``get`` returns ``x0`` as is (model space).
    Train without ``data.hflip``: a flipped ``x0`` is no longer the end of its ``z``'s path.
    """

    def __init__(self, x0: Tensor, z: Tensor, *, name: str = "couplings", kind: str | None = None):
        if x0.shape != z.shape or x0.dim() < 2:
            raise ValueError(f"x0 and z must have the same shape (N, ...); got {tuple(x0.shape)} and {tuple(z.shape)}")
        kind = kind or ("vector" if x0.dim() == 2 else "image")
        if kind not in ("vector", "image"):
            raise ValueError(f"kind must be 'vector' or 'image', got {kind!r}")
        self.x0 = x0.detach().to(torch.float32).cpu()
        self.z = z.detach().to(torch.float32).cpu()
        self.name, self.kind = name, kind
        self.shape = tuple(x0.shape[1:])
        self.labels = None
        self.class_names: list[str] = []

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    @property
    def num_classes(self) -> int:
        return 0

    def get(self, index) -> Tensor:
        return self.x0[_as_index(index)]

    def noise_of(self, index) -> Tensor:
        """The noise paired with the items at ``index`` (same shape as ``get(index)``)."""
        return self.z[_as_index(index)]

    def labels_of(self, index):
        return None

    def to_unit(self, x):
        """Images: model space ``[-1, 1]`` to ``[0, 1]`` (clamped). Vectors unchanged."""
        return ((x + 1) / 2).clamp(0, 1) if self.kind == "image" else x


def _as_index(index):
    return index if isinstance(index, (torch.Tensor, int, slice)) else torch.as_tensor(index, dtype=torch.long)


# --------------------------------------------------------------------------- one call


def reflow(teacher_run_path: str, out: str, *, n: int, max_steps: int | None = None,
           time_budget: float | None = None, seed: int = 0, sampler: str = "heun",
           steps: int | None = None, schedule: str | None = None, batch_size: int = 256, init: str = "ema",
           overrides: dict | None = None, couplings_file: str | None = None,
           levels: LevelSearch | None = DEFAULT_SEARCH, progress: bool = False, log=print) -> dict:
    """Reflow a trained flow run: ``n`` couplings of the teacher's EMA model (seeds
    ``seed .. seed + n - 1``; ``sampler``, and ``steps``/``schedule`` defaulting to the
    teacher's sample settings), then train a student with the teacher's config (same network,
    process and loss) on them for ``max_steps`` steps into ``out``.

    ``init``: ``"ema"`` starts the student (and its EMA) from the teacher's EMA weights,
    ``"none"`` from a fresh initialisation, a run folder from that run's EMA weights (the
    same network as the teacher's; e.g. a reflow student, for a second stage with other
    training options such as ``diffusion.noise_sampling=sigma_max``, the 1-step distillation
    of Liu et al. 2023, sec. 2.3; the student's config is still the teacher's with
    ``overrides``). ``overrides`` are dotted config overrides for the
    student (e.g. ``{"optim.lr": 1e-4}``). ``couplings_file``: a safetensors file that keeps
    the pairs (with how they were drawn) for the next student: read when it exists and was
    drawn the same way (its first ``n`` pairs), written otherwise. ``levels``: how the
    student's 1- and 2-step levels are picked after training (``fewstep.levels``; None: not
    picked). Returns the trainer's ``fit()`` result (with the picked ``levels``).
    """
    if init not in ("ema", "none") and not os.path.isdir(init):
        raise ValueError(f"init must be 'ema', 'none' or a run folder, got {init!r}")

    device = (overrides or {}).get("train.device", "cpu")  # the couplings are drawn where the student trains
    world = _dist.setup(device)  # under torchrun: the couplings are split over the processes
    if couplings_file is not None and world.distributed:
        raise ValueError("couplings_file is for one process; under torchrun the couplings are drawn by all "
                         "processes each time")
    teacher = load_run(teacher_run_path, weights="ema", device=_dist.device_for(device, world))
    cfg = teacher.config
    if cfg.diffusion.parameterization != "flow" or cfg.diffusion.process.get("name") != "flow":
        raise ValueError(f"reflow needs a rectified-flow run (process 'flow', parameterization 'flow'); "
                         f"{teacher_run_path!r} has process {cfg.diffusion.process.get('name')!r} and "
                         f"parameterization {cfg.diffusion.parameterization!r}")
    if cfg.conditioning.kind != "none":
        raise ValueError(f"reflow supports unconditional runs only; {teacher_run_path!r} uses "
                         f"conditioning {cfg.conditioning.kind!r}")
    batch_size = min(batch_size, -(-n // world.size))  # at least one batch for every process
    how = dict(sampler=sampler, steps=steps or cfg.sample.steps, schedule=schedule or cfg.sample.schedule,
               sigma_min=cfg.sample.sigma_min, sigma_max=cfg.sample.sigma_max)

    def draw():
        return couplings(teacher.denoiser, n, teacher.shape, seed=seed, batch_size=batch_size,
                         device=_dist.device_for(device, world), world=world, **how)

    if couplings_file is None:
        z, x0 = draw()
    else:
        meta = {"teacher": os.path.abspath(teacher.checkpoint), "teacher_step": int(teacher.step), "seed": seed,
                "shape": list(teacher.shape), **how}
        try:
            z, x0 = _cached_couplings(couplings_file, n, meta, draw)
        except CheckpointError as e:  # not the teacher's fault: name the file's option
            raise ValueError(f"couplings_file: {e}") from None
    data = PairedDataset(x0, z, name=f"reflow of {os.path.abspath(teacher_run_path)}", kind=teacher.kind)
    d = cfg.to_dict()
    if (max_steps is None) == (time_budget is None):
        raise ValueError("give exactly one of max_steps and time_budget")
    d["train"]["max_steps"], d["train"]["time_budget"] = max_steps, time_budget
    d["data"]["hflip"] = False  # a flipped x0 would no longer be the end of its z's path
    d = apply_overrides(d, overrides or {})
    student_cfg = RunConfig.from_dict(d)
    if init in ("ema", "none"):
        start = teacher.denoiser.net.state_dict() if init == "ema" else None
    else:
        try:
            other = load_run(init, weights="ema")
        except CheckpointError as e:
            raise ValueError(f"init {init!r}: {e}") from None
        if other.config.model != cfg.model:
            raise ValueError(f"init {init!r} has another network ({other.config.model}) than the teacher's "
                             f"({cfg.model})")
        start = other.denoiser.net.state_dict()
    trainer = Trainer(student_cfg, data, out, progress=progress, log=log, init_weights=start)
    length = f"{max_steps} steps" if max_steps is not None else f"{time_budget:g} s"
    split = f", drawn by {world.size} processes" if world.distributed else ""
    log(f"reflow: {n} couplings of {teacher.checkpoint} (step {teacher.step}){split}; training {out} for {length}")
    return after_training(trainer.fit(), out, levels, main=world.main, device=_dist.device_for(device, world),
                          log=log)
