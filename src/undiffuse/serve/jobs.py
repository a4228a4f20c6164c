"""Jobs: one generation request on its way through the batcher, with its progress, an
optional preview of the current estimate, its result, and a cancel flag.

Every request is a job; ``POST /v1/generate`` waits for its job, ``POST /v1/jobs`` returns
the job's id at once. Jobs are touched by the event loop and by the worker thread, so all
state changes go through the methods here, under the job's lock.
"""
from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import OrderedDict

from .limits import GenerateRequest

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")


class Job:
    def __init__(self, request: GenerateRequest, *, previews: bool = False):
        self.id = secrets.token_hex(8)
        self.request = request
        self.previews = previews          # keep a PNG of the current x0 estimate at every step
        self.status = "queued"
        self.step = 0
        self.total = request.steps
        self.preview: bytes | None = None
        self.images: list[dict] = []      # {"seed", "png" | "sample", ["class"]}
        self.refused: list[dict] = []     # {"seed", "reason"}: outputs the content filter rejected
        self.error: str | None = None
        self.error_status = 500
        self.created = time.time()
        self.version = 0                  # bumps on every change (server-sent events watch it)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._callbacks: list = []

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def cancel(self) -> bool:
        """Ask the job to stop; True when it was still queued or running."""
        with self._lock:
            if self.finished:
                return False
            self._cancel.set()
        if self.status == "queued":
            self._finish("cancelled")
        return True

    def stopped(self) -> None:
        """The worker stopped this job after a cancel request."""
        self._finish("cancelled")

    def started(self) -> None:
        with self._lock:
            if self.status == "queued":
                self.status = "running"
                self.version += 1

    def progress(self, step: int, preview: bytes | None = None) -> None:
        with self._lock:
            self.step = step
            if preview is not None:
                self.preview = preview
            self.version += 1

    def succeed(self, images: list[dict], refused: list[dict]) -> None:
        self.images, self.refused = images, refused
        self._finish("done")

    def fail(self, message: str, status: int = 500) -> None:
        self.error, self.error_status = message, status
        self._finish("failed")

    def _finish(self, status: str) -> None:
        with self._lock:
            if self.finished:
                return
            self.status = status
            if status == "done":
                self.step = self.total
            self.version += 1
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def on_finish(self, fn) -> None:
        """Call ``fn(job)`` once the job is finished (at once if it already is)."""
        with self._lock:
            if not self.finished:
                self._callbacks.append(fn)
                return
        fn(self)

    def summary(self) -> dict:
        return {"id": self.id, "status": self.status, "step": self.step, "total": self.total,
                "request": self.request.params(), "error": self.error, "refused": self.refused,
                "created": self.created}


class JobStore:
    """Recent jobs by id; the oldest finished ones are forgotten beyond ``keep``."""

    def __init__(self, keep: int = 1000):
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
            if len(self._jobs) > self.keep:
                for jid, old in itertools.islice(list(self._jobs.items()), len(self._jobs) - self.keep):
                    if old.finished:
                        del self._jobs[jid]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)
