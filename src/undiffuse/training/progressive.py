"""Progressive distillation (Salimans & Ho 2022): halve a deterministic sampler's steps.

The teacher takes two steps of its ODE solver on a grid of ``2n`` steps; the student learns
to land at the same point with one Euler (= deterministic DDIM) step on every other level
of that grid, so it samples in ``n`` steps. Each round's student is the next round's
teacher, so ``R`` rounds take ``2^R n`` steps down to ``n``.

In the rescaled space an Euler step from ``s`` to ``s''`` is
``x'' = (s''/s) x + (1 - s''/s) D(x, s)``, so the student's target denoised value is the
one that makes this step land on the teacher's two-step result ``x''_T``:

    D* = (x''_T - (s''/s) x) / (1 - s''/s)         (D* = x''_T when s'' = 0)

and the loss is the squared error of ``D`` against ``D*`` weighted by ``max(1/s^2, 1)``
(the "truncated SNR" weighting of the paper), noise levels drawn uniformly among the
student's ``n`` steps.
"""
from __future__ import annotations

import torch

from undiffuse.core.schedules import validate
from undiffuse.samplers.odestep import ode_step

Tensor = torch.Tensor


def student_grid(teacher_grid) -> list[float]:
    """Every other level of the teacher's grid (``2n + 1`` levels ending in 0 -> ``n + 1``)."""
    g = [float(v) for v in teacher_grid]
    if len(g) < 3 or len(g) % 2 == 0:
        raise ValueError(f"a progressive-distillation grid needs 2n + 1 levels (n >= 1), got {len(g)}")
    return g[::2]


class ProgressiveObjective:
    """Per-sample progressive-distillation loss for the trainer (``Trainer(objective=...)``),
    called as ``objective(trainer, x0, cond) -> (B,)``; draws from ``trainer.gen`` the
    student's steps, then the noise.

    ``teacher``: a frozen denoiser; ``grid``: its ``2n + 1`` noise levels (decreasing, ending
    in 0); ``solver``: the teacher's step (``euler`` = DDIM, as in the paper, or ``heun`` ...).
    """

    def __init__(self, teacher, grid, solver: str = "euler"):
        self.teacher, self.solver = teacher, solver
        self.grid = validate(torch.as_tensor(grid, dtype=torch.float64), "grid")
        student_grid(self.grid.tolist())  # checks the length

    def __call__(self, trainer, x0: Tensor, cond: dict) -> Tensor:
        n = (len(self.grid) - 1) // 2
        batch = trainer.batch  # draws for the whole micro-batch; this process keeps its rows
        j = batch.rows_of(torch.randint(0, n, (batch.size,), generator=trainer.gen))
        g = self.grid.to(x0.device)
        s, s_mid, s_next = g[2 * j], g[2 * j + 1], g[2 * j + 2]
        z = batch.rows_of(torch.randn((batch.size, *x0.shape[1:]), generator=trainer.gen)).to(x0.device)
        col = (-1,) + (1,) * (x0.dim() - 1)
        x = x0 + s.to(x0.dtype).reshape(col) * z
        with torch.no_grad():
            x_mid = ode_step(self.teacher, x, s, s_mid, self.solver, extra=cond)
            x_two = ode_step(self.teacher, x_mid, s_mid, s_next, self.solver, extra=cond)
            ratio = (s_next / s).to(x0.dtype).reshape(col)
            target = (x_two - ratio * x) / (1 - ratio)
        pred = trainer.denoiser(x, s, **cond)
        weight = s.pow(-2).clamp(min=1.0).to(x0.dtype)
        return weight * (pred - target).pow(2).flatten(1).mean(1)
