"""Condition adherence: how often a classifier reads the requested class.

For digits the reader is the in-project digits classifier (``features.digits_classifier``,
98-99% held-out accuracy on real digits, so it bounds what can be measured); any other
``classify(images) -> logits`` callable can be given. A text prompt that names a class is
scored the same way, with the class it names as the request.
"""
from __future__ import annotations

import numpy as np
import torch

from undiffuse.metrics.features import _as_images, digits_classifier


def class_adherence(samples, requested, *, classify=None, class_names=None) -> dict:
    """Share of ``samples`` (images in [0, 1]) read as their ``requested`` class.

    Returns ``adherence`` (overall), ``per_class`` (name -> rate), ``confusion`` (requested x
    read counts) and the protocol. ``classify`` defaults to the digits classifier, which
    needs 1x8x8 images.
    """
    x = np.asarray(samples, np.float64)
    req = np.asarray(requested).astype(np.int64).reshape(-1)
    if len(req) != len(x):
        raise ValueError(f"requested labels: {len(req)} for {len(x)} samples; give one per sample")
    reader = "caller's classifier"
    if classify is None:
        if x.shape[1:] not in ((1, 8, 8), (8, 8), (64,)):
            raise ValueError(f"the built-in reader is the digits classifier (1x8x8 images); samples have shape "
                             f"{x.shape[1:]}: pass classify=")

        net = digits_classifier().double()
        x_t = _as_images(x, "samples")

        def classify(images):
            with torch.no_grad():
                return net(images)

        reader = "in-project digits classifier"
        logits = torch.cat([classify(x_t[i:i + 1024]) for i in range(0, len(x_t), 1024)])
    else:
        with torch.no_grad():
            logits = torch.as_tensor(classify(torch.as_tensor(x)))
    num_classes = logits.shape[1]
    if req.min() < 0 or req.max() >= num_classes:
        raise ValueError(f"requested labels must be in 0..{num_classes - 1}, got {req.min()}..{req.max()}")
    read = logits.argmax(1).numpy()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (req, read), 1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    per_class = {names[k]: float(confusion[k, k] / confusion[k].sum()) for k in range(num_classes)
                 if confusion[k].sum()}
    return {"adherence": float((read == req).mean()), "per_class": per_class, "confusion": confusion.tolist(),
            "protocol": {"samples": len(x), "reader": reader, "classes_requested": int(len(np.unique(req)))}}
