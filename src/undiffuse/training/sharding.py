"""Fully sharded data parallel training (``torchrun ... -m undiffuse train --fsdp``).

PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) splits every parameter, its
gradient and its AdamW moments over the N processes (each holds about 1/N), gathering a
block's weights just before its forward and backward and reduce-scattering its gradients
after. Gradients are averaged over the ranks as under DDP, so N processes still take the
same optimizer steps as one process up to float rounding.

What stays as with one process: checkpoints. Saving gathers the full network, EMA and
optimizer state (a collective: every rank calls it; one tensor at a time on the device, the
whole state in rank 0's host memory) and rank 0 writes exactly what a single process writes, so a run saved by N sharded processes resumes on M processes with FSDP, DDP
or none. Loading goes the other way: the trainer restores the plain network first and
shards it afterwards; the optimizer is rebuilt on the sharded parameters and its saved full
moments cut to each rank's shard (:func:`load_optimizer_state`).

The EMA network is sharded the same way (never run while sharded): its update is a local
``lerp`` of each shard; sampling grids and evaluations gather it into a plain copy.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

Tensor = torch.Tensor

# The units gathered and freed together: the networks' repeated blocks (one all-gather per
# block keeps the peak memory near one block's full weights); the root takes the rest.
BLOCK_CLASSES = ("ResBlock", "Attention", "CrossAttention", "Downsample", "Upsample", "DiTBlock", "_Block")


def mesh(device: torch.device, size: int):
    return init_device_mesh(device.type, (size,))


def shard(net: nn.Module, device_mesh) -> nn.Module:
    """Shard ``net`` in place over ``device_mesh`` (its blocks, then the root)."""
    from torch.distributed.fsdp import fully_shard

    for module in list(net.modules())[1:]:
        if type(module).__name__ in BLOCK_CLASSES and any(True for _ in module.parameters()):
            fully_shard(module, mesh=device_mesh)
    fully_shard(net, mesh=device_mesh)
    return net


def is_sharded(net: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in net.parameters())


def full(value):
    """A DTensor's whole tensor (a collective: every rank must call); anything else as is."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def full_state(net: nn.Module, keep: bool = True) -> dict[str, Tensor] | None:
    """``net.state_dict()`` with every sharded entry gathered (every rank must call). With
    ``keep=False`` (ranks that do not write) each gathered tensor is dropped at once and
    None returned, so only the writing rank ever holds the whole state."""
    out = {}
    for k, v in net.state_dict().items():
        t = full(v).detach()
        if keep:
            out[k] = t.cpu()  # one whole tensor at a time on the device; the state collects in host memory
    return out if keep else None


def full_optimizer_state(opt: torch.optim.Optimizer, keep: bool = True) -> dict | None:
    """``opt.state_dict()`` with every sharded moment gathered: the same dict a single
    process's optimizer returns (every rank must call; ``keep`` as in :func:`full_state`)."""
    sd = opt.state_dict()
    state = {}
    for i, s in sd["state"].items():
        entry = {k: full(v).cpu() if torch.is_tensor(v) else v for k, v in s.items()}
        if keep:
            state[i] = entry
    return {"state": state, "param_groups": sd["param_groups"]} if keep else None


def load_optimizer_state(opt: torch.optim.Optimizer, state_dict: dict) -> None:
    """Load a single process's optimizer state into an optimizer over sharded parameters:
    each moment shaped like its parameter is cut to this rank's shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in opt.param_groups for p in g["params"]]
    state = {}
    for i, s in state_dict["state"].items():
        p = params[int(i)]
        state[i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                    if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape else v
                    for k, v in s.items()}
    opt.load_state_dict({"state": state, "param_groups": state_dict["param_groups"]})


def no_gradient_sync(net: nn.Module):
    """A context in which backward passes accumulate local gradients without reducing them
    over the ranks (all but the last micro-batch of gradient accumulation)."""
    @contextlib.contextmanager
    def _ctx():
        net.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            net.set_requires_gradient_sync(True)

    return _ctx()
