"""The reflow recipe's training options (Lee et al. 2024): the U-shaped noise-level density
against its closed-form CDF, the pseudo-Huber distance against its formula, their config
validation, and that the trainer passes them on."""
import math

import pytest
import torch
from test_losses import Const  # a network that outputs one constant

from undiffuse.config import RunConfig, resolve, validate
from undiffuse.core import process
from undiffuse.core.losses import denoising_loss, sample_sigma, u_shaped
from undiffuse.core.precond import Denoiser
from undiffuse.fewstep import reflow as rf
from undiffuse.training import trainer as train_mod
from undiffuse.training.trainer import Trainer


def _cdf(u, a):
    return (math.sinh(a * (u - 0.5)) + math.sinh(a / 2)) / (2 * math.sinh(a / 2))


@pytest.mark.parametrize("a", [0.5, 4.0, 10.0])
def test_u_shaped_matches_its_cdf(a):
    r = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u_shaped(r, a)
    assert 0 <= float(u.min()) and float(u.max()) <= 1
    for q in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95):  # empirical vs exact CDF (sd of the estimate ~0.0011)
        assert abs(float((u <= q).double().mean()) - _cdf(q, a)) < 0.005, q
    # U-shaped: with a = 4 the outer fifths hold far more than the middle fifth
    if a == 4.0:
        ends = float(((u < 0.2) | (u > 0.8)).double().mean())
        middle = float(((u > 0.4) & (u < 0.6)).double().mean())
        assert ends > 4 * middle


def test_u_shaped_sigmas_span_the_flow_range_and_need_positive_a():
    flow = process.get("flow")
    g = torch.Generator().manual_seed(1)
    t = flow.t(sample_sigma("u_shaped", 50_000, flow, g, u_a=4.0))
    assert float(t.min()) >= flow.t_min - 1e-9 and float(t.max()) <= flow.t_max + 1e-9
    assert float((t > 0.95).double().mean()) > 0.08  # 1 - F(0.95) = 0.094; lognormal(-1.2, 1.2): 0.7%
    assert abs(float(t.mean()) - 0.5) < 0.01  # symmetric
    vp = process.get("vp")  # the discrete table: timesteps of the table, still U-shaped
    s = sample_sigma("u_shaped", 20_000, vp, g)
    assert set(s.unique().tolist()) <= set(vp.sigmas.tolist())
    with pytest.raises(ValueError, match="a must be > 0"):
        sample_sigma("u_shaped", 3, flow, g, u_a=0.0)


def test_uniform_t_draws_are_unchanged_by_the_new_option():
    vp = process.get("vp")  # integer timesteps come from randint alone, as before u_shaped existed
    a = sample_sigma("uniform_t", 100, vp, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, len(vp.sigmas[torch.isfinite(vp.sigmas)]), (100,), generator=g)
    torch.testing.assert_close(a, vp.sigmas[torch.isfinite(vp.sigmas)][idx])


def test_pseudo_huber_distance_matches_its_formula():
    flow = process.get("flow")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    sigma = sample_sigma("uniform_t", 16, flow, g)
    den = Denoiser(Const(0.3), flow, "flow")
    sq = (0.3 - (eps - x0)).pow(2).sum(1)  # flow: F_target = eps - x0, uniform weighting = 1
    torch.testing.assert_close(denoising_loss(den, x0, sigma, eps), sq / 8)
    c = 0.00054 * math.sqrt(8)
    torch.testing.assert_close(denoising_loss(den, x0, sigma, eps, distance="pseudo_huber"),
                               (sq + c * c).sqrt() - c)
    torch.testing.assert_close(denoising_loss(den, x0, sigma, eps, distance="pseudo_huber", huber_c=2.0),
                               (sq + 4.0).sqrt() - 2.0)
    exact = Denoiser(Const(0.0), flow, "flow")  # zero error: zero loss
    zero = torch.zeros(4, 8)
    assert float(denoising_loss(exact, zero, torch.ones(4), zero, distance="pseudo_huber").abs().max()) < 1e-7
    with pytest.raises(ValueError, match="allowed: l2, pseudo_huber"):
        denoising_loss(den, x0, sigma, eps, distance="huber")
    with pytest.raises(ValueError, match="huber_c must be > 0"):
        denoising_loss(den, x0, sigma, eps, distance="pseudo_huber", huber_c=0.0)


