"""Seeded Gaussian noise, one generator per sample: sample i is the same whatever the batch
size or its place in the batch (EDM's per-image seeding); and the one derivation of a seed
from several integers (:func:`derive_seed`)."""
from __future__ import annotations

from typing import Sequence

import torch

Tensor = torch.Tensor
Generators = torch.Generator | Sequence[torch.Generator] | None

SEED_MULTIPLIER = 1_000_003  # a prime; see derive_seed


def derive_seed(*parts: int) -> int:
    """One generator seed from a tuple of integers (a run's seed and an epoch, say): the fold
    ``s = s * 1_000_003 + part`` over ``parts`` from ``s = 0``, modulo ``2**64``.

    So ``derive_seed(seed, epoch) == seed * 1_000_003 + epoch`` (for values below 2**63),
    the data order's seed since the first release. For a fixed first part, tuples whose
    further parts lie in ``[0, 1_000_003)`` get distinct seeds (below 2**64). torch reads a
    seed as an unsigned 64-bit integer (a negative one as its two's complement, hence the
    modulus: the value torch sees is unchanged); its CPU generator (mt19937) keeps only the
    low 32 bits, so seeds equal modulo 2**32 give the same stream.
    """
    s = 0
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"derive_seed takes integers, got {p!r}")
        s = (s * SEED_MULTIPLIER + p) % 2**64
    return s


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
