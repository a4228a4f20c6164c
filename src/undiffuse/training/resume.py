"""What a stopped run needs to continue exactly: the data order (a permutation per epoch drawn
from the seed, and a position in it) and the config it continues with (the saved one, with the
new stopping rule and way of running)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from undiffuse.config import RunConfig
from undiffuse.core.noise import derive_seed

Tensor = torch.Tensor


@dataclass
class DataOrder:
    """Epoch-wise permutations seeded by ``derive_seed(seed, epoch)``; state is just two ints."""

    n: int
    seed: int
    epoch: int = 0
    pos: int = 0

    def _perm(self) -> Tensor:
        cached = getattr(self, "_cache", None)
        if cached is None or cached[0] != self.epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            self._cache = (self.epoch, torch.randperm(self.n, generator=g))
        return self._cache[1]

    def next(self, batch: int) -> Tensor:
        out = []
        while batch > 0:
            perm = self._perm()
            take = perm[self.pos:self.pos + batch]
            out.append(take)
            batch -= len(take)
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return torch.cat(out)


# How to run, not what to train: taken from the request when resuming (a run started on a
# CPU continues on a GPU with ``--device cuda``; the request's default device is the CPU).
EXECUTION = ("device", "precision", "compile", "channels_last")


def merged_for_resume(saved: dict, requested: RunConfig) -> RunConfig:
    """The saved run config, with the stopping rule (so a run can be extended) and the
    execution choices (:data:`EXECUTION`) taken from the new request; anything else that
    differs is reported, not applied."""
    cfg = RunConfig.from_dict(saved)
    req = requested.to_dict()
    for key in ("max_steps", "time_budget", *EXECUTION):
        setattr(cfg.train, key, req["train"][key])
    if cfg.train.max_steps is None and cfg.train.time_budget is None:
        cfg.train.max_steps = saved["train"]["max_steps"]
        cfg.train.time_budget = saved["train"]["time_budget"]
    differs = [f"{sec}.{k}" for sec in ("model", "diffusion", "optim", "ema") for k in req[sec]
               if saved.get(sec, {}).get(k) != req[sec][k]]
    if differs:
        warnings.warn(f"resuming with the saved settings; ignoring requested changes to {', '.join(differs)}",
                      stacklevel=3)
    return cfg
