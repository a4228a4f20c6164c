"""One probability-flow ODE step with a different noise level for every sample.

Distillation draws a noise level per training sample and asks the teacher for one solver
step from each sample's own ``sigma_from`` to its own ``sigma_to``. The registry's samplers
take one sigma list for the whole batch, so this module adds the per-sample form:

* ``euler`` and ``heun`` (EDM's second-order step) are written here, vectorised over
  per-sample sigmas;
* any other deterministic sampler of the registry is run on the two-point list
  ``[sigma_from, sigma_to]``, once per distinct pair of levels (distillation draws them from
  a small grid, so the groups are few).

Multistep samplers have no history in a single step and take their first-order start,
which for DPM-Solver++ and UniPC is exactly the Euler step in this rescaled space.
"""
from __future__ import annotations

import torch

from undiffuse import samplers

Tensor = torch.Tensor

VECTORISED = ("euler", "heun")


def check_solver(name: str) -> None:
    """Raise ValueError unless ``name`` is a deterministic sampler."""
    info = samplers.info(name)  # raises with the allowed names
    if info.stochastic or name == "rk45":
        allowed = [n for n in samplers.names() if not samplers.info(n).stochastic and n != "rk45"]
        raise ValueError(f"solver {name!r} cannot take one deterministic ODE step; allowed: {', '.join(allowed)}")


def _col(v: Tensor, x: Tensor) -> Tensor:
    return v.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))


def _rows(extra: dict, idx: Tensor, n: int) -> dict:
    return {k: (v[idx] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v) for k, v in extra.items()}


def ode_step(denoiser, x: Tensor, sigma_from: Tensor, sigma_to: Tensor, solver: str = "heun",
             extra: dict | None = None) -> Tensor:
    """``x`` at per-sample levels ``sigma_from`` (shape ``(B,)``, > 0) moved by one ``solver``
    step to ``sigma_to`` (``(B,)``, ``>= 0``, smaller). No gradient bookkeeping is changed:
    call it under ``torch.no_grad`` for a frozen teacher."""
    extra = extra or {}
    n = x.shape[0]
    if sigma_from.shape != (n,) or sigma_to.shape != (n,):
        raise ValueError(f"sigma_from and sigma_to must have shape ({n},), got {tuple(sigma_from.shape)} and "
                         f"{tuple(sigma_to.shape)}")
    if solver in VECTORISED:
        den = denoiser(x, sigma_from.to(x.dtype), **extra)
        d = (x - den) / _col(sigma_from, x)
        x_next = x + _col(sigma_to - sigma_from, x) * d
        if solver == "euler":
            return x_next
        idx = torch.nonzero(sigma_to > 0).flatten()
        if len(idx) == 0:
            return x_next
        sub_to = sigma_to[idx]
        den2 = denoiser(x_next[idx], sub_to.to(x.dtype), **_rows(extra, idx, n))
        d2 = (x_next[idx] - den2) / _col(sub_to, x)
        corrected = x[idx] + _col(sub_to - sigma_from[idx], x) * (d[idx] + d2) / 2
        return x_next.index_copy(0, idx, corrected)

    check_solver(solver)
    fn = samplers.get(solver)
    out = torch.empty_like(x)
    pairs = torch.stack([sigma_from.to(torch.float64), sigma_to.to(torch.float64)], 1)
    for pair in torch.unique(pairs, dim=0):
        idx = torch.nonzero((pairs == pair).all(1)).flatten()
        out[idx] = fn(denoiser, x[idx], pair.to(x.device), extra=_rows(extra, idx, n))
    return out