@pytest.mark.parametrize("key,value,message", [
    ("noise_sampling", "ushape", "diffusion.noise_sampling 'ushape' is not allowed; allowed: uniform_t, lognormal, "
                                 "u_shaped, sigma_max"),
    ("distance", "l1", "diffusion.distance 'l1' is not allowed; allowed: l2, pseudo_huber"),
    ("u_a", 0.0, "diffusion.u_a must be > 0"),
    ("u_a", -2.0, "diffusion.u_a must be > 0"),
    ("huber_c", 0.0, "diffusion.huber_c must be > 0"),
])
def test_config_rejects_bad_recipe_options(key, value, message):
    d = RunConfig().to_dict()
    d["model"] = {"kind": "mlp", "dim": 2}
    d["train"]["max_steps"] = 1
    d["diffusion"][key] = value
    with pytest.raises(ValueError, match=message):
        validate(RunConfig.from_dict(d))


def test_old_configs_without_the_options_load_with_the_defaults():
    d = RunConfig().to_dict()
    d["model"] = {"kind": "mlp", "dim": 2}
    d["train"]["max_steps"] = 1
    for key in ("u_a", "distance", "huber_c"):
        del d["diffusion"][key]
    cfg = RunConfig.from_dict(d)
    assert (cfg.diffusion.u_a, cfg.diffusion.distance, cfg.diffusion.huber_c) == (4.0, "l2", None)


def test_trainer_passes_the_recipe_options_on(tmp_path, monkeypatch):
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    ds = rf.PairedDataset(x0, z)
    seen = []
    real_loss, real_sigma = train_mod.denoising_loss, train_mod.sample_sigma

    def loss_spy(denoiser, x, sigma, eps, **kw):
        seen.append(("loss", kw["distance"], kw["huber_c"]))
        return real_loss(denoiser, x, sigma, eps, **kw)

    def sigma_spy(kind, n, proc, gen, **kw):
        seen.append(("sigma", kind, kw["u_a"]))
        return real_sigma(kind, n, proc, gen, **kw)

    monkeypatch.setattr(train_mod, "denoising_loss", loss_spy)
    monkeypatch.setattr(train_mod, "sample_sigma", sigma_spy)
    cfg = resolve("toy", ds, {"diffusion.process": {"name": "flow"}, "diffusion.parameterization": "flow",
                              "diffusion.noise_sampling": "u_shaped", "diffusion.u_a": 6.0,
                              "diffusion.distance": "pseudo_huber", "diffusion.huber_c": 0.01,
                              "train.max_steps": 2, "optim.batch_size": 16, "model.width": 16,
                              "train.sample_count": 1, "train.tensorboard": False})
    Trainer(cfg, ds, str(tmp_path / "r"), progress=False, log=lambda m: None).fit()
    assert seen == [("sigma", "u_shaped", 6.0), ("loss", "pseudo_huber", 0.01)] * 2


# --------------------------------------------------------------------------- couplings file


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from undiffuse import data

    ds = data.load("eight_gaussians", num_points=256)
    run = str(tmp_path_factory.mktemp("recipe") / "teacher")
    cfg = resolve("toy", ds, {"diffusion.process": {"name": "flow"}, "diffusion.parameterization": "flow",
                              "train.max_steps": 3, "optim.batch_size": 16, "model.width": 16,
                              "train.sample_count": 1, "train.tensorboard": False})
    Trainer(cfg, ds, run, progress=False, log=lambda m: None).fit()
    return run


