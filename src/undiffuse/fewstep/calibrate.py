"""Calibrate step positions (and solver weights) for one denoiser and one budget of steps.

The idea of "Align Your Steps" (Sabour et al. 2024) and of learned solvers (LD3, BNS): the
best places for a handful of steps depend on the model, so fit them. Here the objective is
direct: on a small batch of starting noises, the squared distance between the few-step
sampler's output and an accurate probability-flow ODE solve (SciPy's DOP853) of the same
noises, minimised with Adam through the sampler (every step is differentiable in the sigmas).
The fit starts from the best fixed schedule with its last positive sigma searched on a grid
(forward passes only): with few steps the level of the last evaluation matters most and is the
slowest for Adam to reach.
The result is checked on a second batch it was not fitted on, against the best fixed
schedule, and saved as plain JSON (a list of sigmas plus the solver weights).

Cost: the reference solve (a few hundred evaluations per batch) plus ``iters`` few-step
forward and backward passes; seconds on a CPU for an analytic model or a small network.

Caveat measured on a 64-D Gaussian mixture (BENCHMARKS.md, samplers section): the few-step error
is heavy-tailed (starting points near a boundary between modes carry most of the squared error),
so a validation RMSE on a few hundred noises can be off by 2x; judge a fit on a large held-out batch.
``screen`` fits and selects on stratified pools that over-represent those starting points (with
weights that keep the estimates unbiased); with it, iPNDM with a learned weight on every earlier
derivative (``history="all"``) beat diffusers' best 20-evaluation solver there with 10
evaluations, in about a minute on one CPU thread.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
from dataclasses import asdict, dataclass, field

import torch

from undiffuse import samplers as _samplers
from undiffuse.core import schedules as _schedules
from undiffuse.core.noise import noise as _noise
from undiffuse.core.types import denoiser_info
from undiffuse.samplers.calibrated import HISTORY
from undiffuse.utils.atomic import write_json

Tensor = torch.Tensor

_FIXED = ("karras", "logsnr")
_BASELINE_SAMPLERS = ("dpmpp_2m", "dpmpp_3m", "unipc", "ipndm")
_WEIGHTED = ("calibrated", "ipndm")  # samplers with learnable ``deltas`` and ``shifts``
_NOT_DIFFERENTIABLE = ("rk45", "lms", "ddpm", "euler_ancestral", "dpmpp_2m_sde", "sde_pc")
_PROBE_FACTOR = 4  # screening: a candidate's hardness is iPNDM at the NFE against iPNDM at this many times it


@dataclass
class Calibration:
    """A fitted schedule: pass ``**cal.sample_kwargs()`` to :func:`undiffuse.sample`."""

    sampler: str
    sigmas: list[float]
    options: dict = field(default_factory=dict)
    train_rmse: float = math.nan
    val_rmse: float = math.nan
    baseline: dict = field(default_factory=dict)  # "sampler+schedule" -> validation RMSE
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def sample_kwargs(self) -> dict:
        return {"sampler": self.sampler, "sigmas": torch.tensor(self.sigmas, dtype=torch.float64), **self.options}

    def save(self, path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path) -> "Calibration":
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or not {"sampler", "sigmas"} <= set(data) or set(data) - set(cls.__dataclass_fields__):
            raise ValueError(f"{path} is not a calibration file: expected a JSON object with keys "
                             f"{', '.join(cls.__dataclass_fields__)} (at least sampler and sigmas)")
        cal = cls(**data)
        _schedules.validate(torch.tensor(cal.sigmas, dtype=torch.float64), f"sigmas in {path}")
        _samplers.info(cal.sampler)
        return cal


def reference_solution(denoiser, x: Tensor, sigma_max: float, sigma_min: float, *, rtol: float = 1e-5,
                       extra: dict | None = None) -> Tensor:
    """Accurate ODE solve from ``sigma_max`` to ``sigma_min`` then the jump to 0.

    SciPy's DOP853 (8th order). Its error control is a root-mean-square over the whole batch,
    so a loose tolerance can hide a few badly solved samples: keep ``rtol`` well below the
    errors being fitted (a fit against a sloppy reference learns the reference's errors).
    Measured on the 64-D mixture of BENCHMARKS.md (1,024 noises against an rtol 1e-10 solve):
    rtol 1e-8 errs by 7e-9 RMS with 447 evaluations per noise, 1e-6 by 6e-7 (267), the
    default 1e-5 by 8e-6 (worst noise 1.3e-4; 195 evaluations), where the 10-evaluation
    fits err by about 5e-3.
    """
    sig = torch.tensor([sigma_max, sigma_min, 0.0], dtype=torch.float64)
    return _samplers.get("rk45")(denoiser, x, sig, rtol=rtol, atol=rtol, method="DOP853", extra=extra)


def _rmse(a: Tensor, b: Tensor, w: Tensor | None = None) -> Tensor:
    """Root-mean-square error; with per-sample weights ``w`` (summing to 1 over the whole pool
    a batch was drawn from) the weighted mean square, scaled by pool / batch size."""
    if w is None:
        return ((a - b) ** 2).mean().sqrt()
    return (((a - b) ** 2).flatten(1).mean(1) * w).sum().sqrt()


def _screened(draw, first: int, size: int, factor: int, hardness):
    """A pool of ``size`` noises that over-represents the hard ones, with weights that keep the
    weighted mean square an unbiased estimate of the plain mean over all candidates.

    ``factor * size`` candidate noises (seeds ``first ..``) are scored by ``hardness``; the
    ``size // 2`` hardest are kept with weight 1, and ``size - size // 2`` of the others drawn
    uniformly at random (seeded by ``first``) with weight (number of others) / (number drawn).
    Stratified sampling: with a heavy-tailed error, a plain pool holds only a handful of the
    samples that carry the squared error, and a fit (or a selection) sees them poorly."""
    cand = draw(first, factor * size)
    score = hardness(cand)
    order = torch.argsort(score, descending=True)
    n_hard = size // 2
    hard, rest = order[:n_hard], order[n_hard:]
    pick = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(first))[: size - n_hard]]
    w = torch.cat([torch.ones(n_hard, dtype=torch.float64),
                   torch.full((len(pick),), len(rest) / max(len(pick), 1), dtype=torch.float64)])
    return cand[torch.cat([hard, pick])], w / w.sum()


def _search_last_level(score, sigmas: Tensor, current: float, floor: float, points: int):
    """The start's last positive sigma moved to the best of ``points`` levels spaced evenly in
    log sigma between ``floor`` and the sigma before it (scored by ``score``, lower is better).

    The last step jumps to 0 with whatever the denoiser says there, so its level decides how
    much of the final detail comes from the network. Fixed schedules end at ``sigma_min``,
    which with a few steps spends the last evaluation where the network changes almost
    nothing; the fits move it up (to about 0.15 from 0.002 on the digits U-Net at 5 steps,
    0.12 from 0.01 on the 64-D mixture at 10), but the softmax-of-gaps parameters start that
    gap at its clamp, so Adam needs a hundred steps or more to get there. A grid of forward
    passes finds the level first."""
    lo, hi = math.log(floor), math.log(float(sigmas[-3]))
    best = (current, sigmas)
    for j in range(1, points + 1):
        level = math.exp(lo + (hi - lo) * j / (points + 1))
        if abs(level / float(sigmas[-2]) - 1) < 1e-9:
            continue
        cand = sigmas.clone()
        cand[-2] = level
        err = score(cand)
        if err < best[0]:
            best = (err, cand)
    return best[1], best[0]


class _Params(torch.nn.Module):
    """Interior log-sigmas via a softmax over gaps, plus optional solver weight offsets."""

    def __init__(self, init: Tensor, sigma_floor: float, learn_last: bool, learn_weights: bool,
                 history: int = HISTORY):
        super().__init__()
        pos = init[:-1]
        self.log_hi, self.log_lo = math.log(float(pos[0])), math.log(sigma_floor)
        span = self.log_hi - self.log_lo
        gaps = (pos[:-1].log() - pos[1:].log()).tolist() + [max(math.log(float(pos[-1])) - self.log_lo, 0.0)]
        gaps = torch.tensor(gaps, dtype=torch.float64).clamp_min(1e-3 * span)
        self.learn_last = learn_last
        self.logits = torch.nn.Parameter(gaps.log())
        n = len(pos)
        self.deltas = torch.nn.Parameter(torch.zeros(n, history, dtype=torch.float64)) if learn_weights else None
        self.shifts = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64)) if learn_weights else None

    def sigmas(self) -> Tensor:
        frac = torch.softmax(self.logits, 0)
        if not self.learn_last:  # pin the last positive sigma at the floor
            frac = frac[:-1] / frac[:-1].sum()
            frac = torch.cat([frac, frac.new_zeros(1)])
        log_s = self.log_hi - (self.log_hi - self.log_lo) * torch.cumsum(frac, 0)[:-1]
        pos = torch.cat([log_s.new_tensor([self.log_hi]), log_s]).exp()
        return torch.cat([pos, pos.new_zeros(1)])


@contextlib.contextmanager
def _parameters_frozen(denoiser):
    """The fit differentiates through the denoiser with respect to its input and noise level
    only. A module whose parameters still require gradients would have autograd compute (and
    accumulate into ``.grad``) gradients of every weight on each backward pass, about half
    the backward work for nothing; they are switched off for the fit and restored after."""
    params = [p for p in denoiser.parameters() if p.requires_grad] if isinstance(denoiser, torch.nn.Module) else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _with_parameters_frozen(fn):
    @functools.wraps(fn)
    def wrapper(denoiser, *args, **kwargs):
        with _parameters_frozen(denoiser):
            return fn(denoiser, *args, **kwargs)
    return wrapper


@_with_parameters_frozen
def calibrate(denoiser, shape, steps: int, *, sigma_min: float | None = None, sigma_max: float | None = None,
              sampler: str = "calibrated", learn_weights: bool | None = None, learn_last_sigma: bool = True,
              train_size: int = 64, val_size: int = 64, seed: int = 0, iters: int = 300, lr: float = 0.05,
              batch_size: int | None = None, select_every: int = 0, lr_decay: bool = False,
              history: int | str | None = None, screen: int = 0, position_iters: int = 0,
              position_lr: float = 0.05, reference_rtol: float = 1e-5, reference_sigma_min: float | None = None,
              init=None, last_level_grid: int = 8, sampler_options: dict | None = None, extra: dict | None = None,
              dtype=torch.float32, device="cpu", verbose: bool = False) -> Calibration:
    """Fit ``steps`` step positions (and, for ``sampler="calibrated"``, solver weights).

    ``shape`` is one sample's shape. Starting noises are seeds ``seed .. seed+train_size-1``
    (fit) and the next ``val_size`` seeds (validation). ``reference_sigma_min`` is where the
    reference ODE solve stops before its final jump (default ``sigma_min``).

    ``batch_size``: each Adam step uses this many noises drawn from the training pool (default:
    all of them). A large pool matters when the error has a heavy tail (a few starting points
    near a boundary between modes carry most of the squared error): a few hundred noises then
    estimate it poorly, and minibatches keep the cost per step fixed. ``select_every``: every
    that many steps score the parameters on the validation batch and return the best-scoring
    ones (early stopping; ``val_rmse`` is then the selected score, slightly optimistic); 0 keeps
    the parameters with the lowest training loss seen. ``lr_decay``: cosine decay of the
    learning rate to zero over ``iters``.

    ``history`` (``sampler="ipndm"`` with learned weights): how many earlier derivatives each
    step may weigh, an integer or ``"all"`` (``steps - 1``: free coefficients on every earlier
    denoiser output, as in LD3 / S4S-style learned solvers); default 3. ``screen``: when > 0,
    draw ``screen * train_size`` candidate noises (and ``screen * val_size`` for validation),
    score each by how much a cheap solve (iPNDM) disagrees with one at four times the steps, and keep the
    hardest half of each pool plus a uniform draw of the rest, weighted so that the reported
    RMSEs stay unbiased estimates over all candidates (stratified sampling of the heavy tail).
    ``init``: the schedule the fit starts from, a name or a list of ``steps + 1`` sigmas (e.g. a
    process's ``trailing`` schedule); default the better of karras and logsnr on the training pool.
    ``last_level_grid``: before the fit, try this many levels for the start's last positive
    sigma (evenly spaced in log sigma above ``sigma_min``) and start from the best on the
    training pool (forward passes only; 0: off; needs ``learn_last_sigma``).
    ``position_iters``: with learned weights, first fit the positions alone for this many Adam
    steps at ``position_lr`` (the base solver on better positions: a good start), then
    positions, weights and shifts together for ``iters`` steps at ``lr`` from the best of those.
    """
    info = _samplers.info(sampler)
    if sampler in _NOT_DIFFERENTIABLE:
        raise ValueError(f"sampler {sampler!r} cannot be calibrated (stochastic or not differentiable in sigma); "
                         f"use one of: {', '.join(n for n in _samplers.names() if n not in _NOT_DIFFERENTIABLE)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    sigma_min, sigma_max = denoiser_info(denoiser, sigma_min=sigma_min, sigma_max=sigma_max).sigma_range("calibrate")
    learn_weights, history = _checked(sampler, steps, learn_weights, batch_size, train_size, history,
                                      last_level_grid, screen)
    ref_lo = sigma_min if reference_sigma_min is None else reference_sigma_min
    p = _problem(denoiser, shape, steps, sigma_min, sigma_max, info=info, opts=dict(sampler_options or {}),
                 extra=extra, seed=seed, train_size=train_size, val_size=val_size, screen=screen,
                 reference_rtol=reference_rtol, reference_sigma_min=ref_lo, dtype=dtype, device=device)
    baseline_val, start, start_err, init_sigmas = _baselines_and_start(p, sampler, steps, sigma_min, sigma_max, init)
    learn_last = learn_last_sigma and steps > 1
    if learn_last and last_level_grid:
        with torch.no_grad():
            init_sigmas, start_err = _search_last_level(p.train_score, init_sigmas, start_err, sigma_min,
                                                        last_level_grid)
    best = (start_err, init_sigmas.clone(), None)  # (score, sigmas, (deltas, shifts) or None)
    if select_every:
        best = (p.val_score(init_sigmas), init_sigmas.clone(), None)
    gen = torch.Generator().manual_seed(seed)  # minibatch order, reproducible from ``seed``
    fit = functools.partial(_fit, p, gen=gen, batch_size=batch_size, select_every=select_every, lr_decay=lr_decay,
                            verbose=verbose)
    if learn_weights and position_iters and steps > 1:
        best = fit(_Params(init_sigmas, sigma_min, learn_last, False), position_iters, position_lr, False, best)
        if not math.isfinite(best[0]):  # minibatches without selection: score the positions to compare
            best = (p.val_score(best[1]) if select_every else math.inf, best[1], None)
    if steps > 1 or learn_weights:
        params = _Params(best[1], sigma_min, learn_last, learn_weights, history)
        best = fit(params, iters, lr, learn_weights, best)
    _, sigmas, deltas = best
    with torch.no_grad():
        train_rmse = float(_rmse(p.run(sigmas, p.x_train, *(deltas or ())), p.y_train, p.w_train))
    val_rmse = p.val_score(sigmas, deltas)
    opts = p.opts
    if deltas is not None:
        opts["deltas"], opts["shifts"] = deltas[0].tolist(), deltas[1].tolist()
    return Calibration(sampler=sampler, sigmas=sigmas.tolist(), options=opts, train_rmse=train_rmse,
                       val_rmse=val_rmse, baseline=baseline_val,
                       meta={"steps": steps, "nfe": steps * max(info.evals_per_step, 1), "train_size": train_size,
                             "val_size": val_size, "seed": seed, "iters": iters, "batch_size": batch_size,
                             "select_every": select_every, "lr_decay": lr_decay,
                             "history": history if learn_weights else None, "screen": screen,
                             "position_iters": position_iters if learn_weights else 0, "init": start,
                             "start_sigmas": init_sigmas.tolist(), "reference_rtol": reference_rtol,
                             "reference_sigma_min": ref_lo, "sigma_min": sigma_min, "sigma_max": sigma_max})


def _checked(sampler, steps, learn_weights, batch_size, train_size, history, last_level_grid, screen):
    """``calibrate``'s remaining arguments checked (ValueError naming each); returns whether
    solver weights are learned and the resolved ``history``."""
    learn_weights = (sampler == "calibrated") if learn_weights is None else learn_weights
    if learn_weights and sampler not in _WEIGHTED:
        raise ValueError(f"learn_weights=True needs one of the samplers {', '.join(_WEIGHTED)}, got {sampler!r}")
    if batch_size is not None and not 1 <= batch_size <= train_size:
        raise ValueError(f"batch_size must be between 1 and train_size={train_size}, got {batch_size!r}")
    if history == "all":
        history = max(steps - 1, 1)
    if history is not None:
        if sampler != "ipndm" or not learn_weights:
            raise ValueError(f"history applies to sampler='ipndm' with learned weights, got sampler={sampler!r}")
        if not isinstance(history, int) or not 1 <= history <= max(steps - 1, 3):
            raise ValueError(f"history must be 'all' or an integer between 1 and {max(steps - 1, 3)}, got {history!r}")
    if not isinstance(last_level_grid, int) or last_level_grid < 0:
        raise ValueError(f"last_level_grid must be an integer >= 0 (0: off), got {last_level_grid!r}")
    if not isinstance(screen, int) or screen < 0 or screen == 1:
        raise ValueError(f"screen must be 0 (off) or an integer >= 2, got {screen!r}")
    return learn_weights, HISTORY if history is None else history


@dataclass
class _Problem:
    """What the fit works on: the solver and its options (``opts``, shared and updated as the
    start is chosen), the training and validation noises (scaled to ``sigma_max``), their
    accurate ODE solutions and, when screened, their importance weights."""

    denoiser: object
    info: object
    opts: dict
    extra: dict | None
    x_train: Tensor
    y_train: Tensor
    w_train: Tensor | None
    x_val: Tensor
    y_val: Tensor
    w_val: Tensor | None

    def run(self, sigmas, x, deltas=None, shifts=None) -> Tensor:
        kw = dict(self.opts)
        if deltas is not None:
            kw["deltas"] = deltas
        if shifts is not None:
            kw["shifts"] = shifts
        return self.info.fn(self.denoiser, x, sigmas, extra=self.extra, **kw)

    def train_score(self, sigmas) -> float:
        return float(_rmse(self.run(sigmas, self.x_train), self.y_train, self.w_train))

    def val_score(self, sigmas, weights=None) -> float:
        with torch.no_grad():
            return float(_rmse(self.run(sigmas, self.x_val, *(weights or ())), self.y_val, self.w_val))


def _problem(denoiser, shape, steps, sigma_min, sigma_max, *, info, opts, extra, seed, train_size, val_size, screen,
             reference_rtol, reference_sigma_min, dtype, device) -> _Problem:
    """Draw the noise pools (seeds ``seed ..``, validation right after; screened when ``screen``)
    and solve their ODEs accurately."""
    def draw(first, count):
        return _noise((count, *shape), seed=list(range(first, first + count)), dtype=dtype, device=device) * sigma_max

    if screen:
        probe = _schedules.get_sigmas("logsnr", steps, sigma_min=sigma_min, sigma_max=sigma_max)
        probe2 = _schedules.get_sigmas("logsnr", _PROBE_FACTOR * steps, sigma_min=sigma_min, sigma_max=sigma_max)
        ipndm = _samplers.get("ipndm")

        def hardness(x):
            with torch.no_grad():
                return (ipndm(denoiser, x, probe, extra=extra) - ipndm(denoiser, x, probe2, extra=extra)) \
                    .flatten(1).pow(2).mean(1)

        # training candidates: seeds seed ..; validation candidates right after them
        x_train, w_train = _screened(draw, seed, train_size, screen, hardness)
        x_val, w_val = _screened(draw, seed + screen * train_size, val_size, screen, hardness)
    else:
        x_train, x_val = draw(seed, train_size), draw(seed + train_size, val_size)
        w_train = w_val = None
    with torch.no_grad():
        y_train = reference_solution(denoiser, x_train, sigma_max, reference_sigma_min, rtol=reference_rtol,
                                     extra=extra)
        y_val = reference_solution(denoiser, x_val, sigma_max, reference_sigma_min, rtol=reference_rtol, extra=extra)
    return _Problem(denoiser, info, opts, extra, x_train, y_train, w_train, x_val, y_val, w_val)


def _baselines_and_start(p: _Problem, sampler, steps, sigma_min, sigma_max, init):
    """Standard solvers on fixed schedules scored on the validation pool (the reference point a
    user would otherwise pick), and the fit's start: the fixed schedule (and, for the
    calibrated solver, base order) best on the training pool. Returns (baselines, start name,
    its training score, its sigmas); ``p.opts`` gets the chosen base order."""
    baseline_val, starts = {}, {}
    with torch.no_grad():
        for name in _BASELINE_SAMPLERS:
            for sched in _FIXED:
                s = _schedules.get_sigmas(sched, steps, sigma_min=sigma_min, sigma_max=sigma_max)
                out = _samplers.get(name)(p.denoiser, p.x_val, s, extra=p.extra)
                baseline_val[f"{name}+{sched}"] = float(_rmse(out, p.y_val, p.w_val))
        for sched in ([init] if init is not None else _FIXED):
            s = _schedules.get_sigmas(sched, steps, sigma_min=sigma_min, sigma_max=sigma_max)
            if not isinstance(sched, str):  # a list of sigmas: the fit's start
                if len(s) != steps + 1 or abs(float(s[0]) / sigma_max - 1) > 1e-6:
                    raise ValueError(f"init sigmas must be {steps + 1} values from sigma_max={sigma_max} down to 0")
                sched = "custom"
            for order in ((2, 3, 4) if sampler == "calibrated" and "base_order" not in p.opts else (None,)):
                if order is not None:
                    p.opts["base_order"] = order
                starts[(sched, order)] = (p.train_score(s), s)
                if sampler != "calibrated":
                    baseline_val[f"{sampler}+{sched}"] = p.val_score(s)
    (start, order), (start_err, init_sigmas) = min(starts.items(), key=lambda kv: kv[1][0])
    if order is not None:
        p.opts["base_order"] = order
    return baseline_val, start, start_err, init_sigmas


def _fit(p: _Problem, params, n_iters, rate, weighted, best, *, gen, batch_size, select_every, lr_decay, verbose):
    """Adam on ``params`` (its weights only if ``weighted``) against the training pool (all of
    it, or minibatches of ``batch_size``); returns the best (score, sigmas, weights): by
    validation score every ``select_every`` steps, else the lowest full-pool training loss (or,
    with minibatches, the last)."""
    train_size = len(p.x_train)
    opt = torch.optim.Adam(params.parameters() if weighted else [params.logits], lr=rate)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_iters) if lr_decay else None
    perm, pos = torch.randperm(train_size, generator=gen), 0

    def snapshot():
        if not weighted:
            return params.sigmas().detach().clone(), None
        return params.sigmas().detach().clone(), (params.deltas.detach().clone(), params.shifts.detach().clone())

    for it in range(n_iters):
        if batch_size is None:
            xb, yb, wb = p.x_train, p.y_train, p.w_train
        else:
            if pos + batch_size > train_size:
                perm, pos = torch.randperm(train_size, generator=gen), 0
            idx = perm[pos: pos + batch_size]
            pos += batch_size
            xb, yb = p.x_train[idx], p.y_train[idx]
            wb = None if p.w_train is None else p.w_train[idx] * (train_size / batch_size)
        opt.zero_grad()
        sig = params.sigmas()
        out = p.run(sig, xb, params.deltas, params.shifts) if weighted else p.run(sig, xb)
        loss = _rmse(out, yb, wb)
        value = loss.item()
        if not math.isfinite(value):
            break
        if not select_every and batch_size is None and value < best[0]:
            best = (value, *snapshot())
        loss.backward()
        opt.step()
        if decay is not None:
            decay.step()
        if select_every and ((it + 1) % select_every == 0 or it + 1 == n_iters):
            sig_now, weights = snapshot()
            score = p.val_score(sig_now, weights)
            if score < best[0]:
                best = (score, sig_now, weights)
            if verbose:
                print(f"calibrate: iter {it + 1} validation rmse {score:.4g} (best {best[0]:.4g})")
        if verbose and it % 50 == 0:
            print(f"calibrate: iter {it} train rmse {value:.4g}")
    if not select_every and batch_size is not None:
        best = (math.nan, *snapshot())  # minibatch losses are not comparable: keep the last
    return best
