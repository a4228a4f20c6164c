"""Exact denoisers for Gaussian mixtures: the ground truth tests and benchmarks compare against.

For data ``x0 ~ sum_k w_k N(mu_k, C_k)``, the noisy marginal at level sigma is
``sum_k w_k N(mu_k, C_k + sigma^2 I)`` and the ideal denoiser is the posterior mean

    D(x, sigma) = sum_k r_k(x) [mu_k + C_k (C_k + sigma^2 I)^{-1} (x - mu_k)],

with responsibilities ``r_k`` a softmax of the component log-densities. Each covariance is
stored by its eigendecomposition ``C_k = U_k diag(l_k) U_k^T``, so every noise level costs
two small matrix products per component.
"""
from __future__ import annotations

import math

import numpy as np
import torch

Tensor = torch.Tensor


class GaussianMixture:
    """A mixture of full-covariance Gaussians in ``dim`` dimensions (float64 maths).

    A :class:`~undiffuse.core.types.DenoiserLike`: exact at every noise level, so it has no
    sigma range of its own (``sigma_min``/``sigma_max`` are None until set) and no process;
    ``sample_shape`` is ``(dim,)`` (any shape with ``dim`` entries also works).
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if means.dim() != 2 or covs.shape != (means.shape[0], means.shape[1], means.shape[1]):
            raise ValueError(f"means must be (K, d) and covs (K, d, d); got {tuple(means.shape)} and {tuple(covs.shape)}")
        k = means.shape[0]
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights < 0).any():
            raise ValueError("weights must be K non-negative numbers")
        self.means, self.covs = means, covs
        self.weights = weights / weights.sum()
        evals, evecs = torch.linalg.eigh((covs + covs.transpose(1, 2)) / 2)
        self.evals = evals.clamp(min=0)  # (K, d)
        self.evecs = evecs  # (K, d, d), columns are eigenvectors
        self.dim = means.shape[1]
        self.sample_shape: tuple[int, ...] | None = (self.dim,)
        self.sigma_min: float | None = None  # no range of its own: sample(..., sigma_min=, sigma_max=)
        self.sigma_max: float | None = None
        self.process = None  # not tied to a noise process

    @classmethod
    def random(cls, dim: int = 64, components: int = 8, seed: int = 0, spread: float = 2.0,
               scale_range: tuple[float, float] = (0.05, 0.6)) -> "GaussianMixture":
        """A reproducible random mixture with anisotropic covariances."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64) * spread / math.sqrt(dim) * 2
        q, _ = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=torch.float64))
        lo, hi = scale_range
        scales = lo + (hi - lo) * torch.rand(components, dim, generator=g, dtype=torch.float64)
        covs = q @ torch.diag_embed(scales**2) @ q.transpose(1, 2)
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        return cls(means, covs, weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scaled = self.evecs[comp] @ (self.evals[comp].sqrt() * z).unsqueeze(-1)
        return self.means[comp] + scaled.squeeze(-1)

    def _projected(self, x: Tensor) -> Tensor:
        # coordinates of (x - mu_k) in component k's eigenbasis: (B, K, d)
        diff = x.unsqueeze(1) - self.means.unsqueeze(0)
        return torch.einsum("bkd,kde->bke", diff, self.evecs)

    def log_prob(self, x: Tensor, sigma=0.0) -> Tensor:
        """Log-density of the noisy marginal at level ``sigma`` (scalar or per-sample)."""
        x = x.to(torch.float64)
        var = self._noisy_var(sigma, x.shape[0])  # (B, K, d)
        proj = self._projected(x)
        comp = -0.5 * (proj**2 / var).sum(-1) - 0.5 * var.log().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return torch.logsumexp(comp + self.weights.log(), dim=1)

    def _noisy_var(self, sigma, batch: int) -> Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64)
        s = s.reshape(-1, 1, 1) if s.dim() else s
        return (self.evals.unsqueeze(0) + s**2).expand(batch, -1, -1)

    def denoise(self, x: Tensor, sigma) -> Tensor:
        """The exact posterior mean E[x0 | x0 + sigma eps = x] (float64 inside)."""
        dtype = x.dtype
        x = x.to(torch.float64)
        s = torch.as_tensor(sigma)
        shared = self._shared_level(s)  # before the cast: a cast copy of an expanded level loses its zero stride
        if shared is None:
            return self._denoise_per_sample(x, s.to(torch.float64)).to(dtype)
        shared = shared.to(torch.float64)
        # one noise level for the whole batch: fold it into the bases, two matrix products in all.
        # In component k's eigenbasis scaled by 1/sqrt(var) = (l_k + s^2)^-1/2, q = W_k^T (x - mu_k)
        # gives the log-density -|q|^2/2 - log det / 2, and the posterior mean is
        # mu_k + U_k diag(l_k / sqrt(var)) q.
        var = self.evals + shared**2  # (K, d)
        root = var.rsqrt()
        w = self.evecs * root.unsqueeze(1)  # (K, d, e): columns scaled
        v = self.evecs * (self.evals * root).unsqueeze(1)
        k, d = self.evals.shape
        q = (x @ w.permute(1, 0, 2).reshape(d, k * d)).view(-1, k, d) - torch.einsum("kd,kde->ke", self.means, w)
        logp = -0.5 * q.square().sum(-1) - 0.5 * var.log().sum(-1) + self.weights.log()
        resp = torch.softmax(logp, dim=1)  # (B, K)
        post = (resp.unsqueeze(-1) * q).reshape(-1, k * d) @ v.transpose(1, 2).reshape(k * d, d)
        return (resp @ self.means + post).to(dtype)

    @staticmethod
    def _shared_level(s: Tensor):
        """The single noise level of a batch as a 0-dim tensor, or None when levels differ.
        A level expanded from one value (stride 0, as the samplers pass it) keeps its gradient
        path; equal per-sample levels that need separate gradients take the general path."""
        if s.dim() == 0:
            return s
        flat = s.reshape(-1)
        if flat.numel() == 1 or (s.dim() == 1 and s.stride(0) == 0):
            return flat[0]
        if not s.requires_grad and bool((flat == flat[0]).all()):
            return flat[0]
        return None

    def _denoise_per_sample(self, x: Tensor, s: Tensor) -> Tensor:
        var = self._noisy_var(s, x.shape[0])  # (B, K, d)
        proj = self._projected(x)  # (B, K, d)
        logp = -0.5 * (proj**2 / var).sum(-1) - 0.5 * var.log().sum(-1) + self.weights.log()
        resp = torch.softmax(logp, dim=1)  # (B, K)
        shrunk = proj * (self.evals.unsqueeze(0) / var)  # C (C + s^2)^-1 (x - mu) in eigenbasis
        post = self.means.unsqueeze(0) + torch.einsum("bke,kde->bkd", shrunk, self.evecs)
        return (resp.unsqueeze(-1) * post).sum(1)

    def __call__(self, x: Tensor, sigma) -> Tensor:
        """Denoiser interface ``D(x, sigma)`` for flat vectors or any shape with ``dim`` entries."""
        shape = x.shape
        return self.denoise(x.reshape(shape[0], -1), sigma).reshape(shape)


