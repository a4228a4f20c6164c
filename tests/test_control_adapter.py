"""Control adapters: a fresh adapter leaves the frozen base's outputs bit-identical; scale 0
is the base; a trained adapter steers; only the adapter learns."""
import pytest
import torch

from undiffuse.nets.control import ControlAdapter, ControlledNet
from undiffuse.nets.unet import UNet, UNetConfig

CASES = {
    "pixels, classes": (dict(in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                             head_channels=16, num_classes=10), 8, 8),
    "latent grid, text": (dict(in_channels=4, channels=16, channel_mult=(1, 2), num_res_blocks=1,
                               attention_levels=(1,), head_channels=16, context_dim=12), 8, 32),
    "patches": (dict(in_channels=3, channels=16, channel_mult=(1, 2), num_res_blocks=2, attention_levels=(1,),
                     head_channels=16, patch_size=2), 16, 16),
}


def _inputs(cfg, size, map_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, cfg["in_channels"], size, size, generator=g)
    cond = {}
    if cfg.get("num_classes"):
        cond["class_labels"] = torch.tensor([0, 3, -1])
    if cfg.get("context_dim"):
        cond["context"] = torch.randn(3, 5, cfg["context_dim"], generator=g)
        cond["context_mask"] = torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.bool)
    control = (torch.rand(3, 1, map_size, map_size, generator=g) > 0.8).float()
    return x, torch.randn(3, generator=g), cond, control


def _base(cfg, seed=1):
    torch.manual_seed(seed)
    net = UNet(UNetConfig(**cfg))
    with torch.no_grad():  # a "trained" base: no zero layers left
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _perturbed(adapter):
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return adapter


@pytest.mark.parametrize("case", CASES)
def test_a_fresh_adapter_leaves_the_base_bit_identical(case):
    cfg, size, map_size = CASES[case]
    base = _base(cfg)
    adapter = ControlAdapter(UNetConfig(**cfg), 1, map_size, size)
    adapter.load_base(base)
    net = ControlledNet(base, [adapter], [1.0]).eval()
    x, noise, cond, control = _inputs(cfg, size, map_size)
    with torch.no_grad():
        plain = base(x, noise, **cond)
        assert torch.equal(net(x, noise, control=control, **cond), plain)
        _perturbed(adapter)
        steered = net(x, noise, control=control, **cond)
        assert not torch.allclose(steered, plain, atol=1e-4)  # a trained adapter does steer
        net.scales = [0.0]
        assert torch.equal(net(x, noise, control=control, **cond), plain)  # scale 0 is the base
        assert torch.equal(net(x, noise, **cond), plain)  # no control map: the base


def test_the_copy_starts_from_the_base_and_only_the_adapter_learns():
    cfg, size, map_size = CASES["pixels, classes"]
    base = _base(cfg)
    adapter = ControlAdapter(UNetConfig(**cfg), 1, map_size, size)
    adapter.load_base(base)
    assert torch.equal(adapter.encoder.stem.weight, base.stem.weight)
    net = ControlledNet(base.requires_grad_(False), [adapter], [1.0])
    x, noise, cond, control = _inputs(cfg, size, map_size)
    net(x, noise, control=control, **cond).square().mean().backward()
    assert all(p.grad is None for p in base.parameters())
    assert adapter.joins[0].weight.grad.abs().sum() > 0  # the zero joins get gradients at step 0


def test_two_adapters_add_their_scaled_residuals():
    cfg, size, map_size = CASES["pixels, classes"]
    base = _base(cfg)
    a, b = (_perturbed(ControlAdapter(UNetConfig(**cfg), 1, map_size, size)) for _ in range(2))
    x, noise, cond, control = _inputs(cfg, size, map_size)
    with torch.no_grad():
        both = ControlledNet(base, [a, b], [0.5, 2.0])(x, noise, control=torch.cat([control, 1 - control], 1), **cond)
        ra, rb = a(x, noise, control, **cond), b(x, noise, 1 - control, **cond)
        direct = base(x, noise, control=[0.5 * p + 2.0 * q for p, q in zip(ra, rb)], **cond)
    assert torch.equal(both, direct)
    with pytest.raises(ValueError, match="2 adapters but 1 scales"):
        ControlledNet(base, [a, b], [1.0])
    with pytest.raises(ValueError, match=r"control: 1 channels, the adapters read 1 \+ 1"):
        ControlledNet(base, [a, b], [1.0, 1.0])(x, noise, control=control, **cond)


def test_a_map_size_that_does_not_fit_is_refused():
    cfg, size, _ = CASES["pixels, classes"]
    with pytest.raises(ValueError, match="12 px cannot be brought to the network's 8 px"):
        ControlAdapter(UNetConfig(**cfg), 1, 12, size)
