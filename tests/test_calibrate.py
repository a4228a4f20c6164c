"""Calibrated step positions and solver weights, validated on noise they were not fitted on."""
import pytest
import torch

import undiffuse
from undiffuse import samplers
from undiffuse.core import schedules
from undiffuse.core.analytic import GaussianMixture
from undiffuse.fewstep.calibrate import Calibration, calibrate


@pytest.fixture(scope="module")
def gm():
    return GaussianMixture.random(dim=8, components=4, seed=4, scale_range=(0.1, 0.6))


@pytest.mark.parametrize("order, ref", [(1, "euler"), (2, "dpmpp_2m"), (3, "dpmpp_3m_taylor")])
def test_calibrated_solver_without_offsets_is_dpm_solver(gm, order, ref):
    x = undiffuse.noise((4, 8), seed=0, dtype=torch.float64) * 20
    sig = schedules.get_sigmas("logsnr", 7, sigma_min=0.02, sigma_max=20.0)
    out = samplers.get("calibrated")(gm, x, sig, base_order=order)
    kw = {} if ref == "euler" else {"lower_order_final": False}
    assert torch.allclose(out, samplers.get(ref)(gm, x, sig, **kw), rtol=1e-10, atol=1e-12)


def test_exponential_adams_weights(gm):
    from undiffuse.samplers.calibrated import adams_weights, base_weights
    sig = schedules.get_sigmas("logsnr", 7, sigma_min=0.02, sigma_max=20.0)
    for i in range(2, 6):  # order 3: the same rule as DPM-Solver++(3M) once it has three points
        assert torch.allclose(torch.stack(adams_weights(sig, i, 3)), torch.stack(base_weights(sig, i, 3)), atol=1e-12)
    # order 4 converges faster than 3 on a smooth problem
    x = undiffuse.noise((16, 8), seed=0, dtype=torch.float64) * 20
    from undiffuse.fewstep.calibrate import reference_solution
    ref = reference_solution(gm, x, 20.0, 0.02, rtol=1e-12)
    sig40 = schedules.get_sigmas("logsnr", 40, sigma_min=0.02, sigma_max=20.0)
    run = samplers.get("calibrated")
    err = {o: float((run(gm, x, sig40, base_order=o) - ref).pow(2).mean().sqrt()) for o in (3, 4)}
    assert err[4] < 0.3 * err[3], err


def test_zero_offsets_and_short_offsets(gm):
    x = undiffuse.noise((4, 8), seed=0, dtype=torch.float64) * 20
    sig = schedules.get_sigmas("logsnr", 6, sigma_min=0.02, sigma_max=20.0)
    plain = samplers.get("ipndm")(gm, x, sig)
    assert torch.equal(samplers.get("ipndm")(gm, x, sig, deltas=torch.zeros(6, 3), shifts=torch.zeros(6)), plain)
    # calibration files written with two history offsets per step still run (missing ones are zero)
    cal = samplers.get("calibrated")
    assert torch.equal(cal(gm, x, sig, deltas=[[0.1, 0.2]] * 6), cal(gm, x, sig, deltas=[[0.1, 0.2, 0.0]] * 6))


def test_minibatch_calibration_with_validation_selection(gm):
    cal = calibrate(gm, (8,), 4, sigma_min=0.02, sigma_max=20.0, sampler="ipndm", learn_weights=True,
                    train_size=96, val_size=48, batch_size=32, select_every=10, lr_decay=True, iters=60,
                    dtype=torch.float64)
    assert len(cal.options["deltas"]) == 4 and len(cal.options["shifts"]) == 4
    best_fixed = min(v for k, v in cal.baseline.items() if k.startswith("ipndm"))
    assert cal.val_rmse <= best_fixed  # selection starts from the best fixed schedule
    z = undiffuse.noise((3, 8), seed=5, dtype=torch.float64)
    assert torch.isfinite(undiffuse.sample(gm, z, **cal.sample_kwargs())).all()


@pytest.fixture(scope="module")
def fitted(gm):
    torch.manual_seed(0)
    return calibrate(gm, (8,), 4, sigma_min=0.02, sigma_max=20.0, train_size=64, val_size=64, iters=240,
                     dtype=torch.float64)


def test_calibration_beats_the_best_fixed_schedule_on_held_out_noise(fitted):
    best_fixed = min(fitted.baseline.values())
    assert fitted.val_rmse < 0.7 * best_fixed, (fitted.val_rmse, fitted.baseline)
    assert fitted.train_rmse <= fitted.val_rmse  # sanity: the fit is not worse where it was fitted


