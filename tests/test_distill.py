"""Consistency models and progressive distillation: the boundary condition, the grids and
losses against hand values, per-sample ODE steps against the registry's samplers, and
students of an exact Gaussian-mixture teacher against the teacher's exact ODE map."""
import math

import pytest
import torch

import undiffuse
from undiffuse import data, samplers
from undiffuse.config import resolve
from undiffuse.core.analytic import GaussianMixture
from undiffuse.core.noise import SeededNoise
from undiffuse.core.precond import PARAMETERIZATIONS, Denoiser
from undiffuse.core.process import VPContinuous
from undiffuse.samplers.driver import sample
from undiffuse.samplers.odestep import check_solver, ode_step
from undiffuse.training import consistency as cm
from undiffuse.training.progressive import ProgressiveObjective, student_grid
from undiffuse.training.trainer import Trainer

SMIN, SMAX = 0.002, 80.0


def _eight():
    a = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    means = torch.stack([a.cos(), a.sin()], 1)
    g = GaussianMixture(means, (0.1**2 * torch.eye(2, dtype=torch.float64)).expand(8, 2, 2).clone())
    g.sigma_min, g.sigma_max = SMIN, SMAX
    return g


def _sq(a, b):
    return float((a.double() - b.double()).pow(2).sum(1).mean())


class _Net(torch.nn.Module):
    def __init__(self, d=3):
        super().__init__()
        self.lin = torch.nn.Linear(d + 1, d)

    def forward(self, x, c_noise):
        return torch.tanh(self.lin(torch.cat([x, c_noise[:, None].to(x.dtype)], 1)))


# --------------------------------------------------------------------------- boundary


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_boundary_condition_is_exact_for_every_parameterization(param):
    torch.manual_seed(0)
    proc = undiffuse.core.process.get("flow") if param == "flow" else VPContinuous()
    b = float(proc.sigma_min) * 1.5
    den = Denoiser(_Net(), proc, param, boundary_sigma=b).double()
    base = Denoiser(den.net, proc, param)
    x = torch.randn(6, 3, dtype=torch.float64) * 4
    assert torch.equal(den(x, torch.full((6,), b, dtype=torch.float64)), x)  # bit for bit
    below = torch.full((6,), b / 2, dtype=torch.float64)
    assert torch.equal(den(x, below), x)
    s = torch.tensor([0.3, 1.0, 2.0, 5.0, 10.0, 40.0], dtype=torch.float64)
    want = x + ((s - b) / s)[:, None] * (base(x, s) - x)
    torch.testing.assert_close(den(x, s), want, rtol=0, atol=1e-12)
    assert float((den(x, s) - base(x, s)).detach().abs().max()) > 0  # the factor does act


# --------------------------------------------------------------------------- grids and losses


def test_grid_is_karras_and_increasing():
    g = cm.grid(18, SMIN, SMAX)
    assert len(g) == 19 and float(g[0]) == pytest.approx(SMIN, rel=1e-12) and float(g[-1]) == pytest.approx(SMAX)
    assert bool((g[1:] > g[:-1]).all())
    root = g ** (1 / 7)
    torch.testing.assert_close(root[1:] - root[:-1], (root[1] - root[0]).expand(18), rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="n >= 1"):
        cm.grid(0, SMIN, SMAX)


def test_curriculum_doubles_in_equal_stages():
    seen = [cm.intervals_at(p / 1000, 10, 1280) for p in range(1001)]
    assert seen[0] == 10 and seen[-1] == 1280
    assert sorted(set(seen)) == [10, 20, 40, 80, 160, 320, 640, 1280]
    assert seen.count(10) == pytest.approx(1001 / 8, abs=2)  # 8 equal stages
    assert cm.intervals_at(0.5, 18, 18) == 18 and cm.intervals_at(0.99, 10, 100) == 80  # 10, 20, 40, 80


