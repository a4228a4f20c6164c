"""Guidance wrappers against exact Gaussian-mixture denoisers.

The class of a sample is its mixture component, so the exact conditional denoiser is that
component's denoiser, the exact unconditional one is the mixture's, and the exact class
posterior ``p(y | x, sigma)`` is the component responsibility.
"""
import pytest
import torch

import undiffuse
from undiffuse.core.analytic import GaussianMixture
from undiffuse.steering.guidance import Autoguidance, ClassifierFree, ClassifierGuidance, Experts

DIM = 4


def _mixture(seed=0, widen=1.0):
    g = GaussianMixture.random(dim=DIM, components=3, seed=seed, spread=4.0)
    return GaussianMixture(g.means, g.covs * widen, g.weights)


class ClassDenoiser:
    """Exact D(x, sigma, class_labels): the component's denoiser, the mixture's for -1."""

    def __init__(self, mix: GaussianMixture):
        self.mix = mix
        self.parts = [GaussianMixture(mix.means[k:k + 1], mix.covs[k:k + 1]) for k in range(len(mix.weights))]
        self.calls = []
        self.sigma_min, self.sigma_max = 0.002, 80.0

    def __call__(self, x, sigma, class_labels=None):
        self.calls.append(x.shape[0])
        labels = torch.as_tensor(-1 if class_labels is None else class_labels).reshape(-1).expand(x.shape[0])
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        out = self.mix(x, sigma)
        for k, part in enumerate(self.parts):
            rows = labels == k
            if rows.any():
                out[rows] = part(x[rows], sigma[rows])
        return out


def _batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64) * 2
    sigma = torch.tensor([0.05, 0.3, 1.0, 2.0, 5.0, 20.0], dtype=torch.float64)[:n]
    labels = torch.arange(n) % 3
    return x, sigma, labels


def test_cfg_scale_one_is_conditional_and_zero_unconditional_exactly():
    den = ClassDenoiser(_mixture())
    x, sigma, labels = _batch()
    d_c = den(x, sigma, class_labels=labels)
    d_u = den(x, sigma)
    den.calls.clear()
    assert torch.equal(ClassifierFree(den, 1.0)(x, sigma, class_labels=labels), d_c)
    assert torch.equal(ClassifierFree(den, 0.0)(x, sigma, class_labels=labels), d_u)
    assert den.calls == [6, 6]  # one network call each, not two


@pytest.mark.parametrize("batched", [True, False])
def test_cfg_formula(batched):
    den = ClassDenoiser(_mixture())
    x, sigma, labels = _batch()
    d_c, d_u = den(x, sigma, class_labels=labels), den(x, sigma)
    den.calls.clear()
    out = ClassifierFree(den, 3.0, batched=batched)(x, sigma, class_labels=labels)
    torch.testing.assert_close(out, d_u + 3.0 * (d_c - d_u), rtol=1e-12, atol=1e-12)
    assert den.calls == ([12] if batched else [6, 6])


def test_cfg_interval_guides_only_inside():
    den = ClassDenoiser(_mixture())
    x, sigma, labels = _batch()
    d_c, d_u = den(x, sigma, class_labels=labels), den(x, sigma)
    out = ClassifierFree(den, 2.5, interval=(0.25, 3.0))(x, sigma, class_labels=labels)
    inside = (sigma >= 0.25) & (sigma <= 3.0)
    torch.testing.assert_close(out[inside], (d_u + 2.5 * (d_c - d_u))[inside])
    assert torch.equal(out[~inside], d_c[~inside])
    with pytest.raises(ValueError, match="interval"):
        ClassifierFree(den, 2.0, interval=(3.0, 1.0))


def test_cfg_negative_condition_replaces_unconditional_branch():
    den = ClassDenoiser(_mixture())
    x, sigma, labels = _batch()
    neg = torch.full((6,), 2)
    out = ClassifierFree(den, 2.0, uncond={"class_labels": neg})(x, sigma, class_labels=labels)
    d_c, d_n = den(x, sigma, class_labels=labels), den(x, sigma, class_labels=neg)
    torch.testing.assert_close(out, d_n + 2.0 * (d_c - d_n))


def test_autoguidance_formula_and_exact_ends():
    main, weak = ClassDenoiser(_mixture()), ClassDenoiser(_mixture(widen=2.0))
    x, sigma, labels = _batch()
    d_m, d_w = main(x, sigma, class_labels=labels), weak(x, sigma, class_labels=labels)
    assert torch.equal(Autoguidance(main, weak, 1.0)(x, sigma, class_labels=labels), d_m)
    assert torch.equal(Autoguidance(main, weak, 0.0)(x, sigma, class_labels=labels), d_w)
    torch.testing.assert_close(Autoguidance(main, weak, 2.0)(x, sigma, class_labels=labels), d_w + 2 * (d_m - d_w))