def test_positions_only_calibration_helps_a_fixed_solver(gm):
    cal = calibrate(gm, (8,), 4, sigma_min=0.02, sigma_max=20.0, sampler="dpmpp_2m", train_size=48, val_size=48,
                    iters=120, dtype=torch.float64)
    assert "deltas" not in cal.options
    assert cal.val_rmse < min(cal.baseline.values())


@pytest.mark.parametrize("steps", [3, 6])
def test_searched_last_level_is_a_better_start_on_held_out_noise(gm, steps):
    # no fit at all (iters=0): the start alone, with and without the search of its last level
    kw = dict(sigma_min=0.02, sigma_max=20.0, train_size=64, val_size=64, iters=0, dtype=torch.float64)
    plain = calibrate(gm, (8,), steps, last_level_grid=0, **kw)
    searched = calibrate(gm, (8,), steps, **kw)
    assert plain.meta["start_sigmas"][-2] == pytest.approx(0.02)
    assert 0.02 < searched.meta["start_sigmas"][-2] < searched.meta["start_sigmas"][-3]
    assert searched.meta["start_sigmas"][:-2] == plain.meta["start_sigmas"][:-2]
    # measured: 0.601 vs 0.733 (3 steps), 0.230 vs 0.281 (6 steps)
    assert searched.val_rmse < 0.9 * plain.val_rmse, (searched.val_rmse, plain.val_rmse)
    with pytest.raises(ValueError, match="last_level_grid must be an integer >= 0"):
        calibrate(gm, (8,), steps, last_level_grid=-1, **kw)


def test_round_trip_gives_the_same_samples(tmp_path, gm, fitted):
    path = tmp_path / "cal.json"
    fitted.save(path)
    again = Calibration.load(path)
    assert again.sigmas == fitted.sigmas and again.options == fitted.options
    z = undiffuse.noise((3, 8), seed=5, dtype=torch.float64)
    a = undiffuse.sample(gm, z, **fitted.sample_kwargs())
    b = undiffuse.sample(gm, z, **again.sample_kwargs())
    assert torch.equal(a, b)
    # the schedule alone is a plain list any sampler can use
    assert undiffuse.sample(gm, z, sampler="heun", schedule=again.sigmas).shape == (3, 8)


def test_loading_a_foreign_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"sigmas": [1.0, 0.0]}')
    with pytest.raises(ValueError, match="is not a calibration file"):
        Calibration.load(path)


def test_calibration_errors(gm):
    with pytest.raises(ValueError, match="cannot be calibrated"):
        calibrate(gm, (8,), 4, sigma_min=0.02, sigma_max=20.0, sampler="ddpm")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        calibrate(gm, (8,), 0, sigma_min=0.02, sigma_max=20.0)
    with pytest.raises(ValueError, match="deltas must have shape"):
        samplers.get("calibrated")(gm, torch.zeros(1, 8), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64),
                                   deltas=[[0.0, 0.0]])
    with pytest.raises(ValueError, match="learn_weights=True needs one of the samplers"):
        calibrate(gm, (8,), 4, sigma_min=0.02, sigma_max=20.0, sampler="dpmpp_2m", learn_weights=True)
    with pytest.raises(ValueError, match="batch_size must be between 1 and train_size"):
        calibrate(gm, (8,), 4, sigma_min=0.02, sigma_max=20.0, train_size=16, batch_size=32)


def test_ipndm_full_history_weights(gm):
    x = undiffuse.noise((4, 8), seed=0, dtype=torch.float64) * 20
    sig = schedules.get_sigmas("logsnr", 6, sigma_min=0.02, sigma_max=20.0)
    ipndm = samplers.get("ipndm")
    # zero weights on every earlier derivative reproduce iPNDM exactly (the start of a fit)
    assert torch.equal(ipndm(gm, x, sig, deltas=torch.zeros(6, 5), shifts=torch.zeros(6)), ipndm(gm, x, sig))
    # any weights integrate a constant derivative exactly: D = c gives x(s) = c + (x0 - c) s / s0
    c = torch.linspace(-1, 1, 8, dtype=torch.float64)
    const = lambda z, s: c.expand_as(z)  # noqa: E731
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(ipndm(const, x, sig, deltas=w), c.expand_as(x), atol=1e-10)
    # differentiable in positions, weights and shifts
    sig_p = sig.clone().requires_grad_()
    w = torch.zeros(6, 5, dtype=torch.float64, requires_grad=True)
    sh = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    ipndm(gm, x, sig_p, deltas=w, shifts=sh).pow(2).sum().backward()
    for g in (sig_p.grad, w.grad, sh.grad):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    with pytest.raises(ValueError, match="deltas must have shape"):
        ipndm(gm, x, sig, deltas=torch.zeros(6, 6))


