"""What the network is conditioned on, as the keyword arguments it takes.

* ``class``: ``class_labels`` (B,), -1 for the null class;
* ``text``: ``context`` (B, L, 384) token embeddings and ``context_mask`` (B, L) of a caption;
  the empty caption "" is the null condition;
* ``lowres``: ``cond_image``, the image average-pooled by ``factor`` and brought back to full
  size by nearest up-sampling (so the network sees exactly the low-resolution pixels).

Training draws the condition of each sample from the data (for text, one of the captions
written for its label, chosen at random) and replaces it by the null condition with
probability ``dropout`` (Ho & Salimans 2022), which is what classifier-free guidance needs.
Every random draw comes from the trainer's generator, so resumed runs stay exact.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from undiffuse.steering import text

Tensor = torch.Tensor


def lowres_image(x: Tensor, factor: int) -> Tensor:
    """``x`` average-pooled by ``factor`` then up-sampled back (nearest) to its size."""
    return F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="nearest")


def upsample_condition(low: Tensor, factor: int) -> Tensor:
    """A low-resolution image (B, C, h, w) as the full-size ``cond_image``."""
    return F.interpolate(low, scale_factor=factor, mode="nearest")


class TextTable:
    """Encoded captions of a labelled dataset: every wording of every label plus "" (last)."""

    def __init__(self, dataset_name: str, class_names: list[str], max_tokens: int):
        captions, labels = text.caption_table(dataset_name, class_names)
        self.captions = list(captions) + [""]
        enc = text.encode_cached(self.captions, max_tokens=max_tokens)
        self.tokens, self.mask = enc.tokens, enc.mask
        self.null = len(self.captions) - 1
        labels = torch.as_tensor(labels)
        self.by_label = [torch.nonzero(labels == k)[:, 0] for k in range(len(class_names))]
        empty = [class_names[k] for k, rows in enumerate(self.by_label) if len(rows) == 0]
        if empty:
            raise ValueError(f"no captions were written for class(es) {empty}")

    def pick(self, labels: Tensor, u: Tensor) -> Tensor:
        """Caption index per sample: wording ``floor(u * count)`` of its label."""
        out = torch.empty(len(labels), dtype=torch.long)
        for i, (k, r) in enumerate(zip(labels.tolist(), u.tolist())):
            rows = self.by_label[k]
            out[i] = rows[min(int(r * len(rows)), len(rows) - 1)]
        return out

    def rows(self, index: Tensor, device) -> dict:
        return {"context": self.tokens[index].to(device), "context_mask": self.mask[index].to(device)}


class TrainingConditions:
    """Per-batch conditioning keyword arguments for the trainer."""

    def __init__(self, cfg, dataset):  # cfg: the run's ``conditioning`` group (kind, dropout, factor, max_tokens)
        self.cfg, self.data = cfg, dataset
        self.text = TextTable(dataset.name, list(dataset.class_names), cfg.max_tokens) if cfg.kind == "text" else None

    def __call__(self, index: Tensor, x0: Tensor, generator: torch.Generator) -> dict:
        kind, p = self.cfg.kind, self.cfg.dropout
        if kind == "none":
            return {}
        if kind == "lowres":
            return {"cond_image": lowres_image(x0, self.cfg.factor)}
        labels = self.data.labels_of(index).long()
        u = torch.rand(2, len(labels), generator=generator)  # [0]: dropout, [1]: caption choice
        drop = u[0] < p
        if kind == "class":
            return {"class_labels": torch.where(drop, -1, labels).to(x0.device)}
        index = torch.where(drop, self.text.null, self.text.pick(labels, u[1]))
        return self.text.rows(index, x0.device)


def text_condition(prompts: list[str], max_tokens: int, device="cpu") -> dict:
    """The ``context``/``context_mask`` of prompts (one row each) for sampling."""
    enc = text.encode_cached(list(prompts), max_tokens=max_tokens)
    return {"context": enc.tokens.to(device), "context_mask": enc.mask.to(device)}
