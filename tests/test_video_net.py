"""The space-time U-Net (nets.video_unet) and given frames (steering.frames): per-frame at
initialisation, frames mixed once the temporal layers move, given frames kept exactly, and the
samplers' convergence orders on clips of shape (T, C, H, W) against an analytic mixture."""
import pytest
import torch
from conftest import SMAX, convergence_order

from undiffuse import nets, samplers
from undiffuse.core import schedules
from undiffuse.core.analytic import GaussianMixture
from undiffuse.nets.video_unet import TemporalAttention, TemporalConv
from undiffuse.steering import frames as fr

SMALL = {"kind": "video_unet", "in_channels": 1, "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
         "attention_levels": [1], "temporal_attention_levels": [0, 1], "head_channels": 8, "groups": 8,
         "max_frames": 8}


def _perturbed(net, temporal: bool):
    """Every weight random, except (unless ``temporal``) the temporal branches' last layers."""
    torch.manual_seed(1)
    keep = set()
    if not temporal:
        for m in net.modules():
            if isinstance(m, TemporalConv):
                keep |= {id(p) for p in m.conv.parameters()}
            if isinstance(m, TemporalAttention):
                keep |= {id(p) for p in m.proj.parameters()}
    with torch.no_grad():
        for p in net.parameters():
            if id(p) not in keep:
                p.copy_(torch.randn_like(p) * 0.2)
    return net.eval()


@pytest.mark.parametrize("extra", [{}, {"num_classes": 3}, {"patch_size": 2}])
def test_untrained_temporal_layers_leave_every_frame_to_the_image_layers(extra):
    net = _perturbed(nets.build({**SMALL, **extra}), temporal=False)
    x = torch.randn(2, 6, 1, 8, 8)
    cond = {"class_labels": torch.tensor([0, 2])} if extra.get("num_classes") else {}
    sigma = torch.tensor([0.3, 2.0])
    out = net(x, sigma, **cond)
    for t in range(6):  # each frame alone, as a one-frame clip
        alone = net(x[:, t:t + 1], sigma, **cond)
        torch.testing.assert_close(out[:, t:t + 1], alone, atol=1e-5, rtol=1e-5)
    assert out.abs().mean() > 0.01  # the perturbed network does something


def test_trained_temporal_layers_mix_frames_both_ways():
    net = _perturbed(nets.build(SMALL), temporal=True)
    x = torch.randn(1, 6, 1, 8, 8)
    y = x.clone()
    y[:, 0] += 1.0
    d = (net(x, torch.ones(1)) - net(y, torch.ones(1))).abs().flatten(2).amax(-1)[0]
    assert (d[1:] > 1e-4).all()  # every later frame hears of frame 0
    y = x.clone()
    y[:, 5] += 1.0
    d = (net(x, torch.ones(1)) - net(y, torch.ones(1))).abs().flatten(2).amax(-1)[0]
    assert (d[:5] > 1e-4).all()  # and every earlier frame of frame 5 (attention is not causal)


def test_given_frames_enter_the_network_and_leave_it_unchanged():
    net = _perturbed(nets.build(SMALL), temporal=True)
    x, given = torch.randn(2, 6, 1, 8, 8), torch.randn(2, 6, 1, 8, 8)
    mask = torch.stack([fr.prediction_mask(6, 2), fr.interpolation_mask(6, 2, 4)])
    plain = net(x, torch.ones(2))
    told = net(x, torch.ones(2), cond_frames=given * mask[:, :, None, None, None], frame_mask=mask)
    assert (plain - told).abs().max() > 1e-3
    torch.testing.assert_close(net(x, torch.ones(2), cond_frames=torch.zeros_like(x),
                                   frame_mask=torch.zeros(2, 6, dtype=torch.bool)), plain)
    with pytest.raises(ValueError, match="frame_mask"):
        net(x, torch.ones(2), cond_frames=given)
    with pytest.raises(ValueError, match="max_frames"):
        net(torch.randn(1, 9, 1, 8, 8), torch.ones(1))
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        net(torch.randn(1, 1, 8, 8), torch.ones(1))
    bare = nets.build({**SMALL, "frame_cond": False})
    with pytest.raises(ValueError, match="frame_cond"):
        bare(x, torch.ones(2), cond_frames=given, frame_mask=mask)


