"""Diffusion models as priors for inverse problems, over any unconditional denoiser.

* :func:`inpaint`: RePaint (Lugmayr et al. 2022), replace the observed region at every step
  and optionally resample (go back up and redo) to harmonise the two regions.
* :func:`sdedit`: SDEdit (Meng et al. 2022), noise an image part of the way and denoise it
  with any registered sampler.
* :class:`PosteriorGuided`: a denoiser wrapper that adds the likelihood of a measurement
  ``y = A x0 + noise`` (DPS, Chung et al. 2023; PiGDM, Song et al. 2023; TMPD, Boys et al.
  2023), so every sampler becomes a posterior sampler.
* :func:`restore` / :func:`upscale`: the general and the super-resolution entries over it.

All denoisers are ``D(x, sigma, **extra) -> x0`` in the rescaled space ``x = x0 + sigma eps``;
tensors are batches ``(B, D)`` or ``(B, C, H, W)``. Per-sample generators (``seed + i``) make
sample i independent of the batch size. The entry functions run under ``torch.no_grad``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from undiffuse import samplers as _samplers
from undiffuse.core import schedules as _schedules
from undiffuse.core.noise import SeededNoise, randn_like
from undiffuse.core.types import WrapsDenoiser, denoiser_info
from undiffuse.samplers._common import ancestral_split, call, report
from undiffuse.samplers.driver import schedule_of

from .degradations import Downsample, Mask, Operator, _is_int, _is_real

Tensor = torch.Tensor

INPAINT_STEPS = ("ancestral", "euler")
VARIANCES = ("pigdm", "tweedie", "dps")


# ----------------------------------------------------------------------------- input checks

def _check_data(name: str, x) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if isinstance(x, Tensor) else ""))
    if x.dim() < 2:
        raise ValueError(f"{name} must be a batch (B, D) or (B, C, H, W), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, but it has {int((~torch.isfinite(x)).sum())} NaN/inf entries")
    return x


def _check_int(name: str, value, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_number(name: str, value, minimum: float = 0.0) -> float:
    if not _is_real(value) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def _generators(seed, generator, batch: int, device, draws: int = 1) -> SeededNoise | torch.Generator | None:
    """Per-sample noise streams from ``seed`` (sample i uses ``seed + i`` or ``seed[i]``; about
    ``draws`` draws each, drawn in blocks: see ``core.noise.SeededNoise``)."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is None:
        return generator
    seeds = [int(seed) + i for i in range(batch)] if _is_int(seed) else list(seed)
    if len(seeds) != batch:
        raise ValueError(f"seed list has {len(seeds)} entries but the batch has {batch} samples")
    return SeededNoise(seeds, draws=draws, device=torch.device(device).type)


def _check_sampler_options(sampler: str, options: dict) -> Callable:
    fn = _samplers.get(sampler)
    unknown = set(options) - set(_samplers.options(sampler))
    if unknown:
        raise ValueError(f"sampler {sampler!r} has no option(s) {sorted(unknown)}; "
                         f"allowed: {', '.join(_samplers.options(sampler)) or 'none'}")
    return fn


# ----------------------------------------------------------------------------- RePaint

def _repaint_path(steps: int, jump_length: int, jump_count: int) -> list[tuple[int, int]]:
    """Index moves (from, to) on the sigma grid. The ``steps`` reverse steps are cut into
    consecutive blocks of ``jump_length`` steps (the last may be shorter); each block is
    walked down ``1 + jump_count`` times, with one upward move (re-noising) from its end
    back to its start between walks."""
    path = []
    for start in range(0, steps, jump_length):
        end = min(start + jump_length, steps)
        for walk in range(jump_count + 1):
            if walk:
                path.append((end, start))
            path.extend((i, i + 1) for i in range(start, end))
    return path


