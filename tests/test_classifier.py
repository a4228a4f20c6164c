import json
import os
import pickle

import pytest
import torch

from undiffuse import data
from undiffuse.core.analytic import GaussianMixture
from undiffuse.io.checkpoint import CheckpointError
from undiffuse.nets.classifier import ClassifierConfig, NoiseClassifier
from undiffuse.training.classifier import (
    ClassifierGuide,
    accuracy_by_sigma,
    classifier_guided,
    held_out_split,
    load_classifier,
    log_prob_gradient,
    train_classifier,
)

TINY = ClassifierConfig(channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), head_channels=16)


def _guide(seed=0, **kw) -> ClassifierGuide:
    torch.manual_seed(seed)
    net = NoiseClassifier(ClassifierConfig(**{**TINY.__dict__, **kw})).eval()
    return ClassifierGuide(net, sigma_data=0.75)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """A short training run (150 steps, width 16) shared by the tests below."""
    out = str(tmp_path_factory.mktemp("clf") / "digits_clf")
    guide = train_classifier(digits, out, net=TINY, max_steps=150, eval_sigmas=(0.02, 0.1, 5.0), eval_n=540,
                             seed=0, progress=False)
    return out, guide


# ----------------------------------------------------------------------------- network


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_classifier_shapes_any_image_size(pool):
    net = NoiseClassifier(in_channels=3, num_classes=7, channels=16, channel_mult=(1, 2, 2), attention_levels=(1,),
                          head_channels=8, pool=pool)
    for h, w in [(8, 8), (7, 9), (16, 12)]:
        assert net(torch.randn(2, 3, h, w), torch.tensor([-1.0, 0.5])).shape == (2, 7)
    assert net.config_dict()["kind"] == "classifier"
    assert NoiseClassifier(ClassifierConfig(**{k: v for k, v in net.config_dict().items() if k != "kind"}))


def test_classifier_config_errors_name_allowed_values():
    with pytest.raises(ValueError, match="mean, attention"):
        ClassifierConfig(pool="max")
    with pytest.raises(ValueError, match="out of range"):
        ClassifierConfig(channel_mult=(1, 2), attention_levels=(2,))
    with pytest.raises(ValueError, match="images"):
        NoiseClassifier(TINY)(torch.randn(2, 64), torch.zeros(2))


# ----------------------------------------------------------------------------- guide


def test_log_prob_is_normalised_and_gradient_finite_nonzero_under_no_grad():
    guide = _guide()
    x = torch.randn(5, 1, 8, 8)
    sigma = torch.tensor([0.002, 0.1, 1.0, 20.0, 80.0])
    with torch.no_grad():
        lp = guide.log_prob(x, sigma, torch.tensor([0, 1, 2, 3, 4]))
        all_lp = torch.stack([guide.log_prob(x, sigma, k) for k in range(10)], 1)
        grad = guide.grad_log_prob(x, sigma, 3)
    assert lp.shape == (5,) and (lp <= 0).all()
    torch.testing.assert_close(all_lp.logsumexp(1), torch.zeros(5), atol=1e-5, rtol=0)
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    assert (grad.flatten(1).norm(dim=1) > 0).all()
    assert not x.requires_grad
    # sigma = 0 (the end of a sampling schedule) is evaluated at sigma_min, not log(0)
    assert torch.isfinite(guide.grad_log_prob(x, 0.0, 1)).all()


def test_gradient_matches_finite_differences_in_float64():
    guide = _guide(seed=1)
    guide.net.double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    sigma, labels = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64), torch.tensor([2, 5, 9])
    grad = guide.grad_log_prob(x, sigma, labels)
    assert grad.dtype == torch.float64
    v = torch.randn_like(x)
    h = 1e-6
    fd = (guide.log_prob(x + h * v, sigma, labels) - guide.log_prob(x - h * v, sigma, labels)) / (2 * h)
    torch.testing.assert_close((grad * v).flatten(1).sum(1), fd, rtol=1e-6, atol=1e-8)


def test_input_scaling_is_edm_c_in_and_noise_label():
    seen = {}

    class Spy(NoiseClassifier):
        def forward(self, x, noise_label):
            seen["x"], seen["label"] = x, noise_label
            return super().forward(x, noise_label)

    guide = ClassifierGuide(Spy(TINY), sigma_data=0.75)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 3.0])
    guide.log_prob(x, sigma, 0)
    c_in = (sigma**2 + 0.75**2).rsqrt()
    torch.testing.assert_close(seen["x"], c_in[:, None, None, None] * x)
    torch.testing.assert_close(seen["label"], sigma.log() / 4)


