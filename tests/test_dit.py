"""The diffusion transformer (nets.dit): shapes, adaLN-Zero start, conditioning, and training
through the same trainer as the U-Net."""
import json
import os

import pytest
import torch

from undiffuse import data, nets
from undiffuse.config import RunConfig, resolve
from undiffuse.nets.dit import DiT, DiTBlock, DiTConfig, sincos_2d

TINY = dict(width=32, depth=2, heads=4)


def _randomised(net, std=0.1):
    """Undo every zero initialisation so the output depends on every layer."""
    torch.manual_seed(0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=std)
    return net


@pytest.mark.parametrize("channels,patch,size", [(1, 2, (8, 8)), (3, 2, (8, 12)), (1, 4, (12, 8)),
                                                 (3, 1, (5, 7)), (3, 4, (16, 16))])
def test_shapes_square_non_square_and_channels(channels, patch, size):
    net = _randomised(DiT(in_channels=channels, patch_size=patch, **TINY))
    x = torch.randn(2, channels, *size)
    out = net(x, torch.tensor([0.5, 900.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    two = DiT(in_channels=channels, out_channels=2 * channels, patch_size=patch, **TINY)
    assert two(x, torch.rand(2)).shape == (2, 2 * channels, *size)


def test_each_output_patch_comes_from_its_own_input_patch():
    """In a fresh network the blocks are the identity and the output layers act per token,
    so changing one input patch changes exactly the same patch of the output: patchify and
    unpatchify agree on the layout (non-square grid, several channels)."""
    torch.manual_seed(0)
    net = DiT(in_channels=3, patch_size=2, **TINY)
    torch.nn.init.normal_(net.out.weight)
    x = torch.randn(1, 3, 6, 8)
    y = x.clone()
    y[:, :, 2:4, 4:6] += 1.0  # patch (row 1, column 2) of a 3x4 grid
    t = torch.tensor([0.5])
    diff = (net(y, t) - net(x, t)).abs().amax(1)[0]  # (6, 8)
    inside = torch.zeros(6, 8, dtype=torch.bool)
    inside[2:4, 4:6] = True
    assert (diff[inside] > 1e-4).all() and (diff[~inside] == 0).all()


def test_not_divisible_and_wrong_channels_are_clear_errors():
    net = DiT(in_channels=1, patch_size=4, **TINY)
    with pytest.raises(ValueError, match=r"patch_size 4 .*divisible by 4; got 8x6"):
        net(torch.randn(1, 1, 8, 6), torch.rand(1))
    with pytest.raises(ValueError, match=r"expects \(batch, 1, H, W\)"):
        net(torch.randn(1, 3, 8, 8), torch.rand(1))


def test_starts_at_zero_output():
    net = DiT(in_channels=3, patch_size=2, **TINY)
    x = torch.randn(4, 3, 8, 6)
    assert torch.equal(net(x, torch.rand(4)), torch.zeros_like(x))


def test_adaln_zero_block_is_identity_until_its_modulation_is_trained():
    torch.manual_seed(0)
    block = DiTBlock(32, heads=4, mlp_ratio=4.0, dropout=0.0, context_dim=0)
    for name, p in block.named_parameters():
        if not name.startswith("ada."):  # attention and MLP fully random, modulation left at zero
            torch.nn.init.normal_(p, std=0.3)
    h, emb = torch.randn(2, 12, 32), torch.randn(2, 32)
    torch.testing.assert_close(block(h, emb), h, rtol=0, atol=0)
    torch.nn.init.normal_(block.ada.weight, std=0.1)
    assert not torch.allclose(block(h, emb), h)
    # every block of a fresh network is the identity whatever its input and conditioning
    net = DiT(in_channels=1, **TINY)
    assert all(torch.equal(b(h, emb), h) for b in net.blocks)


def test_class_labels_and_null_class():
    net = _randomised(DiT(in_channels=1, num_classes=3, **TINY))
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 10.0)
    null = net(x, t, torch.tensor([-1, -1, -1]))
    torch.testing.assert_close(net(x, t), null)  # no labels = the null class
    assert not torch.allclose(net(x, t, torch.tensor([0, 1, 2])), null)
    torch.testing.assert_close(net(x, t, torch.tensor([2])), net(x, t, torch.tensor([2, 2, 2])))
    with pytest.raises(ValueError, match="out of range"):
        net(x, t, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="num_classes=0"):
        DiT(in_channels=1, **TINY)(x, t, torch.tensor([0, 1, 2]))


def test_image_condition_is_concatenated_and_checked():
    net = _randomised(DiT(in_channels=1, cond_channels=1, **TINY))
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    a = net(x, t, cond_image=torch.zeros(2, 1, 8, 8))
    assert a.shape == x.shape and not torch.allclose(a, net(x, t, cond_image=torch.ones(2, 1, 8, 8)))
    with pytest.raises(ValueError, match="cond_image must have shape"):
        net(x, t, cond_image=torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="without an image condition"):
        DiT(in_channels=1, **TINY)(x, t, cond_image=x)


def test_gradients_reach_every_parameter():
    """At initialisation only the output layer gets a gradient (adaLN-Zero); a few optimizer
    steps open the gates and then every parameter is trained."""
    torch.manual_seed(0)
    net = DiT(in_channels=1, num_classes=2, context_dim=6, cond_channels=1, **TINY)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, -1, 1])
    cond = dict(class_labels=y, context=torch.randn(4, 3, 6), cond_image=torch.randn(4, 1, 8, 8))
    target = torch.randn_like(x)
    for step in range(4):
        opt.zero_grad()
        ((net(x, t, **cond) - target) ** 2).mean().backward()
        if step == 0:
            assert net.out.weight.grad.abs().sum() > 0
            assert net.blocks[0].attn.qkv.weight.grad.abs().sum() == 0
        opt.step()
    silent = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert silent == []