def inpaint(denoiser: Callable, known: Tensor, mask, sigmas, *, generator=None, jump_length: int = 1,
            jump_count: int = 0, step: str = "ancestral", callback: Callable | None = None,
            extra: dict | None = None) -> Tensor:
    """Fill the missing entries of ``known`` (where ``mask`` is 0) with RePaint.

    RePaint (Lugmayr et al. 2022, Algorithm 1), written in the rescaled space. Going down
    the grid ``sigmas`` (decreasing, ending in 0), each step from sigma to sigma_next

    * draws the observed region from the forward process, ``known + sigma_next * z``;
    * moves the whole state with one reverse step of the model and keeps its missing region.
      ``step="ancestral"`` is the DDPM posterior step (Ho et al. 2020; fresh noise, DDIM with
      eta = 1); ``"euler"`` is the deterministic probability-flow step (DDIM, eta = 0).

    Resampling (RePaint section 4.2): the steps are cut into blocks of ``jump_length``
    consecutive steps (RePaint's j); after walking down a block the state is re-noised from
    the block's lowest level back to its highest by adding fresh noise of std
    ``sqrt(sigma_hi^2 - sigma_lo^2)`` (the exact forward transition), and the block is walked
    again. ``jump_count`` is how many times each block is redone (RePaint's r equals
    ``jump_count + 1``); 0 is plain replacement. Denoiser evaluations:
    ``(1 + jump_count) * (len(sigmas) - 1)``.

    ``mask`` is 1 where ``known`` is observed and 0 where it is to be filled; it must contain
    only 0/1 and broadcast to ``known`` (e.g. ``(H, W)``, ``(1, H, W)``, ``(B, C, H, W)``).
    A mask with nothing observed, or with nothing missing, is a ValueError (use
    :func:`undiffuse.sample` for free generation); single samples of a batch may be fully
    observed or fully missing. ``known`` must be finite everywhere (put any value, e.g. 0,
    in the missing entries). The result equals ``known`` exactly where ``mask`` is 1.
    ``generator`` is a torch.Generator or one per sample.
    """
    known = _check_data("known", known)
    mask_op = Mask(mask)
    mask_op.check(known)
    if not mask_op.mask.any():
        raise ValueError("mask observes nothing (all 0): there is nothing to condition on; use undiffuse.sample")
    if mask_op.mask.all():
        raise ValueError("mask observes everything (all 1): there is nothing to fill in")
    sigmas = _schedules.validate(torch.as_tensor(sigmas, dtype=torch.float64)).to(known.device)
    jump_length = _check_int("jump_length", jump_length, 1)
    jump_count = _check_int("jump_count", jump_count, 0)
    if step not in INPAINT_STEPS:
        raise ValueError(f"step must be one of {', '.join(INPAINT_STEPS)}, got {step!r}")
    eta = 1.0 if step == "ancestral" else 0.0
    observed = mask_op.mask.to(known.device).expand(known.shape)
    extra = extra or {}
    with torch.no_grad():
        x = known * observed + sigmas[0].to(known.dtype) * randn_like(known, generator)
        evaluations = 0
        for i, j in _repaint_path(len(sigmas) - 1, jump_length, jump_count):
            s, s_next = sigmas[i].to(known.dtype), sigmas[j].to(known.dtype)
            if j < i:  # re-noise upward: sigma^2 grows by s_next^2 - s^2
                x = x + randn_like(x, generator) * (s_next**2 - s**2).sqrt()
                continue
            den = call(denoiser, x, s, **extra)
            report(callback, evaluations, x, s, s_next, den)  # "i" counts evaluations, jumps included
            evaluations += 1
            down, up = ancestral_split(s, s_next, eta)
            free = den + down * (x - den) / s
            if s_next > 0:
                if up > 0:
                    free = free + up * randn_like(x, generator)
                given = known + s_next * randn_like(x, generator)
            else:
                given = known
            x = torch.where(observed, given, free)
    return x


# ----------------------------------------------------------------------------- SDEdit

