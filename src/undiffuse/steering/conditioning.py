"""What the network is conditioned on, as the keyword arguments it takes.

* ``class``: ``class_labels`` (B,), -1 for the null class;
* ``text``: ``context`` (B, L, 384) token embeddings and ``context_mask`` (B, L) of a caption;
  the empty caption "" is the null condition;
* ``lowres``: ``cond_image``, the image average-pooled by ``factor`` and brought back to full
  size by nearest up-sampling (so the network sees exactly the low-resolution pixels).

Training draws the condition of each sample from the data (for text, one of its own caption
wordings, or of those written for its label, chosen at random) and replaces it by the null condition with
probability ``dropout`` (Ho & Salimans 2022), which is what classifier-free guidance needs.
Every random draw comes from the trainer's generator, so resumed runs stay exact.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from undiffuse.data import control_maps
from undiffuse.steering import text
from undiffuse.steering.frames import frame_tasks

Tensor = torch.Tensor


def lowres_image(x: Tensor, factor: int) -> Tensor:
    """``x`` average-pooled by ``factor`` then up-sampled back (nearest) to its size."""
    return F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="nearest")


def upsample_condition(low: Tensor, factor: int) -> Tensor:
    """A low-resolution image (B, C, h, w) as the full-size ``cond_image``."""
    return F.interpolate(low, scale_factor=factor, mode="nearest")


class TextTable:
    """Encoded captions: every wording of every row plus "" (last, the null caption). A row is
    an item of captioned data (``Dataset.captions``) or a class of labelled data (the captions
    ``text.caption_table`` writes for it); a row without wordings always gets the null caption."""

    def __init__(self, wordings: list[list[str]], max_tokens: int, per_item: bool):
        self.per_item = per_item
        self.captions = [w for row in wordings for w in row] + [""]
        # each distinct caption encoded and stored once (captioned clips repeat a few hundred wordings)
        distinct = list(dict.fromkeys(self.captions))
        where = {c: i for i, c in enumerate(distinct)}
        self.encoded_row = torch.tensor([where[c] for c in self.captions])
        enc = text.encode_cached(distinct, max_tokens=max_tokens)
        self.tokens, self.mask = enc.tokens, enc.mask
        self.null = len(self.captions) - 1
        starts = torch.tensor([0] + [len(row) for row in wordings]).cumsum(0)
        self.start, self.count = starts[:-1], starts[1:] - starts[:-1]

    @classmethod
    def for_dataset(cls, dataset, max_tokens: int) -> "TextTable":
        if dataset.captions is not None:
            return cls(dataset.captions, max_tokens, per_item=True)
        captions, labels = text.caption_table(dataset.name, list(dataset.class_names))
        wordings = [[c for c, k in zip(captions, labels) if k == row] for row in range(dataset.num_classes)]
        empty = [dataset.class_names[k] for k, row in enumerate(wordings) if not row]
        if empty:
            raise ValueError(f"no captions were written for class(es) {empty}")
        return cls(wordings, max_tokens, per_item=False)

    def pick(self, rows: Tensor, u: Tensor) -> Tensor:
        """Caption index per sample: wording ``floor(u * count)`` of its row (null if it has none)."""
        count = self.count[rows]
        choice = (u * count).long().clamp(max=(count - 1).clamp(min=0))
        return torch.where(count > 0, self.start[rows] + choice, self.null)

    def first(self, rows: Tensor) -> Tensor:
        """Each row's first wording (null if it has none)."""
        return self.pick(rows, torch.zeros(len(rows)))

    def rows(self, index: Tensor, device) -> dict:
        row = self.encoded_row[torch.as_tensor(index).long()]
        return {"context": self.tokens[row].to(device), "context_mask": self.mask[row].to(device)}


class TrainingConditions:
    """Per-batch conditioning keyword arguments for the trainer."""

    def __init__(self, cfg, dataset, *, concat_control: bool = False, given_frames: bool = False):
        # cfg: the run's ``conditioning`` group (kind, dropout, factor, max_tokens, control); with
        # ``concat_control`` the control maps go to the network as ``cond_image`` (on its grid);
        # with ``given_frames`` (a video network with frame_cond) each clip gets a task's given
        # frames (``steering.frames``)
        self.cfg, self.data, self.concat_control = cfg, dataset, concat_control
        self.given_frames = given_frames
        self.text = TextTable.for_dataset(dataset, cfg.max_tokens) if cfg.kind == "text" else None
        self._maps: Tensor | None = None

    def __call__(self, index: Tensor, x0: Tensor, generator: torch.Generator) -> dict:
        out = self._condition(index, x0, generator)
        if self.given_frames:  # the mask only: ``frames.with_given`` adds the frames of this process's rows
            out["frame_mask"] = frame_tasks(len(index), x0.shape[1], generator).to(x0.device)
        if self.cfg.control:
            out.update(self.control_condition(index, x0.device))
        return out

    def control_condition(self, index, device="cpu") -> dict:
        """The control maps of rows ``index`` as the network takes them."""
        maps = self.control_maps(index).to(device)
        if self.concat_control:
            return {"cond_image": control_maps.to_grid(maps, self.data.shape[-1])}
        return {"control": maps}

    def control_maps(self, index) -> Tensor:
        """The control maps of data rows ``index`` (``conditioning.control``'s extractor on the
        training images, decoded images for latent data), computed once for the whole set."""
        if self._maps is None:
            images = getattr(self.data, "pixels", self.data)
            self._maps = control_maps.extract(self.cfg.control, images.to_unit(images.get(torch.arange(len(images)))))
        return self._maps[torch.as_tensor(index).long()]

    def _condition(self, index: Tensor, x0: Tensor, generator: torch.Generator) -> dict:
        kind, p = self.cfg.kind, self.cfg.dropout
        if kind == "none":
            return {}
        if kind == "lowres":
            return {"cond_image": lowres_image(x0, self.cfg.factor)}
        labels = self.data.labels_of(index)
        u = torch.rand(2, len(index), generator=generator)  # [0]: dropout, [1]: caption choice
        drop = u[0] < p
        if kind == "class":
            return {"class_labels": torch.where(drop, -1, labels.long()).to(x0.device)}
        rows = torch.as_tensor(index).long() if self.text.per_item else labels.long()
        index = torch.where(drop, self.text.null, self.text.pick(rows, u[1]))
        return self.text.rows(index, x0.device)


def text_condition(prompts: list[str], max_tokens: int, device="cpu") -> dict:
    """The ``context``/``context_mask`` of prompts (one row each) for sampling."""
    enc = text.encode_cached(list(prompts), max_tokens=max_tokens)
    return {"context": enc.tokens.to(device), "context_mask": enc.mask.to(device)}
