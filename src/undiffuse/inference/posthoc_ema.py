"""Post-hoc EMA: the weights of an exponential moving average of any length, chosen after
training, rebuilt from snapshots of two (or more) averages tracked during it (the method of
EDM2, Karras et al. 2024, written here from the paper's equations).

**Power-function averages.** A tracked average with exponent ``gamma`` moves by
``beta_t = (1 - 1/t) ** (gamma + 1)`` at its ``t``-th update (``training.power_ema``). Its
value after ``T`` updates is a weighted mean of the raw weights of every update ``k``, with
weights that telescope to the closed form

    w_k = (k/T) ** (gamma + 1) - ((k - 1)/T) ** (gamma + 1),    k = 1..T   (sum 1)

a discrete power profile ``~ k ** gamma``. Its relative width ``sigma_rel`` (the standard
deviation of the continuous profile ``~ tau ** gamma`` on ``[0, 1]``) is
``sqrt((gamma + 1) / ((gamma + 2) ** 2 (gamma + 3)))``: 0.05 is ``gamma`` 16.97, 0.10 is
6.94; ``gamma`` 0 (a plain mean of all the weights) is the widest, 0.2887.

**Reconstruction.** Each stored snapshot ``i`` (exponent ``gamma_i`` after ``T_i`` updates)
is a known profile ``w_i``. A requested average (``sigma_rel`` after ``T`` updates) is the
profile ``y``; the coefficients ``c`` that minimise ``|sum_i c_i w_i - y|`` over the updates
(least squares on the exact discrete profiles, so no continuous approximation) give the
weights ``sum_i c_i theta_i``. The fit's relative residual ``|W c - y| / |y|`` says how well
the snapshots express the request; above :data:`MAX_RESIDUAL` the request is refused
(:class:`PosthocError`) with the range of lengths the snapshots do support, rather than
returning a silent approximation. A request equal to a stored profile returns that snapshot
itself, bit for bit.

Files: snapshots are ``RUN/ema/snapshots/step_XXXXXXXX.safetensors`` (every tracked average at
that step; metadata: step, updates, the tracked ``sigma_rel`` values, which tensors are
buffers); a reconstruction is ``RUN/ema/sigma_rel_0.050.safetensors`` (at the last snapshot)
or ``..._step_XXXXXXXX.safetensors`` (at an earlier one), its provenance in the metadata.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq

from undiffuse.config import POSTHOC_SIGMA_MAX
from undiffuse.io import checkpoint as ckpt

Tensor = torch.Tensor
SNAPSHOTS = os.path.join("ema", "snapshots")
FORMAT = "undiffuse.posthoc-ema-snapshot"
RECONSTRUCTION = "undiffuse.posthoc-ema"
MAX_RESIDUAL = 0.05  # relative L2 error of the fitted profile above which a request is refused
_CHUNK = 1 << 16  # updates per block when the profiles' inner products are summed


class PosthocError(ValueError):
    """A post-hoc EMA request the stored snapshots cannot serve; the message says why."""


def sigma_rel_of(gamma: float) -> float:
    """The relative standard deviation of the power profile with exponent ``gamma``."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


SIGMA_REL_MAX = POSTHOC_SIGMA_MAX  # sigma_rel_of(0) = 0.2887: the plain average of every update


def gamma_of(sigma_rel: float) -> float:
    """The exponent whose profile has relative width ``sigma_rel`` (0 < sigma_rel <= 0.2887)."""
    if not 0 < sigma_rel <= SIGMA_REL_MAX:
        raise PosthocError(f"sigma_rel {sigma_rel:g} is outside (0, {SIGMA_REL_MAX:.4f}]: a power-function "
                           f"average is at most as wide as the plain mean of all updates")
    if sigma_rel == SIGMA_REL_MAX:
        return 0.0
    hi = 1.0
    while sigma_rel_of(hi) > sigma_rel:  # sigma_rel falls monotonically in gamma >= 0
        hi *= 2
    return brentq(lambda g: sigma_rel_of(g) - sigma_rel, 0.0, hi, xtol=1e-12, rtol=1e-14)


def profile(gamma: float, updates: int, start: int = 1, stop: int | None = None) -> np.ndarray:
    """The weights ``w_k`` (float64) of a power average with ``gamma`` after ``updates`` updates
    on the raw weights of updates ``k = start .. stop - 1`` (zero beyond ``updates``)."""
    stop = updates + 1 if stop is None else stop
    k = np.arange(start, stop, dtype=np.float64)
    out = np.zeros(len(k))
    live = k <= updates
    kk = k[live]
    # (k/T)^(g+1) * (1 - (1 - 1/k)^(g+1)), written to stay accurate for large k and T
    with np.errstate(divide="ignore"):
        out[live] = (kk / updates) ** (gamma + 1) * -np.expm1((gamma + 1) * np.log1p(-1 / kk))
    return out