def test_bad_labels_are_refused():
    guide = _guide()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="allowed 0..9"):
        guide.log_prob(x, 1.0, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="batch of 2"):
        guide.log_prob(x, 1.0, torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- guidance


def test_scale_zero_returns_the_denoiser_output_exactly():
    gmm = GaussianMixture.random(dim=64, components=3, seed=0)
    calls = []

    def denoiser(x, sigma, **extra):
        calls.append(extra)
        return gmm(x, sigma).to(x.dtype)

    x, sigma = torch.randn(4, 1, 8, 8), torch.full((4,), 2.0)
    guided = classifier_guided(denoiser, _guide(), 3, 0.0)
    assert torch.equal(guided(x, sigma, context="kept"), denoiser(x, sigma))
    assert calls[0] == {"context": "kept"}
    moved = classifier_guided(denoiser, _guide(), 3, 2.0)(x, sigma)
    assert not torch.allclose(moved, denoiser(x, sigma))


def _two_gaussians():
    means = torch.tensor([[1.0, -0.5, 0.3], [-0.8, 0.6, -0.2]], dtype=torch.float64)
    a = torch.tensor([[0.5, 0.1, 0.0], [0.0, 0.3, 0.2], [0.1, 0.0, 0.4]], dtype=torch.float64)
    b = torch.tensor([[0.2, 0.0, 0.1], [0.3, 0.6, 0.0], [0.0, 0.1, 0.25]], dtype=torch.float64)
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    return GaussianMixture(means, torch.stack([a @ a.T, b @ b.T]), weights)


def test_exact_class_posterior_at_scale_one_gives_the_exact_component_denoiser():
    """Bayes + Tweedie: D(x, sigma) + sigma^2 grad log p(y | x, sigma) is the denoiser of
    component y. Validates the wrapper's sigma^2 factor with no trained network."""
    gmm = _two_gaussians()
    parts = [GaussianMixture(gmm.means[k:k + 1], gmm.covs[k:k + 1]) for k in range(2)]

    def log_posterior(x, sigma, labels):  # log responsibility of the component ``labels``
        comp = torch.stack([parts[k].log_prob(x, sigma) for k in range(2)], 1) + gmm.weights.log()
        return (comp - gmm.log_prob(x, sigma)[:, None]).gather(1, labels[:, None].long())[:, 0]

    g = torch.Generator().manual_seed(0)
    n = 12
    sigma = torch.exp(torch.linspace(-3, 3, n, dtype=torch.float64))  # 0.05 .. 20
    x = gmm.sample(n, generator=g) + sigma[:, None] * torch.randn(n, 3, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % 2
    exact = torch.where(labels[:, None] == 0, parts[0].denoise(x, sigma), parts[1].denoise(x, sigma))

    with torch.no_grad():  # as inside a sampler
        guided = classifier_guided(gmm, log_posterior, labels, 1.0)(x, sigma)
        by_hand = gmm(x, sigma) + sigma[:, None] ** 2 * log_prob_gradient(log_posterior, x, sigma, labels)
    torch.testing.assert_close(guided, exact, rtol=0, atol=1e-8)
    torch.testing.assert_close(by_hand, exact, rtol=0, atol=1e-8)
    assert (guided - gmm(x, sigma)).abs().max() > 1e-2  # the correction is not trivially small


# ----------------------------------------------------------------------------- training, save, load


def test_held_out_split_is_fixed_and_disjoint():
    train, held = held_out_split(1797, fraction=0.15, seed=0)
    assert len(held) == round(0.15 * 1797) and len(train) + len(held) == 1797
    assert set(train.tolist()).isdisjoint(held.tolist())
    assert torch.equal(held, held_out_split(1797, fraction=0.15, seed=0)[1])
    assert not torch.equal(held, held_out_split(1797, fraction=0.15, seed=1)[1])


def test_short_training_beats_chance_clearly(trained):
    # measured: 150 steps of this width reach 0.95-0.98 held-out at sigma <= 0.1 over seeds
    # 0-2 (chance is 0.1), in about 6-8 s of one CPU thread
    _, guide = trained
    acc = {r["sigma"]: r["accuracy"] for r in guide.meta["accuracy_by_sigma"]}
    assert acc[0.02] > 0.8 and acc[0.1] > 0.8
    assert acc[5.0] < acc[0.02]  # noise makes it harder, as it must


def test_training_writes_complete_description(trained, digits):
    out, guide = trained
    assert sorted(os.listdir(out)) == ["classifier.json", "model.safetensors"]
    assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith((".tmp-", ".old-"))]
    with open(os.path.join(out, "classifier.json")) as f:
        meta = json.load(f)
    assert meta["config"]["kind"] == "classifier" and meta["config"]["num_classes"] == 10
    assert meta["dataset"]["name"] == "digits" and meta["class_names"] == [str(i) for i in range(10)]
    assert meta["steps"] == 150 and meta["sigma_data"] > 0
    assert meta["split"]["n_held_out"] == 270 and meta["split"]["seed"] == 0
    assert [r["sigma"] for r in meta["accuracy_by_sigma"]] == [0.02, 0.1, 5.0]
    # accuracy_by_sigma re-measures on the recorded held-out split
    again = accuracy_by_sigma(guide, digits, (0.02, 0.1, 5.0), n=540, seed=0)
    assert again == {r["sigma"]: r["accuracy"] for r in meta["accuracy_by_sigma"]}


def test_save_load_round_trip_gives_identical_logits(trained):
    out, guide = trained
    loaded = load_classifier(out)
    x, sigma = torch.randn(6, 1, 8, 8), torch.tensor([0.01, 0.1, 0.5, 2.0, 10.0, 80.0])
    with torch.no_grad():
        assert torch.equal(loaded.logits(x, sigma), guide.logits(x, sigma))
    assert loaded.sigma_data == guide.sigma_data and loaded.class_names == guide.class_names
    assert torch.equal(load_classifier(os.path.join(out, "model.safetensors")).logits(x, sigma).detach(),
                       guide.logits(x, sigma).detach())


class _Tripwire:
    """Unpickling this creates a folder: proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_pickle_renamed_safetensors_is_refused_before_unpickling(trained, tmp_path):
    out, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "classifier.json").write_text(open(os.path.join(out, "classifier.json")).read())
    marker = tmp_path / "was_unpickled"
    (bad / "model.safetensors").write_bytes(pickle.dumps(_Tripwire(str(marker))))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*not a safetensors file.*pickle"):
        load_classifier(str(bad))
    torch.save({"w": torch.zeros(1)}, bad / "model.safetensors")  # torch.save zip archive
    with pytest.raises(CheckpointError, match="zip archive"):
        load_classifier(str(bad))
    assert not marker.exists()


def test_output_folder_rules(trained, digits, tmp_path):
    out, _ = trained
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a classifier folder"):
        train_classifier(digits, str(user), net=TINY, max_steps=1, eval_sigmas=(), progress=False)
    assert (user / "notes.txt").read_text() == "keep me"
    with pytest.raises(CheckpointError, match="missing"):
        load_classifier(str(tmp_path))
    with pytest.raises(ValueError, match="image dataset"):
        train_classifier(data.load("moons", num_points=100), str(tmp_path / "x"), max_steps=1, progress=False)


def test_training_is_deterministic_and_replaces_atomically(digits, tmp_path):
    kw = dict(net=ClassifierConfig(channels=8, channel_mult=(1,), head_channels=8), max_steps=4, batch_size=32,
              eval_sigmas=(), progress=False, ema_halflife_samples=1000, shift=1)
    out = str(tmp_path / "c")
    a = train_classifier(digits, out, seed=3, **kw)
    b = train_classifier(digits, out, seed=3, **kw)  # replaces the earlier folder
    c = train_classifier(digits, str(tmp_path / "d"), seed=4, **kw)
    sa, sb, sc = (m.net.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert sorted(os.listdir(tmp_path)) == ["c", "d"]
    loaded = load_classifier(out).net.state_dict()
    assert all(torch.equal(sa[k], loaded[k]) for k in sa)
    logged = []
    t = train_classifier(digits, out, time_budget=0.5, log=logged.append, log_every=1,
                         **{k: v for k, v in kw.items() if k != "max_steps"})
    assert t.meta["steps"] >= 1 and logged[0]["step"] == 1
