"""Tracking power-function EMAs during training for post-hoc EMA (``train --ema-posthoc``).

Each tracked average (one per ``ema.posthoc`` value of ``sigma_rel``) is a copy of the network
that moves at its ``t``-th update by ``beta_t = (1 - 1/t) ** (gamma + 1)``
(``inference.posthoc_ema`` derives the profile this gives and how snapshots of it are
recombined into any other length). The update count is the number of optimizer steps that
changed the weights (a skipped step moves no average), so the profiles of the snapshots are
exact. The averages and the count are part of every checkpoint, so a resumed run continues
them exactly; snapshots (every average at one step, one safetensors file) are written every
``ema.posthoc_every`` steps, at every checkpoint and at the end.
"""
from __future__ import annotations

import copy
import os

import torch

from undiffuse.inference import posthoc_ema as ph
from undiffuse.io import checkpoint as ckpt

PREFIX = "posthoc_ema."  # of the averages' tensors in a checkpoint's state.safetensors


class PowerEMA:
    """Power-function averages of ``net`` with the relative widths ``sigma_rels``."""

    def __init__(self, net: torch.nn.Module, sigma_rels):
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(ph.gamma_of(s) for s in self.sigma_rels)
        self.averages = [copy.deepcopy(net).eval().requires_grad_(False) for _ in self.sigma_rels]
        self.buffers = tuple(name for name, _ in net.named_buffers())
        self.updates = 0

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        self.updates += 1
        params = list(net.parameters())
        for avg, gamma in zip(self.averages, self.gammas):
            beta = (1 - 1 / self.updates) ** (gamma + 1)  # 0 at the first update: the average starts as the net
            torch._foreach_lerp_(list(avg.parameters()), params, 1 - beta)
            for be, b in zip(avg.buffers(), net.buffers()):
                be.copy_(b)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The averages, for a checkpoint (keys ``posthoc_ema.I.NAME``)."""
        return {f"{PREFIX}{i}.{k}": v for i, avg in enumerate(self.averages) for k, v in avg.state_dict().items()}

    def state(self) -> dict:
        return {"sigma_rels": list(self.sigma_rels), "updates": self.updates}

    def restore(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        if [float(s) for s in state["sigma_rels"]] != list(self.sigma_rels):
            raise ckpt.CheckpointError(f"the checkpoint tracks post-hoc EMAs {state['sigma_rels']}, the run's config "
                                       f"{list(self.sigma_rels)}")
        for i, avg in enumerate(self.averages):
            p = f"{PREFIX}{i}."
            avg.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
        self.updates = int(state["updates"])

    def snapshot(self, run: str, step: int) -> str:
        """Write every average at ``step`` to ``RUN/ema/snapshots/step_XXXXXXXX.safetensors``."""
        folder = os.path.join(run, ph.SNAPSHOTS)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, ph.snapshot_name(step))
        tensors = {f"{i}.{k}": v for i, avg in enumerate(self.averages) for k, v in avg.state_dict().items()}
        ckpt.save_tensors(path, tensors, metadata=ph.snapshot_metadata(step, self.updates, self.sigma_rels,
                                                                       self.buffers))
        return path
