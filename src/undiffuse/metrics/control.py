"""Control adherence: how well samples follow the structure they were steered by.

- ``control_f1``: edge F1 between each control edge map and the edges of its sample (the
  same ``edges`` extractor, ``data.control_maps``), with a tolerance of one pixel: an edge
  pixel counts as matched when the other map has an edge within the 3x3 neighbourhood
  (chessboard distance 1). Precision is the matched share of the sample's edge pixels, recall
  that of the control's; F1 per image, averaged over the images (an image where neither map
  has an edge scores 1, one where only one has edges 0). ``control_f1_exact``: the same with
  no tolerance. On small centred images the tolerant score saturates: two random real mnist5k
  digits score 0.69 (exact: 0.24), so both are reported.
- ``mask_iou``: intersection over union of each control mask and its sample's foreground
  (the ``mask`` extractor), averaged (two empty masks: 1).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from undiffuse.data import control_maps

_NEIGHBOURS = np.ones((3, 3), bool)


def _binary(maps, what: str) -> np.ndarray:
    m = np.asarray(maps)
    if m.ndim == 4:
        if m.shape[1] != 1:
            raise ValueError(f"{what}: one-channel maps expected, got {m.shape[1]} channels")
        m = m[:, 0]
    if m.ndim != 3:
        raise ValueError(f"{what}: maps (N, 1, H, W) or (N, H, W) expected, got shape {m.shape}")
    return m > 0.5


def edge_f1(control_edges, sample_edges, tolerance: int = 1) -> np.ndarray:
    """Per-image F1 of two stacks of binary edge maps, matched within ``tolerance`` pixels
    (chessboard distance; 0: the same pixel)."""
    a, b = _binary(control_edges, "control edges"), _binary(sample_edges, "sample edges")
    if a.shape != b.shape:
        raise ValueError(f"control edges {a.shape} and sample edges {b.shape} differ in shape")
    out = np.empty(len(a))
    for i, (c, s) in enumerate(zip(a, b)):
        if not c.any() and not s.any():
            out[i] = 1.0
            continue
        near_c = ndimage.binary_dilation(c, _NEIGHBOURS, iterations=tolerance) if tolerance else c
        near_s = ndimage.binary_dilation(s, _NEIGHBOURS, iterations=tolerance) if tolerance else s
        precision = (s & near_c).sum() / max(s.sum(), 1)
        recall = (c & near_s).sum() / max(c.sum(), 1)
        out[i] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return out


def control_f1(samples, control_edges, tolerance: int = 1) -> float:
    """Mean edge F1 of ``samples`` (images in [0, 1]) against their control edge maps."""
    return float(edge_f1(control_edges, control_maps.edges(samples).numpy(), tolerance).mean())


def iou(control_masks, sample_masks) -> np.ndarray:
    a, b = _binary(control_masks, "control masks"), _binary(sample_masks, "sample masks")
    if a.shape != b.shape:
        raise ValueError(f"control masks {a.shape} and sample masks {b.shape} differ in shape")
    inter = (a & b).sum((1, 2))
    union = (a | b).sum((1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def mask_iou(samples, control_masks) -> float:
    """Mean IoU of ``samples``' foregrounds (images in [0, 1]) against their control masks."""
    return float(iou(control_masks, control_maps.mask(samples).numpy()).mean())


def control_scores(samples, controls, extractors) -> dict:
    """The adherence scores of ``samples`` to the control maps they were steered by:
    ``controls`` (N, K, H, W), ``extractors`` naming each channel's extractor (a map of
    several channels repeats its name). ``control_f1`` for edges, ``sketch_f1`` for sketches
    (the same F1 on the samples' sketches), ``mask_iou`` for masks and ``control_mae`` (mean
    absolute difference of the samples' maps to the controls) for layout and lowres."""
    controls, names = np.asarray(controls, np.float64), [str(e) for e in extractors]
    if controls.ndim != 4 or controls.shape[1] != len(names):
        raise ValueError(f"controls {controls.shape} need one extractor name per channel; got {len(names)}")
    out, k = {}, 0
    while k < len(names):
        name = names[k]
        width = 1  # a colour map's channels repeat its name
        while name in ("layout", "lowres") and width < 3 and k + width < len(names) and names[k + width] == name:
            width += 1
        block = controls[:, k:k + width]
        if name == "edges":
            out["control_f1"] = control_f1(samples, block)
            out["control_f1_exact"] = control_f1(samples, block, tolerance=0)
        elif name == "sketch":
            out["sketch_f1"] = float(edge_f1(block, control_maps.sketch(samples).numpy()).mean())
        elif name == "mask":
            out["mask_iou"] = mask_iou(samples, block)
        else:
            mine = control_maps.extract(name, samples).numpy()[:, :width]
            out["control_mae"] = float(np.abs(mine - block).mean())
        k += width
    return out
