"""Control extractors and control adherence, on pictures whose answer is known."""
import numpy as np
import pytest
import torch

from undiffuse.data import control_maps as cm
from undiffuse.metrics import control


def _square(size=32, lo=8, hi=24, channels=3):
    x = torch.zeros(1, channels, size, size)
    x[:, :, lo:hi, lo:hi] = 1.0
    return x


def test_edges_trace_the_outline_of_a_square():
    e = cm.edges(_square())[0, 0].numpy() > 0.5
    assert e.shape == (32, 32) and e.any()
    ys, xs = np.nonzero(e)
    # every edge pixel lies within one pixel of the square's boundary (rows/cols 7.5 and 23.5)
    dist = np.minimum.reduce([np.abs(ys - 7.5), np.abs(ys - 23.5), np.abs(xs - 7.5), np.abs(xs - 23.5)])
    assert dist.max() <= 1.0
    assert not e[12:20, 12:20].any() and not e[:4].any()  # nothing inside or far outside
    # all four sides are found
    assert e[6:10, 12:20].any() and e[22:26, 12:20].any() and e[12:20, 6:10].any() and e[12:20, 22:26].any()


def test_sketch_is_thin_and_follows_the_shape():
    s = cm.sketch(_square(64, 16, 48))[0, 0].numpy() > 0.5
    assert s.any() and not s[24:40, 24:40].any()
    # one pixel thin: no 2x2 block is all stroke
    blocks = s[:-1, :-1] & s[1:, :-1] & s[:-1, 1:] & s[1:, 1:]
    assert not blocks.any()


def test_mask_fills_the_foreground_and_reads_alpha():
    x = torch.ones(1, 3, 32, 32)  # white background
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    r2 = (yy - 16) ** 2 + (xx - 16) ** 2
    disc, hole = r2 <= 100, r2 <= 9
    x[0, 1:, disc] = 0.0  # a red disc
    x[0, :, hole] = 1.0  # with a white hole: filled as foreground
    m = cm.mask(x)[0, 0] > 0.5
    assert torch.equal(m, disc)
    rgba = torch.cat([x, disc[None, None].float()], 1)
    assert torch.equal(cm.mask(rgba)[0, 0] > 0.5, disc)


def test_layout_and_lowres():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    lay = cm.layout(x, cells=4)
    assert lay.shape == x.shape
    block = x[:, :, 4:8, 8:12].mean((2, 3))
    assert torch.allclose(lay[:, :, 5, 9], block, atol=1e-6) and torch.allclose(lay[:, :, 4, 8], lay[:, :, 7, 11])
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(cm.lowres(flat), flat, atol=1e-6) and cm.lowres(x).shape == x.shape
    assert cm.channels("layout", 3) == 3 and cm.channels("edges", 3) == 1 and cm.channels("lowres", 1) == 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown control extractor 'canny'; allowed: edges"):
        cm.extract("canny", _square())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        cm.edges(torch.zeros(32, 32))
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        cm.edges(torch.zeros(1, 2, 8, 8))


def test_edge_f1_counts_with_one_pixel_tolerance():
    c = np.zeros((1, 32, 32), bool)
    c[0, 5, 0:10] = True  # a line of 10 pixels
    s = np.zeros_like(c)
    s[0, 5, 0:4] = True  # its first 4 pixels ...
    s[0, 20, [0, 5, 10, 15]] = True  # ... and 4 pixels far away
    # precision 4/8; recall: columns 0..4 of the line are within one pixel of the sample: 5/10
    assert control.edge_f1(c, s)[0] == pytest.approx(0.5)
    shifted = np.roll(c, 1, axis=1)  # one row down: all within tolerance
    assert control.edge_f1(c, shifted)[0] == 1.0
    assert control.edge_f1(c, shifted, tolerance=0)[0] == 0.0 and control.edge_f1(c, s, tolerance=0)[0] == pytest.approx(4 / 9)  # P 4/8, R 4/10
    assert control.edge_f1(c, np.roll(c, 2, axis=1), tolerance=2)[0] == 1.0
    assert control.edge_f1(c, np.roll(c, 3, axis=1))[0] == 0.0
    assert control.edge_f1(np.zeros_like(c), np.zeros_like(c))[0] == 1.0
    assert control.edge_f1(c, np.zeros_like(c))[0] == 0.0


def test_control_f1_and_mask_iou_of_images():
    x = _square().numpy()
    assert control.control_f1(x, cm.edges(x).numpy()) == 1.0
    other = _square(lo=2, hi=12).numpy()
    assert control.control_f1(other, cm.edges(x).numpy()) < 0.3
    m = cm.mask(x).numpy()
    assert control.mask_iou(x, m) == 1.0
    # square 8..24 vs 2..12: intersection 4x4 = 16, union 256 + 100 - 16 = 340
    assert control.mask_iou(other, m) == pytest.approx(16 / 340)