def sdedit(denoiser: Callable, image: Tensor, strength: float, *, sampler: str = "euler", steps: int = 50,
           schedule: str | Sequence[float] | Tensor = "karras", sigma_min: float | None = None,
           sigma_max: float | None = None, seed: int | Sequence[int] | None = None, generator=None,
           callback: Callable | None = None, extra: dict | None = None, schedule_options: dict | None = None,
           **options) -> Tensor:
    """SDEdit (Meng et al. 2022): perturb ``image`` with noise and denoise it with any sampler.

    ``strength`` in (0, 1] picks how far up the schedule to go, like diffusers' img2img: the
    full grid of ``steps`` steps is built from ``schedule`` / ``sigma_min`` / ``sigma_max``
    (defaults as in :func:`undiffuse.sample`), and only its last ``n = round(steps *
    strength)`` steps are run, starting at ``sigma_start = sigmas[steps - n]`` from
    ``image + sigma_start * z``. Strength 1 starts at sigma_max (essentially free generation);
    small strengths keep the image nearly unchanged; if ``n`` rounds to 0 the image is
    returned unchanged (a copy). A list of sigmas as ``schedule`` is the full grid (``steps``
    is then its length minus one). ``seed`` gives sample i the generator ``seed + i`` (the same
    sample whatever the batch size); ``options`` go to the sampler.
    """
    if not _is_real(strength) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    image = _check_data("image", image)
    fn = _check_sampler_options(sampler, options)
    full = schedule_of(denoiser, schedule, steps, sigma_min, sigma_max, schedule_options, caller="sdedit")
    full = full.to(image.device)
    total = len(full) - 1
    n = math.floor(total * strength + 0.5)
    if n == 0:
        return image.clone()
    sigmas = full[total - n:]
    gen = _generators(seed, generator, image.shape[0], image.device, draws=len(sigmas))
    with torch.no_grad():
        x = image + sigmas[0].to(image.dtype) * randn_like(image, gen)
        return fn(denoiser, x, sigmas, generator=gen, callback=callback, extra=extra, **options)


# ----------------------------------------------------------------------------- posterior guidance

def _batch_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1).view(-1, *(1,) * (a.dim() - 1))


def _conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, iters: int, rtol: float = 1e-10) -> Tensor:
    """Solve ``M u = b`` per sample for a symmetric positive (semi-)definite M given as a
    function (Hestenes & Stiefel 1952); b must lie in M's range."""
    u, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), _batch_dot(r, r)
    stop = rtol**2 * rr
    for _ in range(iters):
        if (rr <= stop).all():
            break
        mp = apply(p)
        pmp = _batch_dot(p, mp)
        alpha = torch.where(pmp > 0, rr / pmp.clamp(min=torch.finfo(b.dtype).tiny), torch.zeros_like(rr))
        u, r = u + alpha * p, r - alpha * mp
        rr_new = _batch_dot(r, r)
        p = r + torch.where(rr > 0, rr_new / rr.clamp(min=torch.finfo(b.dtype).tiny), torch.zeros_like(rr)) * p
        rr = rr_new
    return u


