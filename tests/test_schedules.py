import math

import pytest
import torch

from undiffuse.core import schedules
from undiffuse.core.process import EDM, VE, RectifiedFlow, VPContinuous, VPDiscrete


@pytest.mark.parametrize("name", [n for n in schedules.names() if n != "custom"])
@pytest.mark.parametrize("steps", [1, 2, 5, 37])
def test_every_schedule_is_valid(name, steps):
    proc = VPDiscrete()
    s = schedules.get_sigmas(name, steps, process=proc)
    assert s.dtype == torch.float64 and len(s) == steps + 1
    assert s[-1] == 0 and torch.all(s[1:] < s[:-1]) and torch.isfinite(s).all()


def test_karras_matches_eq5_and_endpoints():
    s = schedules.get_sigmas("karras", 10, sigma_min=0.002, sigma_max=80.0)
    assert float(s[0]) == pytest.approx(80.0) and float(s[-2]) == pytest.approx(0.002)
    i = 4
    expect = (80 ** (1 / 7) + i / 9 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert float(s[i]) == pytest.approx(expect, rel=1e-12)


def test_logsnr_is_uniform_in_log_snr_and_exponential_bends():
    s = schedules.get_sigmas("logsnr", 8, sigma_min=0.01, sigma_max=100.0)
    logsnr = -2 * s[:-1].log()
    gaps = logsnr[1:] - logsnr[:-1]
    assert torch.allclose(gaps, gaps[0].expand_as(gaps))
    e1 = schedules.get_sigmas("exponential", 8, sigma_min=0.01, sigma_max=100.0)
    assert torch.allclose(e1, s)
    e2 = schedules.get_sigmas("exponential", 8, sigma_min=0.01, sigma_max=100.0, rho=2.0)
    assert e2[4] < s[4]  # rho > 1 reaches low noise sooner and spends more steps there


def test_uniform_t_spacings_on_continuous_process():
    proc = EDM()
    s = schedules.get_sigmas("linspace", 4, process=proc)
    assert torch.allclose(s[:-1], torch.linspace(80, 0.002, 4, dtype=torch.float64))
    tr = schedules.get_sigmas("trailing", 4, process=proc)
    assert float(tr[0]) == pytest.approx(80) and float(tr[-2]) > 0.002
    ld = schedules.get_sigmas("leading", 4, process=proc)
    assert float(ld[-2]) == pytest.approx(0.002) and float(ld[0]) < 80


def test_discrete_spacings_give_integer_timesteps():
    proc = VPDiscrete()
    assert schedules.timesteps(proc, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert schedules.timesteps(proc, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert schedules.timesteps(proc, 3, "linspace").tolist() == [999.0, 499.5, 0.0]


def test_custom_and_round_trip(tmp_path):
    s = schedules.get_sigmas([10.0, 3.0, 1.0, 0.1])
    assert s.tolist() == [10.0, 3.0, 1.0, 0.1, 0.0]
    assert torch.equal(schedules.get_sigmas("custom", sigmas=[5.0, 1.0, 0.0]), torch.tensor([5.0, 1.0, 0.0], dtype=torch.float64))
    path = tmp_path / "sched.json"
    schedules.save(s, path, note="hand made")
    assert torch.equal(schedules.load(path), s)


@pytest.mark.parametrize("bad, match", [
    ([3.0, math.nan, 0.0], "finite"),
    ([3.0, math.inf, 0.0], "finite"),
    ([1.0, 2.0, 0.0], "strictly decreasing"),
    ([2.0, 2.0, 0.0], "strictly decreasing"),
    ([2.0, 0.0, 0.0], "positive|decreasing"),
    ([[2.0, 0.0]], "1-D"),
])
def test_validation_names_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        schedules.validate(torch.tensor(bad, dtype=torch.float64))


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="allowed: karras"):
        schedules.get_sigmas("cosinus", 10, sigma_min=0.1, sigma_max=10)
    for steps in (0, -3, 2.5, None):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            schedules.get_sigmas("karras", steps, sigma_min=0.1, sigma_max=10)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        schedules.get_sigmas("karras", 10, sigma_min=10, sigma_max=0.1)
    with pytest.raises(ValueError, match="needs a process"):
        schedules.get_sigmas("trailing", 10, sigma_min=0.1, sigma_max=10)


@pytest.mark.parametrize("proc", [EDM(), VE(), VPContinuous(), RectifiedFlow(), VPDiscrete()],
                         ids=lambda p: p.name)
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_uniform_t_schedules_are_built_in_float64(proc, spacing):
    """Every step of a uniform-t schedule is float64 arithmetic: the process's end times come from
    its float64 sigma range, not from a float32 copy (2.6e-8..6.2e-8 relative off before)."""
    lo, hi = 0.5 * (proc.sigma_min + proc.sigma_max) * 1e-3, 0.5 * (proc.sigma_min + proc.sigma_max)
    for user_range in (False, True):
        kw = {"sigma_min": lo, "sigma_max": hi} if user_range else {}
        s = schedules.get_sigmas(spacing, 6, process=proc, **kw)
        smin, smax = (lo, hi) if user_range else (proc.sigma_min, proc.sigma_max)
        t_lo = proc.t(torch.tensor(smin, dtype=torch.float64))
        t_hi = proc.t(torch.tensor(smax, dtype=torch.float64))
        if isinstance(proc, VPDiscrete) and not user_range:
            continue  # integer table timesteps, checked against diffusers elsewhere
        i = torch.arange(6, dtype=torch.float64)
        ts = {"linspace": torch.linspace(float(t_hi), float(t_lo), 6, dtype=torch.float64), "leading": t_lo + (t_hi - t_lo) * (5 - i) / 6,
              "trailing": t_hi - (t_hi - t_lo) * i / 6}[spacing]
        expect = proc.sigma(ts)
        assert torch.allclose(s[:-1], expect, rtol=1e-14, atol=0), (s[:-1] / expect - 1).abs().max()
