import pytest

from undiffuse import data, nets
from undiffuse.config import PRESETS, RunConfig, apply_overrides, parse_duration, resolve


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("5m", 300), ("1.5h", 5400), ("1h30m", 5400),
                                           ("2m 5s", 125)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "-3", "0", "5x"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_every_preset_resolves_and_builds():
    digits, moons = data.load("digits"), data.load("moons", num_points=100)
    clips = data.load("moving-digits", frames=4)
    for name in PRESETS:
        kind = PRESETS[name]["model"]["kind"]
        ds = moons if kind == "mlp" else clips if kind in nets.VIDEO_KINDS else digits
        over = {"model.attention_levels": [1]} if name in ("small", "base") else {}
        cfg = resolve(name, ds, over)
        net = nets.build(cfg.model)
        assert nets.num_parameters(net) > 0
        assert RunConfig.from_dict(cfg.to_dict()) == cfg  # JSON round trip


def test_overrides_and_errors():
    ds = data.load("digits")
    cfg = resolve("digits", ds, {"optim.lr": 5e-4, "diffusion.process": {"name": "vp", "beta_schedule": "cosine"},
                                 "diffusion.parameterization": "v", "diffusion.noise_sampling": "uniform_t"})
    assert cfg.optim.lr == 5e-4 and cfg.diffusion.process["beta_schedule"] == "cosine"
    with pytest.raises(ValueError, match="diffusion.weighting 'snr' is not allowed; allowed: uniform, min_snr, edm"):
        resolve("digits", ds, {"diffusion.weighting": "snr"})
    with pytest.raises(ValueError, match="optim.batch_size 10 must be divisible by optim.accumulation 3"):
        resolve("digits", ds, {"optim.batch_size": 10, "optim.accumulation": 3})
    with pytest.raises(ValueError, match="set train.max_steps"):
        resolve("digits", ds, {"train.time_budget": None})
    with pytest.raises(ValueError, match="'flow' needs diffusion.process name 'flow'"):
        resolve("digits", ds, {"diffusion.parameterization": "flow"})
    with pytest.raises(ValueError, match="sample.sampler 'fast'"):
        resolve("digits", ds, {"sample.sampler": "fast"})
    with pytest.raises(ValueError, match="SECTION.KEY"):
        apply_overrides({}, {"lr": 1})


def test_evaluation_options_are_checked():
    ds = data.load("digits")
    with pytest.raises(ValueError, match="keep_best needs train.eval_every"):
        resolve("digits", ds, {"train.keep_best": True})
    with pytest.raises(ValueError, match="eval_samples >= 10"):
        resolve("digits", ds, {"train.eval_every": 10, "train.eval_samples": 3})