def ode_solution(denoiser, x: Tensor, sigma_max: float, sigma_min: float, *, rtol: float = 1e-10,
                 atol: float = 1e-10, denoise: bool = True) -> tuple[Tensor, int]:
    """Reference probability-flow ODE solve from sigma_max down to sigma_min, in float64 with
    SciPy's DOP853; with ``denoise`` (default) followed by the final jump x = D(x, sigma_min).

    Integrates dx/du = D(x, e^-u) - x in u = -log(sigma), where the ODE is smooth and well scaled.
    Returns the result and the number of denoiser evaluations.
    """
    from scipy.integrate import solve_ivp

    shape = x.shape
    count = [0]

    def f(u, y):
        count[0] += 1
        xs = torch.from_numpy(y).reshape(shape)
        s = torch.full((shape[0],), math.exp(-u), dtype=torch.float64)
        return (denoiser(xs, s).to(torch.float64) - xs).reshape(-1).numpy()

    sol = solve_ivp(f, (-math.log(sigma_max), -math.log(sigma_min)), x.to(torch.float64).reshape(-1).numpy(),
                    method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    end = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape)
    if not denoise:
        return end, count[0]
    out = denoiser(end, torch.full((shape[0],), sigma_min, dtype=torch.float64)).to(torch.float64)
    return out, count[0] + 1
