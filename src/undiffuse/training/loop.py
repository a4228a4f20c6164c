"""The training loop every network here trains through: the diffusion trainer
(``training.trainer``, built on :class:`TrainingLoop`), the guidance classifier
(``training.classifier``) and the autoencoder (``training.autoencoder``).

One optimizer step (:meth:`TrainingLoop.train_step`) reads top to bottom: set the learning
rate, then for each micro-batch ask the objective for per-sample losses, average them and
back-propagate, then :meth:`TrainingLoop.update`: skip a step whose loss is not finite
(stopping after ``train.max_bad_steps`` in a row), clip the gradient norm, step AdamW, move
the EMA. What differs between trainings is the batch (:meth:`TrainingLoop.next_batch`) and
the objective; the diffusion trainer adds data parallelism through two hooks
(:meth:`TrainingLoop.train_mode`, :meth:`TrainingLoop.gradient_sync`).

An objective (:class:`Objective`) is called as ``objective(loop, x0, cond)`` and returns one
loss per sample of ``x0`` (STYLE: the loop owns the reduction). It draws its randomness
from ``loop.gen``, for the whole micro-batch (``loop.batch.size`` rows) keeping this
process's rows (``loop.batch.rows_of``): every process then makes the draws a single process
makes, so N processes train like one, and the saved generator resumes on any number.

Learning rate (:func:`lr_factor`): linear warm-up by step, then cosine to
``optim.min_lr_ratio`` or constant, over the fraction of the run done
(:meth:`TrainingLoop.fraction_done`). EMA (:func:`ema_beta`): a half-life in samples, at
most ``ema.rampup`` times the samples seen early on (the half-life and ramp-up of EDM's
training, Karras et al. 2022). Both are pure functions of the step, the samples seen and the
progress, which with the weights, the optimizer and the generator are the loop's whole state.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from tqdm.auto import tqdm

from undiffuse.config import EMAConfig, OptimConfig, TrainConfig
from undiffuse.training.sharding import full
from undiffuse.utils import distributed as _dist

Tensor = torch.Tensor
SCHEDULE_BY = ("steps", "larger")


class TrainingError(RuntimeError):
    pass


class Settings(Protocol):
    """What the loop reads of a configuration: a ``RunConfig`` has these groups (and more),
    a :class:`LoopConfig` only these."""

    optim: OptimConfig
    ema: EMAConfig
    train: TrainConfig


@dataclass
class LoopConfig:
    """The loop's settings for a training that is not a diffusion run (classifier,
    autoencoder): the ``optim``, ``ema`` and ``train`` groups of ``config`` (the loop reads
    ``train.max_steps``, ``time_budget``, ``max_bad_steps`` and ``precision``)."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class Objective(Protocol):
    def __call__(self, loop: "TrainingLoop", x0: Tensor, cond: dict) -> Tensor:
        """Per-sample losses, shape ``(len(x0),)``."""


def lr_factor(cfg: Settings, step: int, progress: float) -> float:
    """Warm-up (linear, by step) then cosine or constant; ``progress`` in [0, 1] is the
    fraction of the run done (by steps, or by time under a budget)."""
    o = cfg.optim
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
    if o.schedule == "constant":
        return warm
    cos = 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return warm * (o.min_lr_ratio + (1 - o.min_lr_ratio) * cos)


def ema_beta(cfg: Settings, samples_seen: int) -> float:
    """Per-step EMA decay for a half-life in samples, with the half-life ramped up early."""
    e, b = cfg.ema, cfg.optim.batch_size
    half = e.halflife_samples
    if e.rampup > 0:
        half = min(half, e.rampup * samples_seen)
    return 0.5 ** (b / max(half, 1e-8))


@dataclass(frozen=True)
class Batch:
    """The micro-batch in training: ``index``, the data rows of the whole micro-batch (the same
    on every process); ``rows``, the slice of it this process trains on."""

    index: Tensor
    rows: slice

    @property
    def size(self) -> int:
        return len(self.index)

    def rows_of(self, drawn: Tensor) -> Tensor:
        """This process's rows of values drawn for the whole micro-batch."""
        return drawn[self.rows]