def test_interval_probabilities():
    g = cm.grid(40, SMIN, SMAX)
    p = cm.interval_probabilities(g, "lognormal", -1.1, 2.0)
    assert p.shape == (40,) and float(p.sum()) == pytest.approx(1.0) and bool((p >= 0).all())
    # the mass of [g_i, g_i+1] under ln(sigma) ~ N(-1.1, 2^2), renormalised over [g_0, g_40]
    cdf = [0.5 * (1 + math.erf((math.log(float(v)) + 1.1) / (2 * math.sqrt(2)))) for v in g]
    want = torch.tensor([cdf[i + 1] - cdf[i] for i in range(40)], dtype=torch.float64)
    torch.testing.assert_close(p, want / want.sum(), rtol=1e-9, atol=1e-12)
    u = cm.interval_probabilities(g, "uniform")
    torch.testing.assert_close(u, torch.full((40,), 1 / 40, dtype=torch.float64))
    with pytest.raises(ValueError, match="lognormal, uniform"):
        cm.interval_probabilities(g, "beta")


def test_pseudo_huber():
    d = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-4, 0.0]], dtype=torch.float64)
    v = cm.pseudo_huber(d, 0.01)
    assert float(v[0]) == pytest.approx(math.sqrt(25 + 1e-4) - 0.01)  # ~ |d| for large differences
    assert float(v[1]) == 0.0
    assert float(v[2]) == pytest.approx(1e-8 / (2 * 0.01), rel=1e-3)  # ~ |d|^2 / 2c for small ones
    assert cm.default_huber_c(3072) == pytest.approx(0.00054 * math.sqrt(3072))


# --------------------------------------------------------------------------- per-sample ODE steps


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "lms"])
def test_ode_step_matches_the_registry_sampler_per_sample(solver):
    g = _eight()
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    s_from = torch.tensor([3.0, 3.0, 1.0, 0.5, 10.0, 0.2, 0.2], dtype=torch.float64)
    s_to = torch.tensor([1.0, 1.0, 0.5, 0.0, 2.0, 0.1, 0.0], dtype=torch.float64)
    got = ode_step(g, x, s_from, s_to, solver)
    fn = samplers.get(solver)
    for i in range(7):
        want = fn(g, x[i:i + 1], torch.stack([s_from[i], s_to[i]]))
        torch.testing.assert_close(got[i:i + 1], want, rtol=0, atol=1e-12)
    if solver == "heun":  # second order: not the Euler step, except where s_to = 0
        eul = ode_step(g, x, s_from, s_to, "euler")
        assert float((got - eul).abs()[s_to > 0].min()) > 0
        torch.testing.assert_close(got[s_to == 0], eul[s_to == 0], rtol=0, atol=0)


def test_ode_step_refuses_stochastic_solvers():
    for bad in ("ddpm", "euler_ancestral", "consistency", "rk45"):
        with pytest.raises(ValueError, match="allowed: euler"):
            check_solver(bad)
    with pytest.raises(ValueError, match="unknown sampler"):
        check_solver("nope")


# --------------------------------------------------------------------------- consistency sampler