class PosteriorGuided(WrapsDenoiser):
    """Denoiser of the posterior p(x0 | y) for a measurement ``y = A x0 + noise_std * z``.

    By Tweedie's formula the posterior denoiser is the prior one plus sigma^2 times the
    likelihood score (Chung et al. 2023, eq. 9-10)::

        D'(x, sigma) = D(x, sigma) + sigma^2 * scale * grad_x log p(y | x),

    and p(y | x) is approximated by taking x0 | x ~ N(D(x, sigma), Sigma) so that
    ``y | x ~ N(A D, M)`` with ``M = noise_std^2 I + A Sigma A^T``. Then
    ``grad_x log p(y|x) = J^T A^T M^{-1} (y - A D)`` with J = dD/dx, the vector-Jacobian
    product taken with autograd through the denoiser (gradients are switched on inside even
    under ``torch.no_grad``; the output itself is detached). ``variance`` picks Sigma:

    * ``"pigdm"`` (default; PiGDM, Song et al. 2023): Sigma = v I with
      ``v = sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2)``. Why this is exact for Gaussian
      data x0 ~ N(mu, sigma_data^2 I): then x0 | x is exactly N(D(x), v I), so y | x is
      exactly N(A D(x), noise_std^2 I + v A A^T), a covariance that does not depend on x;
      the gradient above is then the exact likelihood score, and Tweedie's formula applied
      to p(x | y) makes D' = E[x0 | x, y]. Every sampler therefore samples the exact
      posterior, up to its own discretisation error. When ``A A^T = c I`` (mask on its
      observed entries, down-sampling, identity) M is the scalar ``noise_std^2 + c v``
      (``noise_std^2 + v`` for a mask); otherwise M^{-1} is applied by conjugate
      gradients with ``cg_iters`` products A A^T. For correlated data it is an
      approximation (the tests measure its bias).
    * ``"tweedie"`` (TMPD, Boys et al. 2023): Sigma = sigma^2 J, the exact posterior
      covariance (second-order Tweedie), applied through ``cg_iters`` extra vector-Jacobian
      products per call. Exact for every Gaussian prior, correlated or not; assumes J is
      symmetric positive semi-definite (true for an exact denoiser).
    * ``"dps"`` (DPS, Chung et al. 2023, Algorithm 1): M^{-1} replaced by the normalised
      step ``1 / ||y - A D||`` per sample, with ``scale`` as their zeta. Note: here the term is
      weighted by sigma^2 like every score, so the push per step differs from DPS's fixed
      per-step update on its 1000-step DDPM grid; tune ``scale`` (about 0.1-1).

    ``scale`` multiplies the likelihood term (1 = the Bayesian posterior for pigdm/tweedie).
    ``sigma_data`` (the data's std per entry) defaults to the denoiser's own ``sigma_data``
    (EDM preconditioning, :class:`~undiffuse.core.precond.Denoiser`) or else 0.5 (images in [-1, 1]).
    For mask, down-sampling and identity ``y`` is first projected onto the range of A
    (``A A^+ y``): the rest cannot be explained by any x (e.g. unobserved pixels of a mask).
    """

    def __init__(self, denoiser: Callable, operator: Operator, measurement: Tensor, noise_std: float | None = None,
                 *, scale: float = 1.0, variance: str = "pigdm", sigma_data: float | None = None,
                 cg_iters: int = 20):
        if not isinstance(operator, Operator):
            raise ValueError(f"operator must be an undiffuse.steering.degradations.Operator, got {type(operator).__name__}")
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {variance!r}")
        measurement = _check_data("measurement", measurement)
        self.denoiser, self.operator, self.variance = denoiser, operator, variance
        self.noise_std = operator.noise_std if noise_std is None else _check_number("noise_std", noise_std)
        self.scale = _check_number("scale", scale)
        sigma_data = denoiser_info(denoiser).sigma_data if sigma_data is None else sigma_data
        sigma_data = 0.5 if sigma_data is None else sigma_data
        if not _is_real(sigma_data) or not 0 < sigma_data < math.inf:
            raise ValueError(f"sigma_data must be a finite number > 0, got {sigma_data!r}")
        self.sigma_data = float(sigma_data)
        self.cg_iters = _check_int("cg_iters", cg_iters, 1)
        try:
            measurement = operator(operator.pseudo_inverse(measurement))
        except NotImplementedError:
            pass
        self.measurement = measurement

    @property
    def inner(self):
        """The prior denoiser: its range, process and sample shape are this one's (``WrapsDenoiser``)."""
        return self.denoiser

    def __call__(self, x: Tensor, sigma, **extra) -> Tensor:
        y = self.measurement.to(device=x.device, dtype=x.dtype)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"measurement has batch {y.shape[0]} but x has batch {x.shape[0]}")
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s2 = sigma.expand(x.shape[0]).reshape(-1, *(1,) * (x.dim() - 1)) ** 2  # (B, 1, ...)
        s2_y = s2.reshape(-1, *(1,) * (y.dim() - 1))
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            den = self.denoiser(xg, sigma, **extra)
            a_den = self.operator(den)
            residual = (y - a_den).detach()
            weighted = self._inverse_covariance(residual, den, xg, s2_y)
            (grad,) = torch.autograd.grad(a_den, xg, grad_outputs=weighted)  # J^T A^T M^-1 (y - A D)
        return den.detach() + s2 * self.scale * grad

    def _inverse_covariance(self, residual: Tensor, den: Tensor, xg: Tensor, s2: Tensor) -> Tensor:
        """M^{-1} residual for the chosen ``variance`` (see the class docstring)."""
        r2, A = self.noise_std**2, self.operator
        if self.variance == "dps":
            return residual / _batch_dot(residual, residual).sqrt().clamp(min=torch.finfo(residual.dtype).tiny)
        if self.variance == "pigdm":
            v = s2 * self.sigma_data**2 / (s2 + self.sigma_data**2)
            c = A.gram_scale(residual)
            if c is not None:
                return residual / (r2 + c * v)
            return _conjugate_gradient(lambda w: r2 * w + v * A(A.transpose(w)), residual, self.cg_iters)

        def jt(w):  # J^T w, reusing the graph of D
            return torch.autograd.grad(den, xg, grad_outputs=w, retain_graph=True)[0]
        return _conjugate_gradient(lambda w: r2 * w + s2 * A(jt(A.transpose(w))), residual, self.cg_iters)