def _inner_products(stored: list[tuple[float, int]], target: tuple[float, int]):
    """Gram matrix of the stored profiles, their inner products with the target and the
    target's squared norm, summed over the updates in blocks."""
    n = len(stored)
    last = max([t for _, t in stored] + [target[1]])
    gram, cross, norm2 = np.zeros((n, n)), np.zeros(n), 0.0
    for a in range(1, last + 1, _CHUNK):
        b = min(a + _CHUNK, last + 1)
        w = np.stack([profile(g, t, a, b) for g, t in stored])
        y = profile(target[0], target[1], a, b)
        gram += w @ w.T
        cross += w @ y
        norm2 += float(y @ y)
    return gram, cross, norm2


def solve(stored: list[tuple[float, int]], target: tuple[float, int]) -> tuple[np.ndarray, float]:
    """Coefficients of the stored profiles ``(gamma, updates)`` that best express ``target``
    ``(gamma, updates)``, and the fit's relative residual."""
    gram, cross, norm2 = _inner_products(stored, target)
    coef = np.linalg.lstsq(gram, cross, rcond=1e-13)[0]
    err2 = float(coef @ gram @ coef - 2 * coef @ cross + norm2)
    return coef, math.sqrt(max(err2, 0.0) / norm2)


def supported_range(stored: list[tuple[float, int]], updates: int, grid: int = 48) -> tuple[float, float] | None:
    """The lowest and highest ``sigma_rel`` (on a log grid from 0.002 to the widest) that the
    stored profiles express within :data:`MAX_RESIDUAL` after ``updates`` updates."""
    ok = [s for s in np.geomspace(0.002, SIGMA_REL_MAX, grid)
          if solve(stored, (gamma_of(float(s)), updates))[1] <= MAX_RESIDUAL]
    return (float(min(ok)), float(max(ok))) if ok else None


# ----------------------------------------------------------------------------- snapshots on disk


@dataclass(frozen=True)
class Snapshot:
    path: str
    step: int
    updates: int
    sigma_rels: tuple[float, ...]  # the tracked averages it holds, in order (tensor prefix "0.", "1.", ...)
    buffers: tuple[str, ...]       # state entries that are buffers (taken from the latest snapshot, not mixed)


def snapshot_name(step: int) -> str:
    return f"step_{step:08d}.safetensors"


def snapshot_metadata(step: int, updates: int, sigma_rels, buffers) -> dict[str, str]:
    return {"format": FORMAT, "step": str(step), "updates": str(updates),
            "sigma_rels": json.dumps([float(s) for s in sigma_rels]), "buffers": json.dumps(list(buffers))}


