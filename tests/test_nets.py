import math

import pytest
import torch

from undiffuse import nets
from undiffuse.nets.unet import Attention, UNet


def test_unet_shapes_non_square_and_odd():
    net = UNet(in_channels=3, channels=16, channel_mult=(1, 2, 2), attention_levels=(1, 2), head_channels=8)
    for h, w in [(8, 12), (7, 9), (16, 16)]:
        x = torch.randn(2, 3, h, w)
        assert net(x, torch.tensor([0.5, 900.0])).shape == (2, 3, h, w)


def test_unet_starts_at_zero_output_and_is_trainable():
    net = UNet(in_channels=1, channels=16, channel_mult=(1, 2), attention_levels=(1,), head_channels=8)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(net(x, torch.rand(4)), torch.zeros_like(x))  # zero-initialised output layer
    net(x, torch.rand(4)).sum().backward()
    assert net.out.weight.grad.abs().sum() > 0


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    att = Attention(16, head_channels=8, groups=4)
    torch.nn.init.normal_(att.proj.weight)
    x = torch.randn(2, 16, 3, 5)
    h = att.norm(x)
    q, k, v = att.qkv(h).reshape(2, 3, 2, 8, 15).unbind(1)  # (B, heads, dim, HW)
    w = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(8), dim=-1)
    out = torch.einsum("bhij,bhdj->bhdi", w, v).reshape(2, 16, 3, 5)
    torch.testing.assert_close(att(x), x + att.proj(out), rtol=1e-5, atol=1e-5)


def test_class_embedding_null_class_and_errors():
    net = UNet(in_channels=1, channels=16, channel_mult=(1,), attention_levels=(), num_classes=3)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):  # undo the zero init of residual branches
            torch.nn.init.normal_(m.weight, std=0.1)
    x, t = torch.randn(3, 1, 4, 4), torch.full((3,), 10.0)
    null = net(x, t, torch.tensor([-1, -1, -1]))
    torch.testing.assert_close(net(x, t), null)  # no labels = the null class
    assert not torch.allclose(net(x, t, torch.tensor([0, 1, 2])), null)
    with pytest.raises(ValueError, match="out of range"):
        net(x, t, torch.tensor([0, 3, 1]))
    plain = UNet(in_channels=1, channels=16, channel_mult=(1,), attention_levels=())
    with pytest.raises(ValueError, match="num_classes=0"):
        plain(x, t, torch.tensor([0, 1, 2]))


def test_dropout_only_in_training():
    net = UNet(in_channels=1, channels=16, channel_mult=(1,), attention_levels=(), dropout=0.5)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.3)
    x, t = torch.randn(2, 1, 6, 6), torch.ones(2)
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))


def test_mlp_and_build_registry():
    net = nets.build({"kind": "mlp", "dim": 5, "width": 32, "depth": 2, "num_classes": 2})
    assert net(torch.randn(7, 5), torch.rand(7), torch.zeros(7, dtype=torch.long)).shape == (7, 5)
    with pytest.raises(ValueError, match="expects"):
        net(torch.randn(7, 4), torch.rand(7))
    with pytest.raises(ValueError, match="unknown network kind 'resnet'"):
        nets.build({"kind": "resnet"})
    with pytest.raises(ValueError, match=r"no option\(s\) \['chanels'\]"):
        nets.build({"kind": "unet", "chanels": 3})
    with pytest.raises(ValueError, match="attention_levels"):
        nets.build({"kind": "unet", "channel_mult": [1, 2], "attention_levels": [2]})


def _text_unet(**kw):
    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
               head_channels=8, context_dim=12, **kw)
    for p in net.parameters():  # leave the zero init so the output depends on everything
        torch.nn.init.normal_(p, std=0.1)
    return net


def _text_dit():
    from undiffuse.nets.dit import DiT

    torch.manual_seed(0)
    net = DiT(in_channels=1, width=32, depth=2, heads=4, context_dim=12)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return net


@pytest.mark.parametrize("build", [_text_unet, _text_dit], ids=["unet", "dit"])
def test_cross_attention_reads_unmasked_tokens_only(build):
    net = build()
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    ctx = torch.randn(2, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    out = net(x, t, context=ctx, context_mask=mask)
    changed = ctx.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 12) * 10
    torch.testing.assert_close(net(x, t, context=changed, context_mask=mask), out)
    changed[0, 0] += 1.0  # an attended token does change the output
    assert not torch.allclose(net(x, t, context=changed, context_mask=mask)[0], out[0])
    # one context row is shared by the whole batch
    torch.testing.assert_close(net(x, t, context=ctx[:1], context_mask=mask[:1])[0], out[0])


def test_image_condition_is_concatenated_and_checked():
    net = _text_unet(cond_channels=1)
    x, t, ctx = torch.randn(2, 1, 8, 8), torch.rand(2), torch.randn(2, 3, 12)
    a = net(x, t, context=ctx, cond_image=torch.zeros(2, 1, 8, 8))
    b = net(x, t, context=ctx, cond_image=torch.ones(2, 1, 8, 8))
    assert a.shape == (2, 1, 8, 8) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="cond_image"):
        net(x, t, context=ctx)
    with pytest.raises(ValueError, match="cond_image must have shape"):
        net(x, t, context=ctx, cond_image=torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="needs a context"):
        net(x, t, cond_image=torch.zeros(2, 1, 8, 8))
    plain = UNet(in_channels=1, channels=16, channel_mult=(1,), num_res_blocks=1, attention_levels=())
    with pytest.raises(ValueError, match="without text conditioning"):
        plain(x, t, context=ctx)
    with pytest.raises(ValueError, match="without an image condition"):
        plain(x, t, cond_image=x)