def test_keep_given_returns_given_frames_bit_for_bit_through_a_sampler():
    calls = []

    def den(x, sigma, cond_frames=None, frame_mask=None):
        calls.append(frame_mask is not None)
        return 0.5 * x  # anything: the given frames must still come out exactly

    given = torch.randn(3, 5, 1, 4, 4)
    mask = fr.prediction_mask(5, 2)[None].expand(3, 5)
    x = torch.randn(3, 5, 1, 4, 4) * 80
    sig = schedules.get_sigmas("karras", 10, sigma_min=0.002, sigma_max=80.0)
    for name in ("heun", "euler_ancestral", "dpmpp_2m"):
        out = samplers.get(name)(fr.KeepGiven(den), x, sig, extra={"cond_frames": given, "frame_mask": mask},
                                 generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[:, :2], given[:, :2]), name
        assert not torch.equal(out[:, 2:], given[:, 2:])
    assert all(calls)
    torch.testing.assert_close(fr.paste(x, given, mask)[:, :2], given[:, :2], rtol=0, atol=0)


def test_frame_tasks_mix_generation_prediction_and_interpolation():
    m = fr.frame_tasks(4000, 16, torch.Generator().manual_seed(0))
    assert m.shape == (4000, 16) and m.dtype == torch.bool
    none = ~m.any(1)
    prefix = m.any(1) & (m.long().cumsum(1) == torch.arange(1, 17)).sum(1).eq(m.sum(1)) & m[:, 0]
    assert abs(none.float().mean() - fr.TASKS["generate"]) < 0.03
    assert abs(prefix.float().mean() - fr.TASKS["predict"]) < 0.05  # (a few random subsets are prefixes too)
    assert not m.all(1).any()  # something is always generated
    assert m[prefix].sum(1).max() <= 8
    again = fr.frame_tasks(4000, 16, torch.Generator().manual_seed(0))
    assert torch.equal(m, again)


def test_masks_refuse_what_leaves_nothing_to_do():
    assert fr.prediction_mask(8, 3).tolist() == [True] * 3 + [False] * 5
    assert fr.interpolation_mask(6, 2, 4).tolist() == [True, True, False, False, True, True]
    for bad in (0, 8):
        with pytest.raises(ValueError, match="context"):
            fr.prediction_mask(8, bad)
    with pytest.raises(ValueError, match="missing frames"):
        fr.interpolation_mask(6, 0, 6)
    with pytest.raises(ValueError, match="missing frames"):
        fr.interpolation_mask(6, 4, 9)


def _moving_blobs(frames: int = 4, side: int = 3) -> GaussianMixture:
    """Three 'clips': a bright pixel moving right, down, or staying, with smooth covariances."""
    means = torch.zeros(3, frames, 1, side, side, dtype=torch.float64)
    for t in range(frames):
        means[0, t, 0, 1, t % side] = 1.0
        means[1, t, 0, t % side, 1] = 1.0
        means[2, t, 0, 1, 1] = 1.0
    d = frames * side * side
    idx = torch.arange(d, dtype=torch.float64)
    lag = (idx[:, None] - idx[None, :]).abs()
    covs = torch.stack([s ** 2 * torch.exp(-lag / ell) for s, ell in ((0.3, 3.0), (0.5, 1.5), (0.4, 6.0))])
    return GaussianMixture(means.reshape(3, d), covs)


@pytest.mark.parametrize("name, lo, hi", [("heun", 1.8, 2.5), ("euler", 0.85, 1.3)])
def test_samplers_converge_on_clips_as_on_images(name, lo, hi):
    """The measured orders of tests/test_samplers.py, on samples of shape (T, C, H, W)."""
    x = torch.randn(6, 4, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * SMAX
    slope, errs = convergence_order(name, _moving_blobs(), x)
    assert lo <= slope <= hi, f"{name}: errors {errs}, order {slope:.2f}"
