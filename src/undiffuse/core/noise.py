"""Seeded Gaussian noise, one stream per sample: sample i is the same whatever the batch
size or its place in the batch (EDM's per-image seeding); :class:`SeededNoise`, the fresh noise
of a whole sampling run drawn a block of steps at a time; and the one derivation of a seed
from several integers (:func:`derive_seed`)."""
from __future__ import annotations

from typing import Sequence

import torch

Tensor = torch.Tensor

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


class SeededNoise:
    """The fresh noise of one sampling run, one seeded stream per sample, drawn in blocks.

    Draw ``k`` (the k-th call of :meth:`like`) of sample i is standard normal noise that depends
    on ``seeds[i]``, the sample's shape and dtype, and ``draws`` alone, never on the batch: it
    is entry ``k % block`` of block ``k // block``, which a generator seeded
    ``derive_seed(seeds[i], 1 + k // block)`` fills with ``block`` draws in one call. So a run
    of n steps costs one generator call per sample per block (one block when ``draws`` covers
    the run), not one per sample per step, and a step's noise is a slice of that block.

    ``draws`` is how many draws to expect (a sampler's step count); more are served by further
    blocks. A block holds at most :attr:`BLOCK_BYTES` per sample (at least one draw), so large
    samples (images) draw a few steps at a time. The streams never equal the starting noise of
    :func:`noise` for the same seeds (those use ``seeds[i]`` itself).
    """

    BLOCK_BYTES = 64 * 1024  # per sample: 256 draws of 64 float32 values, 1 of a 3x64x64 image

    def __init__(self, seeds: Sequence[int], draws: int = 1, device="cpu"):
        self.seeds = [int(s) for s in seeds]
        self.draws = max(int(draws), 1)
        self.device = torch.device(device)
        self._block: Tensor | None = None  # (batch, block, *shape)
        self._next = 0  # next draw within the block
        self._index = 0  # index of the block held
        self._generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.seeds)

    def like(self, x: Tensor) -> Tensor:
        """The next draw, shaped like ``x`` (one row per sample)."""
        if x.shape[0] != len(self.seeds):
            raise ValueError(f"SeededNoise has {len(self.seeds)} seeds but the batch has {x.shape[0]} samples")
        block = self._block
        if block is None:
            self._fill(x.shape[1:], x.dtype, 0)
        elif self._next == block.shape[1] or block.shape[2:] != x.shape[1:] or block.dtype != x.dtype:
            self._fill(x.shape[1:], x.dtype, self._index + 1)  # used up (or another shape: a fresh block)
        out = self._block[:, self._next]
        self._next += 1
        return out.to(x.device)

    def _fill(self, shape, dtype, index: int) -> None:
        per_draw = max(shape.numel(), 1) * torch.empty((), dtype=dtype).element_size()
        size = max(1, min(self.draws, self.BLOCK_BYTES // per_draw))
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
        block = torch.empty((len(self.seeds), size, *shape), dtype=dtype, device=self.device)
        for row, seed in zip(block, self.seeds):
            self._generator.manual_seed(derive_seed(seed, 1 + index))
            row.normal_(generator=self._generator)
        self._block, self._next, self._index = block, 0, index


Generators = torch.Generator | Sequence[torch.Generator] | SeededNoise | None


def randn_like(x: Tensor, generator: Generators = None) -> Tensor:
    """Standard normal noise shaped like ``x``.

    With a :class:`SeededNoise` its next draw (row i from seed i alone, a slice of a block drawn
    once per run); with a list of generators, row i is drawn from generator i alone (EDM's
    per-image seeding, one call per sample): either way the same row whatever else is in the batch.
    """
    if isinstance(generator, SeededNoise):
        return generator.like(x)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"generator list has {len(generator)} entries but the batch has {x.shape[0]} samples")
    return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device)
                        for g in generator])