@contextlib.contextmanager
def seeded(seed: int):
    """Run the body with torch's global generators seeded with ``seed`` (what network
    initialisation and dropout draw from), and give the caller's states back afterwards."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


class TrainingLoop:
    """Train ``net`` on the per-sample losses of ``objective``.

    ``cfg``: :class:`Settings`. ``ema``: a copy of ``net`` that follows it (None: no EMA).
    ``gen``: the generator objectives and batches draw from. ``batches``: called once per
    micro-batch, returns ``(index, x0, cond)`` (a subclass may override :meth:`next_batch`
    instead). ``log``: messages (a skipped step). ``schedule_by``: what :meth:`fraction_done`
    follows when both ``train.max_steps`` and ``train.time_budget`` are set: ``steps`` (the
    step count alone, so the learning rate is a pure function of the step and a resumed run
    repeats the straight one) or ``larger`` (whichever limit is nearer).
    """

    fsdp = False  # the diffusion trainer's networks may be sharded (its EMA then moves shard by shard)
    posthoc = None  # power-function averages for post-hoc EMA (training.power_ema.PowerEMA), moved with the EMA
    world = _dist.World()  # one process unless the diffusion trainer runs under torchrun

    def __init__(self, cfg: Settings, net: torch.nn.Module, objective: Objective, *, gen: torch.Generator,
                 ema: torch.nn.Module | None = None, batches: Callable[[], tuple] | None = None,
                 log: Callable[[str], None] = print, schedule_by: str = "steps"):
        if schedule_by not in SCHEDULE_BY:
            raise ValueError(f"schedule_by {schedule_by!r} is not allowed; allowed: {', '.join(SCHEDULE_BY)}")
        self.cfg, self.net, self.ema, self.objective, self.gen = cfg, net, ema, objective, gen
        self.batches, self.log, self.schedule_by = batches, log, schedule_by
        self.opt = self._optimizer()
        self.step, self.elapsed, self.samples_seen, self.bad_in_row = 0, 0.0, 0, 0
        self.grad_norm, self.lr = float("nan"), 0.0
        self.batch: Batch | None = None

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        cuda = next(self.net.parameters()).device.type == "cuda"
        return torch.optim.AdamW(self.net.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                 weight_decay=o.weight_decay, fused=cuda or None)

    # ------------------------------------------------------------------ progress
    def fraction_done(self) -> float:
        """The fraction of the run done (see ``schedule_by``)."""
        tr = self.cfg.train
        by_steps = None if tr.max_steps is None else self.step / max(tr.max_steps, 1)
        by_time = None if tr.time_budget is None else self.elapsed / tr.time_budget
        if by_steps is None:
            return by_time
        if by_time is None or self.schedule_by == "steps":
            return by_steps
        return max(by_steps, by_time)

    def done(self) -> bool:
        tr = self.cfg.train
        return ((tr.max_steps is not None and self.step >= tr.max_steps)
                or (tr.time_budget is not None and self.elapsed >= tr.time_budget))

    # ------------------------------------------------------------------ one step
    def train_step(self) -> float | None:
        """One optimizer step; returns its loss (over the batch and the processes), or None for
        a step skipped because the loss was not finite."""
        o = self.cfg.optim
        lr = o.lr * lr_factor(self.cfg, self.step, self.fraction_done())
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.train_mode()
        total = 0.0
        for k in range(o.accumulation):
            x0, cond = self.next_batch()
            with self.gradient_sync(k == o.accumulation - 1):
                with self.autocast():
                    loss = self.objective(self, x0, cond).mean()
                (loss / o.accumulation).backward()
            total += loss.detach().item() / o.accumulation
        return self.update(_dist.mean(total, self.world), lr)  # every rank judges and logs the same loss

    def next_batch(self) -> tuple[Tensor, dict]:
        """The next micro-batch ``(x0, cond)``; sets :attr:`batch`."""
        index, x0, cond = self.batches()
        self.batch = Batch(index, slice(None))
        return x0, cond

    def train_mode(self) -> None:
        self.net.train()

    def gradient_sync(self, last: bool):
        """Around each micro-batch's forward and backward (data parallel: gradients are
        averaged once, after the ``last`` micro-batch)."""
        return contextlib.nullcontext()

    def autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def update(self, loss: float, lr: float) -> float | None:
        """Finish a step whose gradients are in place: skip it if ``loss`` is not finite, else
        clip, step the optimizer and move the EMA."""
        cfg, o = self.cfg, self.cfg.optim
        self.samples_seen += o.batch_size
        if not math.isfinite(loss):
            self.opt.zero_grad(set_to_none=True)
            self.bad_in_row += 1
            self._write_log({"step": self.step + 1, "skipped": "non-finite loss", "loss": str(loss)})
            self.log(f"step {self.step + 1}: non-finite loss ({loss}); step skipped "
                     f"({self.bad_in_row} in a row, limit {cfg.train.max_bad_steps})")
            if self.bad_in_row >= cfg.train.max_bad_steps:
                raise TrainingError(f"{self.bad_in_row} non-finite losses in a row at step {self.step + 1}; "
                                    f"stopping (lower optim.lr or check the data)")
            self.step += 1
            return None
        self.bad_in_row = 0
        if o.grad_clip > 0:
            self.grad_norm = float(full(torch.nn.utils.clip_grad_norm_(self.net.parameters(), o.grad_clip)))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self._update_ema(ema_beta(cfg, self.samples_seen))
        if self.posthoc is not None:
            self.posthoc.update(self.net)
        self.step += 1
        self.lr = lr
        return loss

    def _update_ema(self, beta: float) -> None:
        with torch.no_grad():
            if self.fsdp:  # DTensor shards: one local lerp each
                for pe, p in zip(self.ema.parameters(), self.net.parameters()):
                    pe.lerp_(p, 1 - beta)
            else:  # one fused call over all tensors (on a GPU: a few kernel launches, not one per tensor)
                torch._foreach_lerp_(list(self.ema.parameters()), list(self.net.parameters()), 1 - beta)
            for be, b in zip(self.ema.buffers(), self.net.buffers()):
                be.copy_(b)

    def _write_log(self, entry: dict) -> None:
        """A log entry (the diffusion trainer writes ``RUN/log.jsonl``; here: none)."""

    # ------------------------------------------------------------------ loop
    def train_until_done(self, on_step: Callable[[float | None], None] | None = None, *,
                         bar: ProgressBar | None = None) -> None:
        """Train until :meth:`done`; ``elapsed`` counts the training steps' time only.
        ``on_step(loss)`` after every step."""
        try:
            while not self.done():
                t0 = time.perf_counter()
                loss = self.train_step()
                self.elapsed += time.perf_counter() - t0
                if bar is not None:
                    bar.update(self, loss)
                if on_step is not None:
                    on_step(loss)
        finally:
            if bar is not None:
                bar.close()


class ProgressBar:
    """tqdm bar with loss, steps/s and an ETA: by steps, or under a time budget alone by
    seconds, with the steps made and the steps the budget will make at the rate so far."""

    def __init__(self, loop: TrainingLoop, desc: str = "train", leave: bool = True):
        tr = loop.cfg.train
        self.by_time = tr.max_steps is None
        total = round(tr.time_budget) if self.by_time else tr.max_steps
        initial = round(loop.elapsed) if self.by_time else loop.step
        unit = "s" if self.by_time else "step"
        self.bar = tqdm(total=total, initial=min(initial, total), unit=unit, desc=desc, dynamic_ncols=True,
                        leave=leave)
        self.last = loop.elapsed

    def update(self, loop: TrainingLoop, loss) -> None:
        if self.by_time:
            whole = int(loop.elapsed) - int(self.last)
            if whole > 0:
                self.bar.update(whole)
                self.last = loop.elapsed
        else:
            self.bar.update(1)
        if loop.step % 10 == 0:
            rate = loop.step / max(loop.elapsed, 1e-9)
            more = {"of_about": int(rate * loop.cfg.train.time_budget)} if self.by_time else {}
            self.bar.set_postfix(step=loop.step, **more, loss=f"{loss:.4f}" if loss is not None else "nan",
                                 steps_per_s=f"{rate:.1f}", refresh=False)

    def close(self) -> None:
        self.bar.close()