def test_screened_pool_is_an_unbiased_weighted_sample():
    from undiffuse.fewstep.calibrate import _screened

    def draw(first, count):
        return undiffuse.noise((count, 3), seed=list(range(first, first + count)), dtype=torch.float64)

    def hardness(x):
        return x.pow(2).sum(1) ** 2  # heavy-tailed score

    full = hardness(draw(7, 4096))
    estimates = []
    for first in range(7, 7 + 4096 * 20, 4096):  # fresh candidates every time
        x, w = _screened(draw, first, 512, 8, hardness)
        assert x.shape == (512, 3) and torch.isclose(w.sum(), torch.tensor(1.0, dtype=torch.float64))
        cand = draw(first, 4096)
        score = hardness(cand)
        assert torch.equal(torch.sort(hardness(x), descending=True).values[:256], score.sort(descending=True).values[:256])
        estimates.append(float((w * hardness(x)).sum() / score.mean()))  # ratio to the candidates' own mean
    # exact on the hardest half, an unbiased stratum mean on the rest: the ratio averages to 1
    assert abs(sum(estimates) / len(estimates) - 1) < 0.01, estimates
    assert float(full.mean()) > 0


def test_full_history_fit_on_a_screened_pool_helps_on_held_out_noise(gm, tmp_path):
    from undiffuse.fewstep.calibrate import reference_solution
    kw = dict(sigma_min=0.02, sigma_max=20.0, sampler="ipndm", learn_weights=True, train_size=64, val_size=64,
              batch_size=32, select_every=10, lr_decay=True, screen=4, dtype=torch.float64)
    cal = calibrate(gm, (8,), 5, history="all", position_iters=60, position_lr=0.05, iters=60, lr=0.01, **kw)
    assert len(cal.options["deltas"]) == 5 and len(cal.options["deltas"][0]) == 4
    assert cal.meta["history"] == 4 and cal.meta["screen"] == 4
    # held-out noises never drawn by the fit (its candidates are seeds 0..767)
    z = undiffuse.noise((256, 8), seed=list(range(10_000, 10_256)), dtype=torch.float64)
    x = z * 20
    ref = reference_solution(gm, x, 20.0, 0.02)
    err = lambda out: float((out - ref).pow(2).mean().sqrt())  # noqa: E731
    fitted = err(undiffuse.sample(gm, z, **cal.sample_kwargs()))
    fixed = min(err(samplers.get("ipndm")(gm, x, schedules.get_sigmas(s, 5, sigma_min=0.02, sigma_max=20.0)))
                for s in ("karras", "logsnr"))
    assert fitted < 0.7 * fixed, (fitted, fixed)
    path = tmp_path / "full.json"
    cal.save(path)
    again = Calibration.load(path)
    z = undiffuse.noise((3, 8), seed=5, dtype=torch.float64)
    assert torch.equal(undiffuse.sample(gm, z, **cal.sample_kwargs()), undiffuse.sample(gm, z, **again.sample_kwargs()))
    with pytest.raises(ValueError, match="history"):
        calibrate(gm, (8,), 5, history=9, **kw)
    with pytest.raises(ValueError, match="history applies"):
        calibrate(gm, (8,), 5, sigma_min=0.02, sigma_max=20.0, history="all")
    with pytest.raises(ValueError, match="screen must be"):
        calibrate(gm, (8,), 5, sigma_min=0.02, sigma_max=20.0, screen=1)


class _Trainable(torch.nn.Module):
    """The mixture's denoiser times a trainable factor 1: a user's module that still trains."""

    def __init__(self, gm):
        super().__init__()
        self.gm, self.scale = gm, torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x, sigma):
        return self.gm(x, sigma) * self.scale


def test_fit_leaves_a_trainable_modules_parameters_alone(gm):
    net = _Trainable(gm)
    calibrate(net, (8,), 3, sigma_min=0.02, sigma_max=20.0, train_size=8, val_size=8, iters=3,
              dtype=torch.float64)
    # the fit differentiated through the module but computed no weight gradients, and the
    # parameter still trains afterwards
    assert net.scale.grad is None and net.scale.requires_grad
    with pytest.raises(ValueError, match="steps"):
        calibrate(net, (8,), 0, sigma_min=0.02, sigma_max=20.0)
    assert net.scale.requires_grad  # restored after an error too
