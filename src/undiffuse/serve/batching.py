"""Request batching: compatible jobs waiting together become one network batch.

A worker thread takes the oldest waiting job, waits ``window`` seconds for company, then
takes every waiting job with the same key (model, sampler, steps, guidance, and whether a
class is given) up to ``max_batch`` images. Their per-image seeds are concatenated (job j's
image i uses seed ``seed_j + i``, as ``generate.generate`` does), so the starting noise and
the fresh noise of stochastic samplers of every image are those it would get alone; the
sampler runs once over the whole batch and the rows are split back to their jobs.

Float results can differ from a lone run by ~1e-8 (CPU kernels sum in batch-size dependent
order); the 8-bit images (what the server returns) are the same bytes, which the tests
check.

Sampling is CPU-bound and blocking, so it runs here, off the event loop: the server keeps
answering (``/health`` included) while a batch samples.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback

import numpy as np
import torch

from undiffuse.core.noise import noise as make_noise
from undiffuse.inference import generate as gen
from undiffuse.inference import control as ctl
from undiffuse.io import provenance as prov
from undiffuse.io.images import grid, png_bytes, to_uint8
from undiffuse.io.writers import write_samples
from undiffuse.samplers.driver import sample

from .jobs import Job
from .limits import NATIVE_FORMAT, RequestError

log = logging.getLogger("undiffuse.serve")


class _Stop(Exception):
    """Raised from the sampler callback when every job of a batch was cancelled."""


class Batcher:
    def __init__(self, registry, *, window: float = 0.02, max_batch: int = 64, max_queue: int = 256,
                 content_filter=None, watermark: bool = True):
        self.registry = registry
        self.watermark = watermark        # embed the invisible mark in image outputs
        self.window = window              # seconds the oldest job waits for compatible company
        self.max_batch = max_batch        # images per network batch
        self.max_queue = max_queue        # jobs waiting or running
        self.content_filter = content_filter
        self.batches = 0                  # sampler calls made (one per batch)
        self._pending: list[Job] = []
        self._running = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- queue ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="undiffuse-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._pending) + self._running >= self.max_queue:
                raise RequestError(429, f"the queue is full ({self.max_queue} requests waiting or running); "
                                        f"try again later")
            self._pending.append(job)
            self._cond.notify_all()

    def queued(self) -> int:
        with self._cond:
            return len(self._pending) + self._running

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait(0.5)
            if self._stop:
                return None
        time.sleep(self.window)  # let concurrent compatible requests arrive
        with self._cond:
            self._pending = [j for j in self._pending if not j.cancelled]
            if not self._pending:
                return []
            key = self._pending[0].request.key()
            group, rest, n = [], [], 0
            for job in self._pending:
                if job.request.key() == key and (not group or n + job.request.count <= self.max_batch):
                    group.append(job)
                    n += job.request.count
                else:
                    rest.append(job)
            self._pending = rest
            self._running = len(group)
            return group

    def _loop(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            if not group:
                continue
            try:
                self.run(group)
            except Exception as e:  # one failing batch never stops the worker
                log.error("batch of %d job(s) failed: %s\n%s", len(group), e, traceback.format_exc())
                for job in group:
                    job.fail(f"generation failed: {type(e).__name__}: {e}")
            finally:
                with self._cond:
                    self._running = 0

    # -- one batch -----------------------------------------------------------------------
    def run(self, group: list[Job]) -> None:
        """Sample every job of a compatible group in one batch and hand each its images."""
        first = group[0].request
        run = self.registry.get(first.model)
        for job in group:
            job.started()
        seeds = [r.seed + i for r in (j.request for j in group) for i in range(r.count)]
        rows = [(start, job) for start, job in zip(np.cumsum([0] + [j.request.count for j in group]), group)]
        condition = _condition(run, group)
        den = gen.guided(run, guidance=first.guidance)
        s = run.config.sample
        device = next(run.denoiser.net.parameters()).device
        z = make_noise((len(seeds), *run.shape), seed=seeds, device=device)

        def callback(state):
            if all(j.cancelled for j in group):
                raise _Stop
            step = state["i"] + 1
            for start, job in rows:
                preview = None
                if job.previews and run.kind == "image":
                    part = state["denoised"][start:start + job.request.count].float().cpu()
                    preview = png_bytes(grid(to_uint8(gen.to_unit(part)), pad=0))
                job.progress(step, preview)

        self.batches += 1
        try:
            picked = gen.recorded_levels(run, sampler=first.sampler, steps=first.steps)  # a student's 1-/2-step levels
            x = sample(den, z, sampler=first.sampler, steps=first.steps, schedule=picked or s.schedule,
                       sigma_min=s.sigma_min, sigma_max=s.sigma_max, seed=seeds, extra=condition, callback=callback)
        except _Stop:
            for job in group:
                job.stopped()
            return
        x = x.float().cpu()
        for start, job in rows:
            if job.cancelled:
                job.stopped()
                continue
            images, refused = self.outputs(run, job, x[start:start + job.request.count])
            job.succeed(images, refused)

    def outputs(self, run, job: Job, x: torch.Tensor) -> tuple[list[dict], list[dict]]:
        """PNGs with provenance and the invisible mark (or vectors) for one job, after the
        content filter (which sees the unmarked image): ``writers.write_samples`` in memory."""
        r = job.request
        checksum = self.registry.checksum(r.model)
        records = []
        for i in range(len(x)):
            extra = {"step": run.step}
            if run.expert is not None:
                extra.update(expert_sha256=run.expert["sha256"], expert_above=run.expert["above"])
            if r.labels:
                extra["class"] = run.class_names[r.labels[i]]
            if r.prompt is not None:
                extra["prompt"] = r.prompt
            if r.control is not None:
                extra["control_image_sha256"] = r.control_sha256
                extra["control_scale"] = r.control_scale if r.control_scale is not None \
                    else run.config.model.get("scales", [1.0])[0]
            records.append(prov.record(r.model, checksum, sampler=r.sampler, steps=r.steps, seed=r.seed + i,
                                       guidance=r.guidance, **extra))
        if run.kind == "audio":  # sound: WAVs (a mel run's spectrograms through Griffin-Lim)
            written = write_samples(gen.to_sound(x, run), format="wav", seed=r.seed, records=records,
                                    request=r.params(), content_filter=self.content_filter, grid=False,
                                    sample_rate=run.audio["sample_rate"])
        elif run.kind == "video":  # clips: animated GIFs
            written = write_samples(gen.to_unit(x), format="gif", seed=r.seed, records=records, request=r.params(),
                                    content_filter=self.content_filter, watermark=self.watermark, grid=False,
                                    fps=gen.video_fps(run))
        else:
            written = write_samples(gen.to_unit(x) if run.kind == "image" else x, format="png", seed=r.seed,
                                    records=records, request=r.params(), content_filter=self.content_filter,
                                    watermark=self.watermark, grid=False)
        refused = []
        for no in written.refused:
            log.warning("content filter refused model=%s seed=%d: %s", r.model, no["seed"], no["reason"])
            refused.append({"seed": no["seed"], "reason": no["reason"]})
        images = []
        for it in written.items:
            item = {"seed": it.seed, **({"class": it.record["class"]} if "class" in it.record else {})}
            if it.data is not None:
                item[NATIVE_FORMAT.get(run.kind, "png")] = it.data
            else:
                item["sample"] = [float(v) for v in it.sample]
            images.append(item)
        return images, refused


def _condition(run, group: list[Job]) -> dict:
    """The batch's conditioning: class labels or prompt contexts, and control maps, one row per
    image (a control batch also sets the adapters' scale: the batch shares one)."""
    first = group[0].request
    out = {}
    if first.labels:
        out = {"class_labels": torch.tensor([k for j in group for k in j.request.labels])}
    elif first.prompt is not None:
        parts = [gen.prompt_condition(run, j.request.prompt) for j in group]
        out = {k: torch.cat([p[k].expand(j.request.count, *p[k].shape[1:]) for p, j in zip(parts, group)])
               for k in parts[0]}
    if first.control is not None:
        out.update(ctl.condition(run, torch.cat([j.request.control.expand(j.request.count, -1, -1, -1)
                                                  for j in group])))
        net = run.denoiser.net
        if hasattr(net, "adapters"):
            net.scales = [first.control_scale] * len(net.adapters) if first.control_scale is not None \
                else list(run.config.model["scales"])
    return out
