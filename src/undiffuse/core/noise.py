"""Seeded Gaussian noise, one generator per sample: sample i is the same whatever the batch
size or its place in the batch (EDM's per-image seeding)."""
from __future__ import annotations

from typing import Sequence

import torch

Tensor = torch.Tensor
Generators = torch.Generator | Sequence[torch.Generator] | None


def seeds_for(seed: int | Sequence[int], batch: int) -> list[int]:
    """``seed + i`` for sample i, or the given list of per-sample seeds (its length checked)."""
    if isinstance(seed, (int,)) and not isinstance(seed, bool):
        return [seed + i for i in range(batch)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ValueError(f"seed list has {len(seeds)} entries but noise has {batch} samples")
    return seeds


def per_sample_generators(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One seeded generator per sample, so sample i never depends on the batch size."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def noise(shape: Sequence[int], seed: int | Sequence[int] = 0, *, dtype=torch.float32, device="cpu") -> Tensor:
    """Standard normal noise where row i comes from seed ``seed + i`` (or ``seed[i]``) alone,
    so a sample does not change with the batch size or its place in the batch."""
    shape = tuple(shape)
    seeds = seeds_for(seed, shape[0])
    return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype) for g in per_sample_generators(seeds)]).to(device)


def randn_like(x: Tensor, generator: Generators = None) -> Tensor:
    """Standard normal noise shaped like ``x``.

    With a list of generators, row i is drawn from generator i alone (EDM's per-image
    seeding): the same row whatever else is in the batch.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"generator list has {len(generator)} entries but the batch has {x.shape[0]} samples")
    return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device)
                        for g in generator])