def test_sincos_position_embedding():
    pe = sincos_2d(3, 5, 16)
    assert pe.shape == (15, 16)
    assert len(torch.unique(pe.round(decimals=5), dim=0)) == 15  # every position distinct
    row, col = pe.reshape(3, 5, 16)[..., :8], pe.reshape(3, 5, 16)[..., 8:]
    assert torch.equal(row[:, :1].expand(3, 5, 8), row) and torch.equal(col[:1].expand(3, 5, 8), col)
    torch.testing.assert_close(pe[0], torch.tensor(([0.0] * 4 + [1.0] * 4) * 2))  # position (0, 0)
    # dim 8: column code of column 1 at frequencies 1 and 10000^(-1/2) = 0.01
    expect = torch.tensor([1.0, 0.01])
    torch.testing.assert_close(sincos_2d(1, 2, 8)[1, 4:], torch.cat([expect.sin(), expect.cos()]))


@pytest.mark.parametrize("kw,match", [
    ({"width": 30}, "divisible by heads"), ({"width": 30, "heads": 3}, "divisible by 4"),
    ({"patch_size": 0}, "patch_size must be"), ({"depth": 0}, "depth must be"),
    ({"embedding": "learned"}, "allowed: positional, fourier"), ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"mlp_ratio": 0}, "mlp_ratio"), ({"context_dim": -1}, ">= 0"),
])
def test_config_errors_name_the_option(kw, match):
    with pytest.raises(ValueError, match=match):
        DiTConfig(**{**TINY, **kw})


def test_build_and_config_dict_round_trip(monkeypatch):
    monkeypatch.setitem(nets.KINDS, "dit", (DiT, DiTConfig))
    net = nets.build({"kind": "dit", "in_channels": 3, "patch_size": 4, **TINY})
    d = net.config_dict()
    assert d["kind"] == "dit" and d["patch_size"] == 4
    again = nets.build(json.loads(json.dumps(d)))
    again.load_state_dict(net.state_dict())
    with pytest.raises(ValueError, match=r"no option\(s\) \['patch'\]"):
        nets.build({"kind": "dit", "patch": 2})


# ----------------------------------------------------------------------------- training

SHORT = {"model.channels": 16, "model.channel_mult": [1, 2], "model.num_res_blocks": 1,
         "model.attention_levels": [1], "model.head_channels": 16, "optim.batch_size": 64,
         "optim.warmup_steps": 5, "train.max_steps": 30, "train.time_budget": None, "train.log_every": 1,
         "train.sample_count": 4, "sample.steps": 2, "train.tensorboard": False}
TINY_DIT = {"kind": "dit", "in_channels": 1, "patch_size": 2, "width": 64, "depth": 2, "heads": 4}


@pytest.mark.parametrize("kind", ["dit", "unet"])
def test_same_trainer_trains_dit_and_unet(kind, tmp_path, monkeypatch):
    from undiffuse.inference import generate as gen
    from undiffuse.training.trainer import Trainer

    monkeypatch.setitem(nets.KINDS, "dit", (DiT, DiTConfig))  # build() and load_run() see the DiT
    ds = data.load("digits")
    cfg = resolve("digits", ds, SHORT)  # the digits preset with a small U-Net
    if kind == "dit":
        d = cfg.to_dict()
        d["model"] = dict(TINY_DIT)
        cfg = RunConfig.from_dict(d)
    run = str(tmp_path / kind)
    trainer = Trainer(cfg, ds, run, progress=False, log=lambda m: None)
    before = _held_out_loss(trainer)
    assert trainer.fit()["step"] == 30
    after = _held_out_loss(trainer)
    with open(os.path.join(run, "log.jsonl")) as f:
        assert len([e for e in map(json.loads, f) if "loss" in e]) == 30
    # measured with train.seed 0-2: DiT 0.86-0.87, U-Net 0.78 of the untrained loss (1.083)
    assert after < 0.94 * before, (before, after)
    loaded = gen.load_run(run)
    assert type(loaded.denoiser.net).__name__ == {"dit": "DiT", "unet": "UNet"}[kind]
    assert loaded.step == 30 and loaded.shape == (1, 8, 8)
    x = gen.generate(loaded, 6, seed=0, steps=3)
    assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all()
    # image i depends on seed + i only (up to float round-off of the batch size)
    torch.testing.assert_close(gen.generate(loaded, 2, seed=0, steps=3), x[:2], rtol=0, atol=2e-4)


def _held_out_loss(trainer) -> float:
    """The training loss of the current weights on a fixed draw of 512 digits, noise levels and
    noise (its own generator: the trainer's random state is untouched)."""
    from undiffuse.core.losses import denoising_loss, sample_sigma

    g = torch.Generator().manual_seed(1234)
    dif = trainer.cfg.diffusion
    x0 = trainer.data.get(torch.randperm(len(trainer.data), generator=g)[:512])
    sigma = sample_sigma(dif.noise_sampling, 512, trainer.denoiser.process, g, p_mean=dif.p_mean, p_std=dif.p_std)
    eps = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        return denoising_loss(trainer.denoiser, x0, sigma, eps, weighting=dif.weighting).mean().item()


def test_digits_dit_preset_trains_from_the_command_line(tmp_path):
    from undiffuse.cli import main

    out = tmp_path / "dit"
    assert main(["train", "--data", "digits", "--preset", "digits-dit", "--set", "model.width=32",
                 "--set", "model.depth=1", "--batch-size", "16", "--max-steps", "2", "--out", str(out),
                 "--set", "train.tensorboard=false", "--set", "sample.steps=2", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["kind"] == "dit"
