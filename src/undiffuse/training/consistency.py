"""Consistency models: distillation from a teacher and training from data alone.

A consistency model ``f(x, sigma)`` maps any point of a probability-flow ODE path straight
to the path's end at ``sigma_min`` (Song et al. 2023), so one evaluation from pure noise is
a sample. Its boundary condition ``f(x, sigma_min) = x`` is built into the denoiser
(``precond.Denoiser(boundary_sigma=...)``, exact by construction). Training pulls ``f`` at
two neighbouring levels of a noise grid together:

    loss = lambda(sigma_i) * d( f(x_{i+1}, sigma_{i+1}),  stopgrad f(x_i, sigma_i) ),
    x_{i+1} = x0 + sigma_{i+1} z,

where ``x_i`` is one ODE step of the **teacher** from ``x_{i+1}`` down to ``sigma_i``
(consistency distillation, any deterministic solver: ``odestep``), or, with no teacher,
``x0 + sigma_i z`` with the same ``z`` (consistency training, an unbiased one-sample
estimate of the same step as the grid gets fine). Choices, from "Improved Techniques for
Training Consistency Models" (Song & Dhariwal 2023) unless said:

* grid: ``N`` intervals, Karras spacing (rho = 7) over ``[sigma_min, sigma_max]``;
  ``N`` doubles in equal stages of the run from ``steps_start`` to ``steps_end`` (10 ->
  1280 for training from data; distillation keeps a fixed N, 18 in the original paper);
* interval ``i`` drawn with probability proportional to the lognormal mass of
  ``[sigma_i, sigma_{i+1}]`` (p_mean -1.1, p_std 2.0), or uniformly (the original paper);
* ``lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i)``;
* ``d``: pseudo-Huber ``sqrt(|a - b|^2 + c^2) - c`` with ``c = 0.00054 sqrt(dim)``, or
  plain squared error;
* target network: the student's own weights without gradient (no EMA target); the
  trainer's EMA is what gets sampled.

Sampling (``samplers.consistency``): one step is ``f(sigma_max z, sigma_max)``; each more
step adds fresh noise back at a lower level and applies ``f`` again.
"""
from __future__ import annotations

import math

import torch

from undiffuse.core.schedules import karras
from undiffuse.samplers.odestep import ode_step

Tensor = torch.Tensor


def grid(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """``n + 1`` increasing noise levels, Karras-spaced, from ``sigma_min`` to ``sigma_max``."""
    if n < 1:
        raise ValueError(f"the grid needs n >= 1 intervals, got {n}")
    return karras(n + 1, sigma_min, sigma_max, rho)[:-1].flip(0)


def intervals_at(progress: float, start: int, end: int) -> int:
    """The curriculum: ``start`` intervals doubled in equal stages of the run (``progress``
    in [0, 1]) up to ``end`` (the last stage may be capped at ``end``)."""
    if start >= end:
        return end
    stages = int(math.floor(math.log2(end / start))) + 1
    stage = min(int(max(progress, 0.0) * stages), stages - 1)
    return min(start * 2**stage, end)


def interval_probabilities(levels: Tensor, kind: str = "lognormal", p_mean: float = -1.1,
                           p_std: float = 2.0) -> Tensor:
    """Probability of each interval ``[levels[i], levels[i+1]]`` (increasing ``levels``)."""
    n = len(levels) - 1
    if kind == "uniform":
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    if kind != "lognormal":
        raise ValueError(f"unknown interval sampling {kind!r}; allowed: lognormal, uniform")
    cdf = torch.erf((levels.to(torch.float64).log() - p_mean) / (math.sqrt(2) * p_std))
    p = (cdf[1:] - cdf[:-1]).clamp(min=0)
    if not p.sum() > 0:
        raise ValueError("the lognormal interval distribution puts no mass on the grid; check p_mean and p_std")
    return p / p.sum()


def pseudo_huber(diff: Tensor, c: float) -> Tensor:
    """Per-sample ``sqrt(|diff|^2 + c^2) - c`` (``|.|`` over all of a sample's elements)."""
    sq = diff.pow(2).flatten(1).sum(1)
    return (sq + c * c).sqrt() - c


def default_huber_c(elements: int) -> float:
    return 0.00054 * math.sqrt(elements)


class ConsistencyObjective:
    """Per-sample consistency loss for the trainer (``Trainer(objective=...)``), called as
    ``objective(trainer, x0, cond) -> (B,)``; draws from ``trainer.gen`` the intervals, then
    the noise.

    ``teacher``: a frozen denoiser (distillation) or None (training from data alone).
    ``settings``: a ``config.ObjectiveConfig``. The student is the trainer's denoiser, whose
    ``boundary_sigma`` is the grid's lower end.
    """

    def __init__(self, settings, teacher=None):
        self.s = settings
        self.teacher = teacher

    def levels(self, student, progress: float) -> Tensor:
        n = intervals_at(progress, self.s.steps_start, self.s.steps_end)
        return grid(n, student.boundary_sigma, student.process.sigma_max, self.s.rho)

    def __call__(self, trainer, x0: Tensor, cond: dict) -> Tensor:
        student = trainer.denoiser
        if student.boundary_sigma is None:
            raise ValueError("consistency training needs a denoiser with boundary_sigma set")
        batch = trainer.batch  # draws for the whole micro-batch; this process keeps its rows
        levels = self.levels(student, trainer.fraction_done())
        probs = interval_probabilities(levels, self.s.index_sampling, self.s.p_mean, self.s.p_std)
        i = batch.rows_of(torch.multinomial(probs, batch.size, replacement=True, generator=trainer.gen))
        lo, hi = levels[i].to(x0.device), levels[i + 1].to(x0.device)
        z = batch.rows_of(torch.randn((batch.size, *x0.shape[1:]), generator=trainer.gen)).to(x0.device)
        col = (-1,) + (1,) * (x0.dim() - 1)
        x_hi = x0 + hi.to(x0.dtype).reshape(col) * z
        with torch.no_grad():
            if self.teacher is not None:
                x_lo = ode_step(self.teacher, x_hi, hi, lo, self.s.solver, extra=cond)
            else:
                x_lo = x0 + lo.to(x0.dtype).reshape(col) * z
            target = student(x_lo, lo, **cond)
        pred = student(x_hi, hi, **cond)
        diff = pred - target
        if self.s.distance == "l2":
            dist = diff.pow(2).flatten(1).mean(1)
        else:
            c = self.s.huber_c if self.s.huber_c is not None else default_huber_c(x0[0].numel())
            dist = pseudo_huber(diff, c)
        return dist / (hi - lo).to(x0.dtype)