def _read_header(path: str) -> dict:
    """A safetensors file's metadata, without loading its tensors."""
    ckpt.check_safetensors(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            return json.loads(f.read(n)).get("__metadata__") or {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ckpt.CheckpointError(f"{path} has a damaged header: {e}") from None


def snapshots(run: str) -> list[Snapshot]:
    """The run's post-hoc EMA snapshots, by step ( ``CheckpointError`` names a damaged one)."""
    folder = os.path.join(run, SNAPSHOTS)
    if not os.path.isdir(folder):
        return []
    out = []
    for name in sorted(os.listdir(folder)):
        if not re.fullmatch(r"step_\d{8}\.safetensors", name):
            continue
        path = os.path.join(folder, name)
        meta = _read_header(path)
        if meta.get("format") != FORMAT:
            raise ckpt.CheckpointError(f"{path} is not a post-hoc EMA snapshot (format {meta.get('format')!r})")
        out.append(Snapshot(path, int(meta["step"]), int(meta["updates"]), tuple(json.loads(meta["sigma_rels"])),
                            tuple(json.loads(meta["buffers"]))))
    return out


def drop_after(run: str, step: int) -> list[str]:
    """Delete snapshots written after ``step`` (a resumed run's cut-off future); their names."""
    gone = [s.path for s in snapshots(run) if s.step > step]
    for path in gone:
        os.remove(path)
    return gone


def output_path(run: str, sigma_rel: float, step: int | None = None) -> str:
    """``RUN/ema/sigma_rel_0.050.safetensors``; with ``step``: ``..._step_XXXXXXXX``."""
    tag = f"{sigma_rel:.3f}" if round(sigma_rel, 3) == sigma_rel else f"{sigma_rel:.6g}"
    suffix = "" if step is None else f"_step_{step:08d}"
    return os.path.join(run, "ema", f"sigma_rel_{tag}{suffix}.safetensors")


@dataclass
class Plan:
    """What a reconstruction will combine: the snapshots and coefficients, and the fit."""

    sigma_rel: float
    gamma: float
    step: int
    updates: int
    parts: list[tuple[Snapshot, int, float]]  # (snapshot, which average in it, coefficient)
    residual: float

    def record(self) -> dict:
        return {"format": RECONSTRUCTION, "sigma_rel": self.sigma_rel, "gamma": self.gamma, "step": self.step,
                "updates": self.updates, "residual": self.residual,
                "coefficient_sum": float(sum(c for _, _, c in self.parts)),
                "parts": [{"snapshot": os.path.basename(s.path), "step": s.step, "sigma_rel": s.sigma_rels[i],
                           "coefficient": c} for s, i, c in self.parts]}


def plan(run: str, sigma_rel: float, step: int | None = None) -> Plan:
    """How to build the ``sigma_rel`` average at ``step`` (default: the last snapshot's) from
    the run's snapshots; :class:`PosthocError` when it cannot be built well enough."""
    gamma = gamma_of(sigma_rel)
    found = snapshots(run)
    if not found:
        raise PosthocError(f"{run!r} has no post-hoc EMA snapshots ({os.path.join(run, SNAPSHOTS)}); train it with "
                           f"--ema-posthoc to store them")
    at = found[-1] if step is None else next((s for s in found if s.step == step), None)
    if at is None:
        raise PosthocError(f"{run!r} has no post-hoc EMA snapshot at step {step}; snapshots exist at steps "
                           f"{', '.join(str(s.step) for s in found)}")
    usable = [s for s in found if s.step <= at.step]
    for i, s in enumerate(at.sigma_rels):  # the request is a tracked average: take it as it is
        if math.isclose(s, sigma_rel, rel_tol=1e-9):
            return Plan(sigma_rel, gamma, at.step, at.updates, [(at, i, 1.0)], 0.0)
    stored = [(gamma_of(s.sigma_rels[i]), s.updates) for s in usable for i in range(len(s.sigma_rels))]
    coef, residual = solve(stored, (gamma, at.updates))
    if residual > MAX_RESIDUAL:
        span = supported_range(stored, at.updates)
        can = (f"these snapshots support sigma_rel from about {span[0]:.3g} to {span[1]:.3g}" if span
               else "these snapshots support no length at that step")
        raise PosthocError(f"--sigma-rel {sigma_rel:g} cannot be rebuilt from the {len(usable)} snapshot(s) up to "
                           f"step {at.step}: the best fit of its profile is off by {residual:.1%} (at most "
                           f"{MAX_RESIDUAL:.0%} allowed); {can} (tracked: "
                           f"{', '.join(f'{s:g}' for s in at.sigma_rels)})")
    parts, k = [], 0
    for s in usable:
        for i in range(len(s.sigma_rels)):
            parts.append((s, i, float(coef[k])))
            k += 1
    return Plan(sigma_rel, gamma, at.step, at.updates, parts, residual)


def combine(p: Plan) -> dict[str, Tensor]:
    """The planned weights: parameters mixed in float64 and cast back, buffers (and any
    integer entries) from the latest snapshot's average."""
    latest = max(p.parts, key=lambda part: part[0].step)
    files: dict[str, list[tuple[Snapshot, int, float]]] = {}
    for part in p.parts:
        files.setdefault(part[0].path, []).append(part)
    acc: dict[str, Tensor] = {}
    template: dict[str, Tensor] = {}
    for path, parts in files.items():
        tensors = ckpt.load_tensors(path)
        for snap, i, c in parts:
            own = {k[len(f"{i}."):]: v for k, v in tensors.items() if k.startswith(f"{i}.")}
            if snap.step == latest[0].step and i == latest[1]:
                template = own
            for name, value in own.items():
                if name in snap.buffers or not value.is_floating_point():
                    continue
                term = value.double() * c
                acc[name] = acc[name].add_(term) if name in acc else term
    return {**template, **{name: value.to(template[name].dtype) for name, value in acc.items()}}


def reconstruct(run: str, sigma_rel: float, step: int | None = None, *, write: bool = True):
    """The ``sigma_rel`` average's weights at ``step`` and their provenance record; with
    ``write``, also stored as :func:`output_path` (reused while its provenance still matches
    the snapshots). Returns ``(state_dict, record, path or None)``."""
    p = plan(run, sigma_rel, step)
    rec = p.record()
    last = snapshots(run)[-1].step
    path = output_path(run, sigma_rel, None if p.step == last else p.step)
    if os.path.isfile(path):
        try:
            old = json.loads(_read_header(path).get("provenance", "null"))
        except (ckpt.CheckpointError, json.JSONDecodeError):
            old = None
        if old == rec:
            return ckpt.load_tensors(path), rec, path
    state = combine(p)
    if not write:
        return state, rec, None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ckpt.save_tensors(path, state, metadata={"format": RECONSTRUCTION, "provenance": json.dumps(rec)})
    return state, rec, path


def describe(run: str) -> dict:
    """What a run holds for post-hoc EMA: its snapshots and stored reconstructions."""
    found = snapshots(run)
    folder = os.path.join(run, "ema")
    built = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.startswith("sigma_rel_") and name.endswith(".safetensors"):
                meta = _read_header(os.path.join(folder, name))
                built.append({"path": os.path.join(folder, name), **json.loads(meta.get("provenance", "{}"))})
    return {"snapshots": [{"path": s.path, "step": s.step, "updates": s.updates, "sigma_rels": list(s.sigma_rels)}
                          for s in found], "reconstructions": built}