def test_consistency_sampler_one_step_is_one_jump_and_seeds_are_per_sample():
    g = _eight()
    z = undiffuse.noise((6, 2), seed=3, dtype=torch.float64)
    one = sample(g, z, sampler="consistency", steps=1)
    torch.testing.assert_close(one, g(z * SMAX, torch.full((6,), SMAX, dtype=torch.float64)), rtol=0, atol=0)
    sig = [SMAX, 0.5, 0.0]
    two = sample(g, z, sampler="consistency", sigmas=sig, seed=10)
    part = sample(g, z[2:4], sampler="consistency", sigmas=sig, seed=[12, 13])
    torch.testing.assert_close(two[2:4], part, rtol=0, atol=0)
    # the second jump starts from the first estimate plus fresh noise of std sqrt(0.5^2 - b^2)
    calls = []

    def spy(x, s):
        calls.append((x.clone(), s.clone()))
        return g(x, s)

    spy.boundary_sigma = 0.3
    sample(spy, z, sampler="consistency", sigmas=sig, seed=10)
    first = g(z * SMAX, torch.full((6,), SMAX, dtype=torch.float64))
    fresh = SeededNoise(list(range(10, 16)), draws=len(sig) - 1).like(first)  # sample i's own stream (seed 10 + i)
    torch.testing.assert_close(calls[1][0], first + fresh * math.sqrt(0.5**2 - 0.3**2), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- students of an exact teacher


def _toy_trainer(tmp_path, ds, overrides, objective, name):
    cfg = resolve("toy", ds, {"train.tensorboard": False, "train.sample_count": 1, "model.width": 128,
                              "optim.warmup_steps": 50, "optim.batch_size": 256, "ema.halflife_samples": 20_000,
                              **overrides})
    return Trainer(cfg, ds, str(tmp_path / name), progress=False, log=lambda m: None, objective=objective)


@pytest.fixture(scope="module")
def eight_data():
    g = _eight()
    x = g.sample(4000, generator=torch.Generator().manual_seed(0)).float()
    ds = data.Dataset(name="eight", kind="vector", shape=(2,), labels=None, class_names=[], source="test", storage=x)
    z = undiffuse.noise((512, 2), seed=10_000_000, dtype=torch.float64)
    ref = sample(g, z, sampler="heun", steps=200)  # the teacher's ODE map, converged
    return g, ds, z, ref


@pytest.mark.slow
def test_progressive_round_beats_the_plain_two_step_sampler(tmp_path, eight_data):
    """One round on the exact teacher (4 Euler = DDIM steps): a 2-step student, trained from
    scratch for 800 steps, reproduces the teacher's 4-step output far better than Euler with
    the exact denoiser on the student's 2 steps, and so is also closer to the exact ODE map.
    Measured (seed 0): squared distance to the teacher's 4-step output: plain 2-step 5.7e-4,
    student 2.2e-5; to the exact ODE map: plain 0.116, teacher 0.1025, student 0.1024."""
    g, ds, z, ref = eight_data
    fine = undiffuse.core.schedules.get_sigmas("karras", 4, sigma_min=SMIN, sigma_max=SMAX)
    obj = ProgressiveObjective(g, fine, "euler")
    t = _toy_trainer(tmp_path, ds, {"train.max_steps": 800, "optim.lr": 2e-3}, obj, "pd")
    t.fit()
    student = Denoiser(t.ema, t.denoiser.process, t.denoiser.parameterization, sigma_data=t.denoiser.sigma_data)
    two = student_grid(fine.tolist())
    out = {"plain": sample(g, z, sampler="euler", sigmas=two), "teacher": sample(g, z, sampler="euler", sigmas=fine),
           "student": sample(student, z.float(), sampler="euler", sigmas=two)}
    to_teacher = {k: _sq(v, out["teacher"]) for k, v in out.items() if k != "teacher"}
    to_ode = {k: _sq(v, ref) for k, v in out.items()}
    print("squared distance to the teacher's 4-step output", to_teacher, "to the exact ODE map", to_ode)
    assert to_teacher["student"] < 0.1 * to_teacher["plain"]
    assert to_ode["student"] < to_ode["plain"] - 0.5 * (to_ode["plain"] - to_ode["teacher"])


@pytest.mark.slow
def test_consistency_distillation_of_the_exact_teacher(tmp_path, eight_data):
    """An MLP consistency model distilled from the exact teacher (Heun steps on an 18-interval
    grid, from scratch): its one-step samples are near the exact ODE map, which one step of the
    exact denoiser (the mixture's mean, up to 2e-4) is not.
    Measured (seed 0): squared error one-step exact denoiser 1.003, student 0.017."""
    g, ds, z, ref = eight_data
    ov = {"train.max_steps": 1000, "optim.lr": 2e-3, "diffusion.boundary_sigma": SMIN, "objective.kind": "consistency",
          "objective.steps_start": 18, "objective.steps_end": 18}
    cfg_probe = resolve("toy", ds, ov)
    obj = cm.ConsistencyObjective(cfg_probe.objective, teacher=g)
    t = _toy_trainer(tmp_path, ds, ov, obj, "cd")
    t.fit()
    student = Denoiser(t.ema, t.denoiser.process, t.denoiser.parameterization, sigma_data=t.denoiser.sigma_data,
                       boundary_sigma=SMIN)
    err = {"exact one step": _sq(sample(g, z, sampler="consistency", steps=1), ref),
           "student": _sq(sample(student, z.float(), sampler="consistency", steps=1), ref)}
    print("squared error against the exact ODE map", err)
    assert err["student"] < 0.2 * err["exact one step"]


@pytest.mark.slow
def test_consistency_training_from_data_alone(tmp_path, eight_data):
    """No teacher: the MLP learns from data with the iCT curriculum (10 -> 160 intervals).
    Its one-step samples land near the mixture's modes, where one step of the exact
    denoiser (the mixture's mean) does not. Measured (seed 0, 700 steps): mean distance to the
    nearest mode: exact one step 0.99, student 0.25 (0.24 after 1,500 steps); student samples
    within 0.3 of a mode: 68%."""
    g, ds, z, ref = eight_data
    ov = {"train.max_steps": 700, "optim.lr": 2e-3, "diffusion.boundary_sigma": SMIN,
          "objective.kind": "consistency", "objective.steps_start": 10, "objective.steps_end": 160,
          "sample.sampler": "consistency", "sample.steps": 1}
    t = _toy_trainer(tmp_path, ds, ov, None, "ct")
    assert isinstance(t.objective, cm.ConsistencyObjective) and t.objective.teacher is None
    t.fit()
    student = Denoiser(t.ema, t.denoiser.process, t.denoiser.parameterization, sigma_data=t.denoiser.sigma_data,
                       boundary_sigma=SMIN)

    def gap(x):
        return torch.cdist(x.double(), g.means).min(1).values

    exact, learnt = gap(sample(g, z, sampler="consistency", steps=1)), gap(sample(student, z.float(), sampler="consistency", steps=1))
    print("distance to the nearest mode: exact one step", float(exact.mean()), "student", float(learnt.mean()),
          "share within 0.3:", float((learnt < 0.3).double().mean()))
    assert float(learnt.mean()) < 0.5 * float(exact.mean())


# --------------------------------------------------------------------------- training a student on


def test_consistency_student_started_from_another_student(tmp_path):
    """``init``: the new student starts from the given student's network and EMA (not the
    teacher's), takes the new recipe, and counts its own steps; a run that is not a
    consistency student is refused."""
    from _cli import TINY

    from undiffuse.cli import main
    from undiffuse.fewstep.distill import consistency_distill
    from undiffuse.io import checkpoint as ckpt

    teacher, first, second = (str(tmp_path / n) for n in ("teacher", "first", "second"))
    assert main(["train", "--data", "digits", "--max-steps", "2", "--out", teacher, *TINY]) == 0
    quiet = dict(progress=False, log=lambda m: None)
    consistency_distill(teacher, first, max_steps=2, steps=6, **quiet)
    # lr ~0 and an EMA that hardly moves: the second student's weights stay the first's
    consistency_distill(teacher, second, max_steps=1, steps=6, lr=1e-30, init=first,
                        overrides={"objective.index_sampling": "uniform", "ema.rampup": 0,
                                   "ema.halflife_samples": 1e12}, **quiet)
    a, b, t = ckpt.load_checkpoint(first), ckpt.load_checkpoint(second), ckpt.load_checkpoint(teacher)
    assert b["state_json"]["step"] == 1 and b["state_json"]["config"]["objective"]["index_sampling"] == "uniform"
    for key in ("model", "ema"):
        for name, v in a[key].items():
            torch.testing.assert_close(b[key][name], v, rtol=0, atol=1e-6)
    assert any(not torch.equal(a["ema"][k], t["ema"][k]) for k in a["ema"])  # the first student did move
    with pytest.raises(ValueError, match="not a consistency student"):
        consistency_distill(teacher, str(tmp_path / "third"), max_steps=1, init=teacher, **quiet)
