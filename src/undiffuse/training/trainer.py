"""The trainer: diffusion runs on the one training loop (``training.loop``), exact resume,
atomic checkpoints.

Everything random comes from state that is saved: a ``torch.Generator`` for noise levels and
noise, the trainer's own state of torch's global generator (dropout; see below), and the data
order, which is a permutation drawn from ``(seed, epoch)`` plus a position in it. Learning
rate and EMA decay are pure functions of the step (or, under a time budget, of the training
time used), so a run stopped at any checkpoint and resumed reproduces the straight run bit for
bit when it is step-bounded.
A time-budget run's length depends on the machine's speed by design.

The caller's global random state is left alone: the network is initialised from the seed under
``torch.random.fork_rng``, and :meth:`Trainer.fit` swaps the trainer's own CPU generator state
in for its duration (dropout draws from the global generator) and the caller's back after.
That state is what checkpoints store as ``rng.torch``. On a CUDA device the device generator is
forked the same way and seeded from ``train.seed`` once per process (not checkpointed).

Under ``torchrun`` (see ``undiffuse.utils.distributed``) each of N processes trains on its slice of
the same global batch, with the same randomness the single process draws, and the network is
wrapped in ``DistributedDataParallel``; only rank 0 writes the log, grids and checkpoints,
which hold the unwrapped network, so a run saved by N processes resumes on M. Every
objective (denoising, consistency, progressive: ``training.objectives``) draws for the whole
global micro-batch and keeps the rank's rows, so this holds whatever the objective.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from undiffuse import nets
from undiffuse.config import RunConfig, build_denoiser, schedule_of
from undiffuse.core.losses import denoising_loss, sample_sigma
from undiffuse.core.noise import noise as make_noise
from undiffuse.core.precond import Denoiser
from undiffuse.data.audio import to_waveform
from undiffuse.inference import generate as gen
from undiffuse.inference import posthoc_ema
from undiffuse.io import checkpoint as ckpt
from undiffuse.io.audio import spectrogram
from undiffuse.io.video import strip as video_strip
from undiffuse.metrics.evaluate import evaluate, to_json
from undiffuse.samplers.driver import sample
from undiffuse.steering import guidance
from undiffuse.steering.conditioning import TrainingConditions
from undiffuse.steering.frames import with_given
from undiffuse.training import sharding
from undiffuse.training.budget import POSTHOC_SNAPSHOTS
from undiffuse.training.denoising import DenoisingObjective
from undiffuse.training.loop import (
    Batch,
    TrainingError,
    TrainingLoop,
    ema_beta,  # noqa: F401 (public: undiffuse.train.ema_beta)
    lr_factor,  # noqa: F401 (public: undiffuse.train.lr_factor)
)
from undiffuse.training.loop import ProgressBar as _bar  # fit's name for it
from undiffuse.training.objectives import build_objective
from undiffuse.training.power_ema import PowerEMA
from undiffuse.training.resume import DataOrder, merged_for_resume
from undiffuse.utils import acceleration as accel
from undiffuse.utils import distributed as _dist
from undiffuse.utils.atomic import write_text

Tensor = torch.Tensor


def _sample_size(data) -> list[int]:
    """What a checkpoint records as the sample size: the sides of an image, a spectrogram or a
    video's frames (channels and frames live in the config), a waveform's length; [] for vectors."""
    if data.kind == "vector":
        return []
    return list(data.shape[2:] if data.kind == "video" else data.shape[1:])


def _licence(dataset) -> dict:
    """The licence and attribution a dataset asks every run to keep (``Dataset.info``)."""
    info = getattr(dataset, "info", None) or {}
    return {k: info[k] for k in ("licence", "attribution") if k in info}


class Trainer(TrainingLoop):
    """Train ``cfg`` on ``dataset`` into the run folder ``run``.

    ``resume``: None (fresh; refuses a folder that already has checkpoints), ``"auto"`` (the
    latest complete checkpoint of ``run`` if any, else fresh) or a checkpoint/run path, which
    must exist. ``objective``: what to minimise (``training.loop.Objective``; default: the one
    ``cfg.objective`` names).
    """

    def __init__(self, cfg: RunConfig, dataset, run: str, *, resume: str | None = None, progress: bool = True,
                 log=print, objective=None, fsdp: bool = False, init_weights: dict | None = None):
        self.world = _dist.setup(cfg.train.device)  # a single process unless started by torchrun
        self.fsdp = fsdp and self.world.distributed  # one process: nothing to shard
        main = self.world.main
        self.cfg, self.data, self.run, self.progress = cfg, dataset, run, progress and main
        self.log = log if main else (lambda message: None)
        self.device = torch.device(_dist.device_for(cfg.train.device, self.world))
        if cfg.train.precision == "bf16" and self.device.type != "cuda":
            raise ValueError(f"train.precision 'bf16' needs a CUDA device; train.device is {cfg.train.device!r}")
        start = self._resolve_resume(resume)
        if start is not None:
            saved_shape = start["state_json"].get("dataset", {}).get("shape")
            if saved_shape is not None and tuple(saved_shape) != tuple(dataset.shape):
                raise TrainingError(f"cannot resume {start['path']}: it was trained on items of shape "
                                    f"{tuple(saved_shape)}, the data given has {tuple(dataset.shape)}")
            cfg = self.cfg = merged_for_resume(start["state_json"]["config"], cfg)
        if self.fsdp and cfg.train.channels_last:
            raise ValueError("train.channels_last cannot be combined with --fsdp: FSDP shards contiguous parameters "
                             "only (omit --channels-last; under FSDP the default is off)")
        # Network initialisation (and whatever building the objective draws) from the seed on a
        # forked global generator: the caller's state is untouched; the state it ends in is the
        # trainer's own, from which dropout draws during fit (so runs match those seeded globally).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(cfg.train.seed)
            self.denoiser = build_denoiser(cfg).to(self.device)
            self.net = self.denoiser.net
            self.ema = build_denoiser(cfg).net.to(self.device).eval().requires_grad_(False)
            if init_weights is not None and start is None:  # a fresh run started from given weights
                self.net.load_state_dict(init_weights)
            self.ema.load_state_dict(self.net.state_dict())
            self.channels_last = not self.fsdp and accel.wants_channels_last(cfg.train.channels_last, self.device)
            if self.channels_last:
                accel.channels_last(self.net)
                accel.channels_last(self.ema)
            if cfg.ema.posthoc and self.fsdp:
                raise ValueError("ema.posthoc (--ema-posthoc) cannot be combined with --fsdp yet: the tracked averages "
                                 "are whole copies of the network; use DDP (no --fsdp) or drop --ema-posthoc")
            if cfg.ema.posthoc and main:  # rank 0 tracks and writes them (under DDP every rank has the same net)
                self.posthoc = PowerEMA(self.net, cfg.ema.posthoc)
            if objective is None:  # denoising with this module's loss and noise-level draw (tests replace them here)
                objective = DenoisingObjective(cfg.diffusion, loss=denoising_loss, noise_levels=sample_sigma) \
                    if cfg.objective.kind == "denoising" else build_objective(cfg, dataset, self.device)
            self.rng_torch = torch.get_rng_state()  # the trainer's global-generator state (dropout)
        self._rng_cuda: Tensor | None = None  # the device generator's state between fits (CUDA only)
        self._own_rng_active = False
        generator = torch.Generator(device="cpu").manual_seed(cfg.train.seed)  # flips, conditions, objective
        super().__init__(cfg, self.net, objective, gen=generator, ema=self.ema, log=self.log)
        self.order = DataOrder(len(dataset), cfg.train.seed)
        self.conditions = TrainingConditions(cfg.conditioning, dataset,
                                             concat_control=cfg.model.get("kind") != "controlled",
                                             given_frames=cfg.model.get("kind") in nets.VIDEO_KINDS
                                             and cfg.model.get("frame_cond", True))
        self.window = [0.0, 0]  # loss sum and count since the last log entry
        self.best: dict | None = None  # lowest evaluation FD so far and its step
        self._saved_step: int | None = None  # the step whose state this process last saved (or resumed from)
        self._snapshot_step: int | None = None  # the step of the post-hoc EMA snapshot last written
        self._snapshot_slot: int | None = None  # time-budget runs: the 32nd of the budget last snapshotted
        os.makedirs(run, exist_ok=True)
        if start is not None:
            self._restore(start)
        if main:
            ckpt.write_config(run, cfg.to_dict())
            self._truncate_log()
            if self.posthoc is not None:
                dropped = posthoc_ema.drop_after(run, self.step)
                if dropped:
                    self.log(f"removed {len(dropped)} post-hoc EMA snapshot(s) written after step {self.step} "
                             f"(a run cut off after its last checkpoint)")
        self.tb = self._tensorboard() if cfg.train.tensorboard and main else None
        self._gathered: tuple | None = None  # FSDP: (step, full model, EMA, optimizer states)
        if self.world.distributed:
            _dist.local_slice(cfg.optim.batch_size // cfg.optim.accumulation, self.world)  # divisible?
            self._wrap_fsdp() if self.fsdp else self._wrap_ddp()
        if cfg.train.compile:  # compile what the forward passes go through (the DDP wrapper, if any)
            self.denoiser.net = accel.compiled(self.denoiser.net)

    def _wrap_fsdp(self) -> None:
        """Shard the (restored) network and EMA over the ranks with FSDP2; rebuild the
        optimizer on the sharded parameters with its (restored) state cut to each shard."""
        state = self.opt.state_dict()
        mesh = sharding.mesh(self.device, self.world.size)
        sharding.shard(self.net, mesh)
        sharding.shard(self.ema, mesh)
        self.opt = self._optimizer()
        sharding.load_optimizer_state(self.opt, state)
        units = sum(type(m).__name__.startswith("FSDP") for m in self.net.modules())
        self.log(f"FSDP: the network's parameters, gradients and optimizer state sharded over {self.world.size} "
                 f"processes ({units} units gathered one at a time)")

    def _wrap_ddp(self) -> None:
        """Forward passes go through ``DistributedDataParallel`` (gradients averaged over the
        ranks); ``self.net`` stays the plain network that is saved and averaged into the EMA."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.denoiser.net = DistributedDataParallel(self.net, device_ids=ids)

    # ------------------------------------------------------------------ resume
    def _resolve_resume(self, resume):
        if self.world.main:  # the writer: undo a checkpoint replacement cut short by a kill
            ckpt.recover(self.run)
        _dist.barrier(self.world)  # then every rank looks at the same folder
        if resume is None:
            if ckpt.complete_checkpoints(self.run):
                raise TrainingError(f"{self.run!r} already holds checkpoints; pass --resume auto to continue it "
                                    f"or choose another --out")
            return None
        if resume == "auto":
            if ckpt.complete_checkpoints(self.run):
                return ckpt.load_checkpoint(self.run)
            broken = ckpt.incomplete_checkpoints(self.run)
            if broken:  # never start over silently on top of a run that had checkpoints
                raise ckpt.CheckpointError(
                    f"--resume auto: {os.path.join(self.run, ckpt.CHECKPOINTS)!r} has {len(broken)} checkpoint "
                    f"folder{'s' if len(broken) > 1 else ''}, none readable: {', '.join(broken)}; move them away "
                    f"to start afresh, or pass --resume with a checkpoint folder")
            return None
        return ckpt.load_checkpoint(resume)  # raises CheckpointError if missing

    def _restore(self, start: dict) -> None:
        s = start["state_json"]
        self.net.load_state_dict(start["model"])
        self.ema.load_state_dict(start["ema"])
        t = start["state"]
        ckpt.optimizer_from_tensors(self.opt, t, s["optimizer"])
        self.gen.set_state(t["rng.generator"])
        self.rng_torch = t["rng.torch"].clone()
        self.order.epoch, self.order.pos = s["data_order"]["epoch"], s["data_order"]["pos"]
        self.step, self.elapsed, self.samples_seen = s["step"], s["elapsed"], s["samples_seen"]
        self.bad_in_row, self.window = s["bad_in_row"], list(s["window"])
        self.best = s.get("best")
        if self.posthoc is not None:
            self.posthoc.restore(t, s["posthoc_ema"])
        if os.path.abspath(start["path"]) == os.path.abspath(
                os.path.join(self.run, ckpt.CHECKPOINTS, ckpt.checkpoint_name(self.step))):
            self._saved_step = self.step  # this state is already this run's checkpoint
        self.log(f"resumed from {start['path']} at step {self.step}")

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from (a killed run's tail)."""
        path = os.path.join(self.run, "log.jsonl")
        if not os.path.exists(path):
            return
        with open(path) as f:
            lines = [ln for ln in f if ln.strip()]
        keep = []
        for ln in lines:
            try:
                if json.loads(ln).get("step", 0) <= self.step:
                    keep.append(ln)
            except json.JSONDecodeError:  # a line cut by a kill
                break

        write_text(path, "".join(keep))

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional extra, and slow to import
        except ImportError:  # not installed: train without TensorBoard events
            return None
        except Exception as e:  # installed but broken: say so instead of silently writing no events
            raise TrainingError(f"train.tensorboard is on but importing TensorBoard failed ({type(e).__name__}: "
                                f"{e}); repair the install or pass --set train.tensorboard=false") from e
        return SummaryWriter(os.path.join(self.run, "tensorboard"), purge_step=self.step + 1)

    # ------------------------------------------------------------------ checkpoint
    def gather(self) -> tuple[dict, dict, dict]:
        """The full network, EMA and optimizer states, as a single process holds them. Under
        FSDP a collective (every rank calls it; kept for the step, so rank 0 can then save,
        evaluate and draw grids alone); otherwise the live states."""
        if not self.fsdp:
            return self.net.state_dict(), self.ema.state_dict(), self.opt.state_dict()
        if self._gathered is None or self._gathered[0] != self.step:
            keep = self.world.main  # the other ranks take part in the gathers and drop the results
            self._gathered = (self.step, sharding.full_state(self.net, keep), sharding.full_state(self.ema, keep),
                              sharding.full_optimizer_state(self.opt, keep))
        return self._gathered[1:]

    def save(self) -> str:
        """Write a checkpoint (rank 0; under FSDP every rank must call it or :meth:`gather`
        first at this step)."""
        if self.fsdp:
            self.gather()
        if not self.world.main:  # rank 0 writes; the others only know where
            self._saved_step = self.step
            return os.path.join(self.run, ckpt.CHECKPOINTS, ckpt.checkpoint_name(self.step))
        model, ema, opt_state = self.gather()
        tensors, opt_meta = ckpt.optimizer_to_tensors(opt_state)
        tensors["rng.generator"] = self.gen.get_state()
        tensors["rng.torch"] = torch.get_rng_state() if self._own_rng_active else self.rng_torch
        extra = {}
        if self.posthoc is not None:
            tensors.update(self.posthoc.state_tensors())
            extra["posthoc_ema"] = self.posthoc.state()
            self.snapshot()  # every checkpoint can be reconstructed at
        state = {"step": self.step, "elapsed": self.elapsed, "samples_seen": self.samples_seen,
                 "bad_in_row": self.bad_in_row, "window": self.window, "optimizer": opt_meta, "best": self.best,
                 "data_order": {"epoch": self.order.epoch, "pos": self.order.pos},
                 "config": self.cfg.to_dict(), "sample_size": _sample_size(self.data),
                 "dataset": {"name": self.data.name, "kind": self.data.kind, "shape": list(self.data.shape),
                             "size": len(self.data), "class_names": list(self.data.class_names),
                             **{k: v for k, v in getattr(self.data, "info", {}).items() if k in ("audio", "video")},
                             **_licence(self.data), **self._examples()}, **extra}
        path = ckpt.save_checkpoint(self.run, self.step, model=model, ema=ema,
                                    state_tensors=tensors, state=state, keep=self.cfg.train.keep)
        self._saved_step = self.step
        return path

    def snapshot(self) -> str | None:
        """Write the post-hoc EMA snapshot of this step (once; rank 0); its path, or None when
        the run tracks no post-hoc averages."""
        if self.posthoc is None:
            return None
        path = os.path.join(self.run, posthoc_ema.SNAPSHOTS, posthoc_ema.snapshot_name(self.step))
        if self._snapshot_step != self.step or not os.path.isfile(path):
            path = self.posthoc.snapshot(self.run, self.step)
            self._snapshot_step = self.step
        return path

    def snapshot_due(self) -> bool:
        """A post-hoc EMA snapshot is due at this step: every ``ema.posthoc_every`` steps, else
        every 32nd of the step cap, else (a time budget alone) each time the training time
        passes another 32nd of the budget, which no error in the expected step count can
        multiply."""
        e, tr = self.cfg.ema, self.cfg.train
        if e.posthoc_every or tr.max_steps:
            every = e.posthoc_every or max(1, tr.max_steps // POSTHOC_SNAPSHOTS)
            return self.step % every == 0
        slot = int(self.elapsed // (tr.time_budget / POSTHOC_SNAPSHOTS))
        if self._snapshot_slot is None:  # fresh (slot 0) or resumed: the slot the run is in counts as taken
            self._snapshot_slot = 0 if self.step <= 1 else slot
        if slot > self._snapshot_slot:
            self._snapshot_slot = slot
            return True
        return False

    def _examples(self, n: int = 8) -> dict:
        """Text runs: ``example_prompts``, the first wordings of n items (or classes) spread over the data."""
        table = self.conditions.text
        if table is None:
            return {}
        rows = len(self.data) if table.per_item else self.data.num_classes
        picked = table.first(torch.arange(min(n, rows)) * rows // min(n, rows))
        return {"example_prompts": [table.captions[i] for i in picked.tolist() if i != table.null]}

    # ------------------------------------------------------------------ one step (TrainingLoop.train_step)
    def next_batch(self) -> tuple[Tensor, dict]:
        """This rank's rows of the next global micro-batch (flipped at random with
        ``data.hflip``) on the device, and their conditions; :attr:`batch` says which rows."""
        o = self.cfg.optim
        micro = o.batch_size // o.accumulation
        part = _dist.local_slice(micro, self.world)  # this rank's rows of the global micro-batch
        idx = self.order.next(micro)  # the global micro-batch, the same on every rank
        self.batch = Batch(idx, part)
        x0 = self.data.get(idx[part])
        if self.cfg.data.hflip and self.data.kind == "image":
            flip = torch.rand(micro, generator=self.gen)[part] < 0.5
            mirrored = self.data.flipped(idx[part]) if hasattr(self.data, "flipped") else x0.flip(-1)
            x0 = torch.where(flip[:, None, None, None], mirrored, x0)  # latent data: the flipped image's latent
        x0 = accel.to_device(x0, self.device)
        return x0, self._conditions(idx, x0, part)

    def train_mode(self) -> None:
        self.net.train()
        if self.world.distributed:
            self.denoiser.net.train()

    def gradient_sync(self, last: bool):
        """Average the gradients over the ranks once, after the last micro-batch."""
        if not self.world.distributed or last:
            return contextlib.nullcontext()
        return sharding.no_gradient_sync(self.net) if self.fsdp else self.denoiser.net.no_sync()

    def _conditions(self, idx: Tensor, x0: Tensor, part: slice) -> dict:
        """The condition of this rank's rows; random choices are drawn for the whole global
        batch (as one process draws them) and sliced."""
        if not self.world.distributed:
            return with_given(self.conditions(idx, x0, self.gen), x0)
        if self.cfg.conditioning.kind in ("none", "lowres") and not self.conditions.given_frames:  # no random draws
            return self.conditions(idx[part], x0, self.gen)
        return with_given({k: v[part] for k, v in self.conditions(idx, x0, self.gen).items()}, x0)

    def _write_log(self, entry: dict) -> None:
        if not self.world.main:
            return
        with open(os.path.join(self.run, "log.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")

    # ------------------------------------------------------------------ loop
    def ema_samples(self, n: int, seed: int = 0) -> Tensor:
        """``n`` samples of the EMA model with the run's sampler (seeds ``seed + i``), in model
        space on the CPU; the training random state is untouched."""
        s = self.cfg.sample
        den = self._as_sampled(Denoiser(self.plain_ema(), self.denoiser.process, self.denoiser.parameterization,
                                        sigma_data=self.denoiser.sigma_data, time_scale=self.denoiser.time_scale,
                                        boundary_sigma=self.denoiser.boundary_sigma))
        rng = torch.get_rng_state()
        out = []
        cond = self._sampling_conditions(n)
        if self.cfg.conditioning.control:  # a control run: the maps of the first n training images
            cond.update(self.conditions.control_condition(torch.arange(n) % len(self.data), self.device))
        for start in range(0, n, 256):
            seeds = list(range(seed + start, seed + min(start + 256, n)))
            z = make_noise((len(seeds), *self.data.shape), seed=seeds, device=self.device)
            extra = {k: v[start:start + len(seeds)] for k, v in cond.items()}
            out.append(sample(den, z, sampler=s.sampler, steps=s.steps, schedule=schedule_of(s), sigma_min=s.sigma_min,
                              sigma_max=s.sigma_max, seed=seeds, extra=extra).float().cpu())
        torch.set_rng_state(rng)
        return torch.cat(out)

    def _as_sampled(self, den):
        """``den`` as ``sample`` draws from this run: joined to the high-noise expert the config
        names (``train --experts``; loaded once) and with the recommended guidance of a class run."""
        s = self.cfg.sample
        if s.expert:
            if getattr(self, "_expert", None) is None:
                path = gen.expert_path(self.run, s.expert)
                self._expert = gen.load_run(path, device=str(self.device), experts=False).denoiser
            den = guidance.Experts(den, self._expert, s.expert_above)
        if s.guidance != 1 and self.cfg.conditioning.kind == "class":
            den = guidance.ClassifierFree(den, s.guidance)
        return den

    def plain_ema(self) -> torch.nn.Module:
        """The EMA network as one module (under FSDP a plain copy of the states :meth:`gather`
        collected at this step, which every rank must have called)."""
        if not self.fsdp:
            return self.ema
        if self._gathered is None or self._gathered[0] != self.step:
            raise RuntimeError("under FSDP, gather() must run on every rank at this step before using the EMA")
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the training state alone
            net = build_denoiser(self.cfg).net
        net = net.to(self.device).eval().requires_grad_(False)
        net.load_state_dict(self._gathered[2])
        return net

    def _sampling_conditions(self, n: int) -> dict:
        """Conditions for ``n`` progress samples: classes (or each class's first caption) in
        turn, the first captions of items spread over captioned data, or the low-resolution copies of the first ``n`` training images (no guidance)."""
        kind = self.cfg.conditioning.kind
        if kind == "none":
            return {}
        if kind == "lowres":
            x0 = self.data.get(torch.arange(n) % len(self.data)).to(self.device)
            return self.conditions(torch.arange(n), x0, torch.Generator())
        table = self.conditions.text
        if kind == "text" and table.per_item:  # the first wording of n items spread over the data
            return table.rows(table.first(torch.arange(n) * len(self.data) // n), self.device)
        labels = torch.arange(n) % self.data.num_classes
        if kind == "class":
            return {"class_labels": labels.to(self.device)}
        return table.rows(table.first(labels), self.device)

    def evaluate(self) -> dict:
        """Score ``eval_samples`` EMA samples against the training data with the evaluation
        suite; log them; with ``keep_best``, checkpoint and mark a new best (lowest FD)."""
        tr = self.cfg.train
        x = self.ema_samples(tr.eval_samples, seed=1_000_000)
        images = getattr(self.data, "pixels", self.data)  # latent data: decoded samples vs the images
        real = images.get(torch.arange(len(images)))
        if self.data.kind in ("image", "video"):
            x, real = self.data.to_unit(x), images.to_unit(real)
        res = to_json(evaluate(x.numpy(), real.numpy(), kid_subsets=20, kid_subset_size=min(500, tr.eval_samples),
                               reference_name=f"training data ({self.data.name})"))
        scores = {k: res[k] for k in ("fd", "kid", "precision", "recall", "density", "coverage", "copy_rate")}
        self._write_log({"step": self.step, "eval": scores, "eval_samples": tr.eval_samples,
                         "eval_features": res["protocol"]["features"]})
        if self.tb is not None:
            for k, v in scores.items():
                self.tb.add_scalar(f"eval/{k}", v, self.step)
        if tr.keep_best and (self.best is None or scores["fd"] < self.best["fd"]):
            self.best = {"fd": scores["fd"], "step": self.step}
            path = self.save()  # the state must record the new best, so save even if saved
            ckpt.mark_best(self.run, os.path.basename(path))
            self.log(f"step {self.step}: new best FD {scores['fd']:.4g}; {path}")
        return scores

    def _saved_now(self) -> bool:
        """This step's state is on disk already (saved by this process, or resumed from)."""
        return self._saved_step == self.step

    @contextlib.contextmanager
    def _own_rng(self):
        """Run with the trainer's global-generator state (dropout) swapped in; the caller's
        state is restored on exit and the trainer's kept for the next call and checkpoints."""
        if self._own_rng_active:
            yield
            return
        cuda = self.device.type == "cuda"
        index = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if cuda else None
        with torch.random.fork_rng(devices=[index] if cuda else []):
            torch.set_rng_state(self.rng_torch)
            if cuda:
                if self._rng_cuda is None:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(self.cfg.train.seed)
                else:
                    torch.cuda.set_rng_state(self._rng_cuda, index)
            self._own_rng_active = True
            try:
                yield
            finally:
                self._own_rng_active = False
                self.rng_torch = torch.get_rng_state()
                if cuda:
                    self._rng_cuda = torch.cuda.get_rng_state(index)

    def sample_grid(self) -> str:
        """Write ``RUN/samples/step_XXXXXXXX.png`` from the EMA weights (fixed seeds, the run's
        sampler); the training random state is untouched."""
        x = self.ema_samples(self.cfg.train.sample_count)
        folder = os.path.join(self.run, "samples")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step_{self.step:08d}.png")
        if self.data.kind == "image":
            x = self.data.to_unit(x)  # [0, 1] images (latent data decodes)
            gen.save_png(path, gen.grid(gen.to_uint8(x)), scale=4)
        elif self.data.kind == "video":  # a row of frames per clip
            clips = self.data.to_unit(x[:16])  # (n, T, C, H, W) in [0, 1] (latent data decodes)
            u8 = gen.to_uint8(clips.flatten(0, 1)).reshape(*clips.shape[:2], *clips.shape[3:], -1)
            gen.save_png(path, video_strip(u8), scale=2)
        elif self.data.kind == "audio":
            a = self.data.info["audio"]
            waves = to_waveform(x, a).numpy()
            gen.save_png(path, gen.grid(np.stack([spectrogram(w, a["sample_rate"]) for w in waves[:16]]), nrow=4, pad=2))
        else:
            gen.save_png(path, gen.scatter(x.numpy()))
        if self.tb is not None and self.data.kind == "image":
            self.tb.add_images("samples", x[:64], self.step)
        return path

    def fit(self) -> dict:
        with self._own_rng():
            return self._fit()

    def _fit(self) -> dict:
        tr = self.cfg.train
        bar = _bar(self) if self.progress else None
        stop = {"signal": None}

        def _handler(signum, frame):
            stop["signal"] = signum

        old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)} \
            if _main_thread() else {}
        self.grad_norm, self.lr = float("nan"), 0.0
        t_log, steps_log = time.perf_counter(), 0
        try:
            while not self.done() and stop["signal"] is None:
                t0 = time.perf_counter()
                loss = self.train_step()
                self.elapsed += time.perf_counter() - t0
                if self.world.distributed:  # all ranks must agree on when to stop
                    self.elapsed, sig = _dist.agree_max([self.elapsed, stop["signal"] or 0], self.world)
                    stop["signal"] = int(sig) or None
                steps_log += 1
                if loss is not None:
                    self.window[0] += loss
                    self.window[1] += 1
                if bar is not None:
                    bar.update(self, loss)
                if self.step % tr.log_every == 0 and self.window[1]:
                    now = time.perf_counter()
                    rate = steps_log / max(now - t_log, 1e-9)
                    entry = {"step": self.step, "loss": self.window[0] / self.window[1], "lr": self.lr,
                             "grad_norm": self.grad_norm, "steps_per_s": rate,
                             "samples_per_s": rate * self.cfg.optim.batch_size, "elapsed": self.elapsed}
                    self._write_log(entry)
                    if self.tb is not None:
                        for k in ("loss", "lr", "grad_norm", "samples_per_s"):
                            self.tb.add_scalar(f"train/{k}", entry[k], self.step)
                    self.window = [0.0, 0]
                    t_log, steps_log = now, 0
                if self.fsdp and ((tr.eval_every and self.step % tr.eval_every == 0)
                                  or self.step % tr.checkpoint_every == 0
                                  or (tr.sample_every and self.step % tr.sample_every == 0)):
                    self.gather()  # every rank takes part; then rank 0 works on the full states alone
                if not self.world.main:  # evaluations, checkpoints and grids are rank 0's
                    continue
                if tr.eval_every and self.step % tr.eval_every == 0:
                    self.evaluate()  # before the checkpoint, so that it records the best so far
                if self.step % tr.checkpoint_every == 0 and not self._saved_now():
                    self.save()
                if tr.sample_every and self.step % tr.sample_every == 0:
                    self.sample_grid()
                if self.posthoc is not None and self.snapshot_due():
                    self.snapshot()
        finally:
            if bar is not None:
                bar.close()
            for s, h in old.items():
                signal.signal(s, h)
        if self._saved_now():  # e.g. the last step was a checkpoint step: never write a step twice
            path = os.path.join(self.run, ckpt.CHECKPOINTS, ckpt.checkpoint_name(self.step))
        else:
            path = self.save()
        if stop["signal"] is None and tr.sample_count > 0 and self.world.main:
            self.sample_grid()
        if self.tb is not None:
            self.tb.flush()
        if stop["signal"] is not None:
            self.log(f"stopped by signal {stop['signal']} at step {self.step}; checkpoint {path}")
        return {"step": self.step, "elapsed": self.elapsed, "checkpoint": path,
                "interrupted": stop["signal"] is not None}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
