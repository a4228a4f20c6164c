"""Running under ``torchrun``: process-group set-up, batch slicing, result gathering.

``torchrun --nproc-per-node N -m undiffuse train ...`` starts N copies of the command with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in their environment. :func:`setup` reads them and
joins the process group (NCCL on CUDA devices, gloo on CPUs); a plain ``python -m undiffuse``
has no ``WORLD_SIZE`` (or 1) and nothing here changes its behaviour.

How training stays equal to one process (see ``train.Trainer``): every rank draws the same
global batch of indices from the same data order and the same per-sample randomness (noise
levels, noise, flips, condition dropout) for the whole global batch from the same generator,
then keeps its own contiguous slice. DDP averages the gradients of the per-rank mean losses,
which is the gradient of the global mean loss because the slices are equal in size; so N
processes take the same optimizer steps as one process up to float rounding.

How sampling stays byte-identical: image ``i`` depends on seed ``seed + i`` alone, and whole
batches (``batch_size`` images) are dealt to the ranks in turn, so every batch is computed
exactly as one process computes it; rank 0 gathers them back in order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

Tensor = torch.Tensor


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_world() -> World:
    """The world torchrun describes in the environment (a single process without it)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them): {e}") from None
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK {rank} must be in [0, WORLD_SIZE) with WORLD_SIZE >= 1; WORLD_SIZE is {size}")
    return World(rank, size, local)


def current() -> World:
    """The initialised process group's world, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def device_for(device: str, world: World) -> str:
    """``cuda`` under torchrun means this process's GPU, ``cuda:LOCAL_RANK``."""
    if world.distributed and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


def setup(device: str = "cpu") -> World:
    """Join the process group torchrun set up (no-op for a single process or when joined).

    Backend: NCCL for CUDA devices, gloo for CPUs."""
    world = env_world()
    if not world.distributed or dist.is_initialized():
        return current() if world.distributed else world
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run a single process")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.size)
    return world


def barrier(world: World) -> None:
    """Wait until every rank gets here (nothing for a single process)."""
    if world.distributed:
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_slice(n: int, world: World) -> slice:
    """Rank ``world.rank``'s contiguous share of a global batch of ``n`` (``n`` divisible by
    the world size)."""
    if n % world.size:
        raise ValueError(f"a batch of {n} does not split evenly over {world.size} processes; make optim.batch_size / "
                         f"optim.accumulation a multiple of the number of processes")
    k = n // world.size
    return slice(world.rank * k, (world.rank + 1) * k)


def mean(value: float, world: World) -> float:
    """The average of a float over the ranks (the float itself for one process)."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0]) / world.size


def agree_max(values: list[float], world: World) -> list[float]:
    """The element-wise maximum over the ranks (e.g. elapsed time and a stop signal, so that
    every rank stops after the same step)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def my_batches(num: int, batch_size: int, world: World) -> list[int]:
    """Start indices of the batches of ``batch_size`` (out of ``num`` items) this rank
    computes: batch ``k`` goes to rank ``k % world.size``."""
    return list(range(0, num, batch_size))[world.rank::world.size]


def all_gather_rows(out: Tensor, batch_size: int, world: World) -> Tensor:
    """Like :func:`gather_rows`, but every rank gets the full ``out``."""
    if not world.distributed:
        return out
    out = out.contiguous().cpu()
    parts = [torch.empty_like(out) for _ in range(world.size)]
    dist.all_gather(parts, out)
    full = torch.empty_like(out)
    for k, start in enumerate(range(0, len(out), batch_size)):
        full[start:start + batch_size] = parts[k % world.size][start:start + batch_size]
    return full


def gather_rows(out: Tensor, batch_size: int, world: World) -> Tensor | None:
    """Rank 0 gets the full ``out`` with each batch (see :func:`my_batches`) taken from the
    rank that computed it, bytes unchanged; the other ranks get None. ``out`` has all
    ``num`` rows on every rank, only the rank's own batches filled."""
    if not world.distributed:
        return out
    out = out.contiguous().cpu()
    parts = [torch.empty_like(out) for _ in range(world.size)] if world.main else None
    dist.gather(out, parts, dst=0)
    if not world.main:
        return None
    full = torch.empty_like(out)
    for k, start in enumerate(range(0, len(out), batch_size)):
        full[start:start + batch_size] = parts[k % world.size][start:start + batch_size]
    return full