def test_experts_split_a_batch_by_noise_level_with_its_conditions():
    """Each row goes to the expert of its noise level, with its own class; a batch all on one
    side makes one call to that expert alone."""
    low, high = ClassDenoiser(_mixture()), ClassDenoiser(_mixture(seed=3))
    x, sigma, labels = _batch()  # sigmas 0.05 ... 20
    both = Experts(low, high, above=1.0)
    out = both(x, sigma, class_labels=labels)
    up = sigma > 1.0
    torch.testing.assert_close(out[up], high(x[up], sigma[up], class_labels=labels[up]))
    torch.testing.assert_close(out[~up], low(x[~up], sigma[~up], class_labels=labels[~up]))
    low.calls.clear(), high.calls.clear()
    both(x[:2], torch.tensor(0.3, dtype=torch.float64), class_labels=labels[:2])
    assert low.calls == [2] and high.calls == []
    with pytest.raises(ValueError, match="hand-off noise level must be a positive number, got 0"):
        Experts(low, high, above=0)


def test_sampling_with_identical_experts_is_sampling_with_one():
    den = ClassDenoiser(_mixture())
    z = undiffuse.noise((8, DIM), seed=0).double()
    extra = {"class_labels": torch.arange(8) % 3}
    one = undiffuse.sample(den, z, sampler="heun", steps=6, extra=extra)
    two = undiffuse.sample(Experts(den, ClassDenoiser(_mixture()), above=1.5), z, sampler="heun", steps=6, extra=extra)
    torch.testing.assert_close(two, one)


def _log_responsibility(mix: GaussianMixture):
    parts = [GaussianMixture(mix.means[k:k + 1], mix.covs[k:k + 1]) for k in range(len(mix.weights))]

    def log_prob(x, sigma, labels):
        comp = torch.stack([p.log_prob(x, sigma) for p in parts], 1) + mix.weights.log()
        return (comp - torch.logsumexp(comp, 1, keepdim=True)).gather(1, labels.long().reshape(-1, 1))[:, 0]

    return log_prob


def test_classifier_guidance_with_exact_posterior_gives_the_class_denoiser():
    """D + sigma^2 grad log p(y|x) = E[x0 | x, y]: checks the sigma^2 factor exactly."""
    mix = _mixture()
    den = ClassDenoiser(mix)
    x, sigma, labels = _batch()
    guided = ClassifierGuidance(lambda x, s: mix(x, s), _log_responsibility(mix), 1.0)
    with torch.no_grad():  # the gradient must be taken anyway
        out = guided(x, sigma, class_labels=labels)
    torch.testing.assert_close(out, den(x, sigma, class_labels=labels), rtol=1e-8, atol=1e-8)
    assert torch.equal(ClassifierGuidance(lambda x, s: mix(x, s), _log_responsibility(mix), 0.0)(
        x, sigma, class_labels=labels), mix(x, sigma))


def test_guided_sampling_scale_one_equals_conditional_sampling():
    den = ClassDenoiser(_mixture())
    z = undiffuse.noise((8, DIM), seed=3, dtype=torch.float64)
    labels = torch.arange(8) % 3
    kw = dict(sampler="dpmpp_2m", steps=8, sigma_min=0.01, sigma_max=40.0)
    a = undiffuse.sample(ClassifierFree(den, 1.0), z, extra={"class_labels": labels}, **kw)
    b = undiffuse.sample(den, z, extra={"class_labels": labels}, **kw)
    assert torch.equal(a, b)
    # On overlapping classes, stronger guidance raises the exact class posterior of the
    # samples (a measurable effect that fails if the guidance direction is wrong).
    mix = GaussianMixture.random(dim=DIM, components=3, seed=0, spread=1.0, scale_range=(0.6, 1.2))
    over = ClassDenoiser(mix)
    z = undiffuse.noise((300, DIM), seed=3, dtype=torch.float64)
    labels = torch.arange(300) % 3
    post = _log_responsibility(mix)
    scores = [post(undiffuse.sample(ClassifierFree(over, w), z, extra={"class_labels": labels}, **kw),
                   0.0, labels).exp().mean() for w in (0.0, 1.0, 3.0)]
    assert scores[0] < scores[1] - 0.05 and scores[1] < scores[2] - 0.02, scores


def test_wrappers_forward_sampler_attributes_and_validate_scale():
    den = ClassDenoiser(_mixture())
    assert ClassifierFree(den, 2.0).sigma_max == 80.0
    with pytest.raises(ValueError, match="finite"):
        ClassifierFree(den, float("nan"))