# ----------------------------------------------------------------------------- entries

def restore(denoiser: Callable, y: Tensor, operator: Operator, noise_std: float | None = None, *,
            sampler: str = "euler", steps: int = 50, schedule: str | Sequence[float] | Tensor = "karras",
            sigma_min: float | None = None, sigma_max: float | None = None, seed: int | Sequence[int] | None = None,
            generator=None, scale: float = 1.0, variance: str = "pigdm", sigma_data: float | None = None,
            cg_iters: int = 20, project: bool = False, callback: Callable | None = None,
            extra: dict | None = None, schedule_options: dict | None = None, **options) -> Tensor:
    """Sample x with ``operator(x) + noise_std * z = y`` from the diffusion prior.

    Runs ``sampler`` (any registered name; ``options`` go to it) from pure noise over
    :class:`PosteriorGuided` (see there for ``scale``, ``variance``, ``sigma_data``,
    ``cg_iters``). ``noise_std`` defaults to the operator's own. The output shape is the
    operator's input shape for ``y``. ``project=True`` finishes with the consistency step
    ``x + A^+ (y - A x)`` so that ``A x = y`` exactly (sensible for noise-free measurements;
    needs an operator with a pseudo-inverse, i.e. not blur).
    """
    if not isinstance(operator, Operator):
        raise ValueError(f"operator must be an undiffuse.steering.degradations.Operator, got {type(operator).__name__}")
    y = _check_data("y", y)
    if project:
        try:
            operator.pseudo_inverse(y)
        except NotImplementedError:
            raise ValueError(f"project=True needs a pseudo-inverse, which operator {operator.name!r} lacks") from None
    fn = _check_sampler_options(sampler, options)
    guided = PosteriorGuided(denoiser, operator, y, noise_std, scale=scale, variance=variance,
                             sigma_data=sigma_data, cg_iters=cg_iters)
    sigmas = schedule_of(denoiser, schedule, steps, sigma_min, sigma_max, schedule_options, caller="restore")
    sigmas = sigmas.to(y.device)
    shape = operator.input_shape(y.shape)
    gen = _generators(seed, generator, shape[0], y.device, draws=len(sigmas))
    with torch.no_grad():
        x = randn_like(torch.empty(shape, dtype=y.dtype, device=y.device), gen) * sigmas[0].to(y.dtype)
        x = fn(guided, x, sigmas, generator=gen, callback=callback, extra=extra, **options)
        if project:
            x = x + operator.pseudo_inverse(guided.measurement - operator(x))
    return x


def upscale(denoiser: Callable, low: Tensor, factor: int, *, noise_std: float = 0.0, project: bool = True,
            **kwargs) -> Tensor:
    """Zero-shot super-resolution: sample x whose ``factor``-average-pooled version is ``low``.

    :func:`restore` with :class:`~undiffuse.steering.degradations.Downsample` (average pooling over
    every spatial axis). By default the result is projected so that pooling it gives ``low``
    exactly; pass ``project=False`` (and ``noise_std`` > 0) for noisy low-resolution inputs.
    Other keyword arguments go to :func:`restore`.
    """
    if not _is_int(factor) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    return restore(denoiser, low, Downsample(factor, noise_std=_check_number("noise_std", noise_std)),
                   project=project, **kwargs)
