"""The runs a server offers: every sub-folder of the models folder that holds a trained run,
named by its folder name.

Names are checked before any path is built (letters, digits, ``.``, ``_``, ``-``; no leading
dot), and the resolved folder must still lie inside the models folder (a symlink pointing
out is refused), so a request cannot reach outside it. Runs load through
``generate.load_run``, i.e. safetensors weights and JSON state only, never pickle.
"""
from __future__ import annotations

import os
import re
import threading

from undiffuse.inference import control as ctl
from undiffuse.inference.generate import LoadedRun, load_run
from undiffuse.io import checkpoint as ckpt

from .limits import RequestError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME.match(name) or ".." in name:
        raise RequestError(400, f"model name {name!r} is not allowed: use a run folder's name (letters, digits, "
                                f"'.', '_', '-'; no path separators or '..')")
    return name


class ModelRegistry:
    """Runs found in ``root``, loaded on first use and kept in memory."""

    def __init__(self, root: str, *, weights: str = "ema", device: str = "cpu"):
        if not os.path.isdir(root):
            raise ValueError(f"models folder {root!r} does not exist or is not a folder")
        self.root = os.path.realpath(root)
        self.weights, self.device = weights, device
        self._loaded: dict[str, LoadedRun] = {}
        self._checksums: dict[str, str] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Sub-folders that hold a run with at least one complete checkpoint."""
        out = []
        for name in sorted(os.listdir(self.root)):
            if NAME.match(name) and ".." not in name and self._inside(name) is not None:
                try:
                    ckpt.find_checkpoint(os.path.join(self.root, name))
                except ckpt.CheckpointError:
                    continue
                out.append(name)
        return out

    def _inside(self, name: str) -> str | None:
        path = os.path.realpath(os.path.join(self.root, name))
        if os.path.dirname(path) != self.root or not os.path.isdir(path):
            return None
        return path

    def get(self, name) -> LoadedRun:
        name = check_name(name)
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            path = self._inside(name)
            if path is None:
                raise RequestError(404, f"unknown model {name!r}; available: {', '.join(self.names()) or 'none'}")
            try:
                run = load_run(path, weights=self.weights, device=self.device)
            except ckpt.CheckpointError as e:
                raise RequestError(404, f"model {name!r} cannot be loaded: {e}") from None
            self._loaded[name] = run
            self._checksums[name] = run.checksum
            return run

    def checksum(self, name: str) -> str:
        self.get(name)
        return self._checksums[name]

    def describe(self, name: str) -> dict:
        run = self.get(name)
        s = run.config.sample
        return {"name": name, "kind": run.kind, "conditioning": run.conditioning,
                "classes": list(run.class_names) if run.conditioning == "class" else [],
                "example_prompts": list(run.example_prompts) if run.conditioning == "text" else [],
                "controls": [a.extractor for a in ctl.adapters_of(run)],
                "shape": list(run.shape), "default_sampler": s.sampler, "default_steps": s.steps,
                "default_guidance": s.guidance, "expert_above": run.expert["above"] if run.expert else None,
                "step": run.step, "model_sha256": self._checksums[name]}