def test_couplings_file_is_written_then_reused(tmp_path, tiny_teacher, monkeypatch):
    path = str(tmp_path / "pairs.safetensors")
    seen = []

    class Spy(rf.PairedDataset):
        def __init__(self, x0, z, **kw):
            seen.append((x0.clone(), z.clone()))
            super().__init__(x0, z, **kw)

    monkeypatch.setattr(rf, "PairedDataset", Spy)
    quiet = dict(max_steps=0, steps=3, sampler="euler", log=lambda m: None)
    rf.reflow(tiny_teacher, str(tmp_path / "a"), n=24, couplings_file=path, **quiet)
    z, x0, meta = rf.load_couplings(path)
    assert z.shape == (24, 2) and meta["n"] == 24 and meta["sampler"] == "euler" and meta["steps"] == 3
    torch.testing.assert_close(seen[0][0], x0, rtol=0, atol=0)
    draws = []
    real = rf.couplings
    monkeypatch.setattr(rf, "couplings", lambda *a, **k: draws.append(1) or real(*a, **k))
    rf.reflow(tiny_teacher, str(tmp_path / "b"), n=10, couplings_file=path, **quiet)  # read, not drawn
    assert draws == []
    torch.testing.assert_close(seen[1][1], z[:10], rtol=0, atol=0)
    fresh = rf.reflow  # the first 10 of the file are exactly a fresh draw of 10
    fresh(tiny_teacher, str(tmp_path / "c"), n=10, **quiet)
    assert draws == [1]
    torch.testing.assert_close(seen[2][0], seen[1][0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="holds 24 pairs, fewer than the 30"):
        rf.reflow(tiny_teacher, str(tmp_path / "d"), n=30, couplings_file=path, **quiet)
    with pytest.raises(ValueError, match="drawn differently: seed 0 there, 5 here"):
        rf.reflow(tiny_teacher, str(tmp_path / "e"), n=10, seed=5, couplings_file=path, **quiet)
    with pytest.raises(ValueError, match="drawn differently: steps 3 there, 4 here"):
        rf.reflow(tiny_teacher, str(tmp_path / "f"), n=10, couplings_file=path, **{**quiet, "steps": 4})


def test_a_file_that_is_not_couplings_is_refused(tmp_path):
    from undiffuse.io.checkpoint import CheckpointError, save_tensors

    path = str(tmp_path / "w.safetensors")
    save_tensors(path, {"weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="not a couplings file"):
        rf.load_couplings(path)
    with pytest.raises(ValueError, match="same shape"):
        rf.save_couplings(path, torch.zeros(3, 2), torch.zeros(4, 2), {})


def test_sigma_max_sampling_is_the_one_step_level():
    flow = process.get("flow")
    s = sample_sigma("sigma_max", 5, flow, torch.Generator().manual_seed(0))
    torch.testing.assert_close(s, torch.full((5,), flow.sigma_max, dtype=torch.float64))


def test_reflow_starts_from_another_run_and_refuses_a_bad_init(tmp_path, tiny_teacher):
    from undiffuse.inference.generate import load_run

    quiet = dict(n=8, steps=2, sampler="euler", log=lambda m: None)
    first = str(tmp_path / "first")
    rf.reflow(tiny_teacher, first, max_steps=2, **quiet)  # trained away from the teacher
    second = str(tmp_path / "second")
    rf.reflow(tiny_teacher, second, max_steps=0, init=first,
              overrides={"diffusion.noise_sampling": "sigma_max"}, **quiet)
    a, b, t = load_run(first).denoiser.net, load_run(second).denoiser.net, load_run(tiny_teacher).denoiser.net
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)
    assert any(not torch.equal(v, t.state_dict()[k]) for k, v in a.state_dict().items())
    assert load_run(second).config.diffusion.noise_sampling == "sigma_max"
    with pytest.raises(ValueError, match="init must be 'ema', 'none' or a run folder"):
        rf.reflow(tiny_teacher, str(tmp_path / "x"), max_steps=0, init=str(tmp_path / "missing"), **quiet)
    narrow = str(tmp_path / "narrow")
    rf.reflow(tiny_teacher, narrow, max_steps=0, init="none", overrides={"model.width": 8}, **quiet)
    with pytest.raises(ValueError, match="another network"):
        rf.reflow(tiny_teacher, str(tmp_path / "y"), max_steps=0, init=narrow, **quiet)


def test_distill_reflow_couplings_file_and_init_from_the_command_line(tmp_path, tiny_teacher, capsys):
    from undiffuse.cli import main

    pairs = str(tmp_path / "pairs.safetensors")
    common = ["distill", "--method", "reflow", "--teacher", tiny_teacher, "--couplings", "16", "--sampler", "euler",
              "--steps", "2", "--couplings-file", pairs, "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a"), "--max-steps", "1"]) == 0
    assert rf.load_couplings(pairs)[2]["n"] == 16
    assert main([*common, "--out", str(tmp_path / "b"), "--max-steps", "1", "--init", str(tmp_path / "a"),
                 "--set", "diffusion.noise_sampling=sigma_max"]) == 0
    capsys.readouterr()

    def code(args):
        try:
            return main(args)
        except SystemExit as e:
            return e.code

    assert code([*common, "--out", str(tmp_path / "c"), "--init", str(tmp_path / "nothing")]) == 2
    assert "--init" in capsys.readouterr().err
    assert code(["distill", "--method", "consistency", "--teacher", tiny_teacher, "--out", str(tmp_path / "d"),
                 "--couplings-file", pairs]) == 2
    assert "--couplings-file is for --method reflow" in capsys.readouterr().err
    assert code([*common, "--out", str(tmp_path / "e"), "--seed", "3"]) == 2  # drawn with seed 0
    assert "drawn differently" in capsys.readouterr().err
    # a folder that is not a run, a file that is not a couplings file: the option named, not --teacher
    (tmp_path / "empty").mkdir()
    assert code([*common, "--out", str(tmp_path / "f"), "--max-steps", "1", "--init", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "--init '" in err and "--teacher" not in err.splitlines()[-1], err
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not safetensors")
    before = bogus.read_bytes()
    args = [a if a != pairs else str(bogus) for a in common]
    assert code([*args, "--out", str(tmp_path / "g"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("undiffuse distill: error: --couplings-file: "), err
    assert bogus.read_bytes() == before  # the file is left as it was
