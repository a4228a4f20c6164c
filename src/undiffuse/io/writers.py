"""The one output path for generated samples: :func:`write_samples`.

Every caller (``undiffuse sample``, the Python API's ``generate.save_images``, the HTTP server)
hands its samples here, and each sample goes through the same steps:

1. **content filter** (``undiffuse.io.content_filter``): sees the 8-bit image (or the sample
   array) and the request merged with the sample's provenance record; a refused sample is
   never encoded, and is listed in ``Written.refused``;
2. **file format with its metadata**: the format's writer (:data:`WRITERS`, keyed by format
   name) encodes the kept samples, with the generation parameters in the file's metadata;
3. **provenance record**: the sample's record (``undiffuse.io.provenance``) goes into the same
   metadata, with
4. **watermark**: the status of the invisible mark (``undiffuse.io.watermark``) the writer
   embedded (``embedded``, ``too small``, ``off``), payload the record's weights checksum.

With ``out`` the files are written atomically (a folder of files, or one file for formats that
hold every sample, like ``npz``); with ``out=None`` nothing touches the disk and the encoded
bytes come back in :class:`Written` (the server answers HTTP requests with them).

A new format (WAV for audio, GIF for video, SDF for molecules) is one function registered with
:func:`writer`: it gets a :class:`Batch` of kept samples (its keyword options come from
``write_samples(**options)``) and returns :class:`File` s, each per-sample file naming its
:class:`Item`.
"""
from __future__ import annotations

import inspect
import io
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from undiffuse.io import provenance as prov
from undiffuse.io import watermark as wm
from undiffuse.io.audio import spectrogram, wav_bytes
from undiffuse.io.content_filter import refusal
from undiffuse.io.images import grid as tile
from undiffuse.io.images import png_bytes, scatter, to_uint8, upscale, write_bytes
from undiffuse.io.video import gif_bytes, mp4_bytes, strip


@dataclass
class Item:
    """One sample the content filter kept, on its way to a file."""
    row: int                  # its row in ``samples``
    index: int                # its position in the request: seed ``seed + index``, file ``{index:06d}.<ext>``
    seed: int
    sample: np.ndarray        # the row as given (images in [0, 1])
    view: np.ndarray          # what the content filter saw: (H, W, C) uint8 for images, else the sample
    extra: dict               # its own parameters (e.g. its class), shown in its file's metadata
    params: dict | None       # shared parameters + ``extra`` + its seed; None: the metadata shows the record
    record: dict | None       # its provenance record (the writer adds ``watermark``); None: no record
    data: bytes | None = None  # its encoded file (formats with one file per sample)
    path: str | None = None    # where that file was written


@dataclass
class Batch:
    """What a format's writer gets: the kept samples and the request they belong to."""
    items: list[Item]
    samples: np.ndarray       # every row given (refused ones too; ``kept()`` has the others)
    seed: int                 # the request's first seed
    params: dict | None       # shared parameters (with ``refused_seeds`` when a filter ran)
    filtered: bool            # a content filter ran
    watermark: bool
    key: str | None           # watermark key (None: ``$UNDIFFUSE_WATERMARK_KEY`` or the default)

    def kept(self) -> np.ndarray:
        """The kept rows of ``samples`` (the array itself when none was left out)."""
        rows = [it.row for it in self.items]
        return self.samples if rows == list(range(len(self.samples))) else self.samples[rows]

    def mark(self, image: np.ndarray, record: dict | None) -> tuple[np.ndarray, str]:
        """``watermark.mark`` with the record's weights checksum as payload (0 without a record)."""
        return wm.mark(image, record.get("model_sha256") if record else None, enabled=self.watermark, key=self.key)

    @staticmethod
    def text(params: dict | None, record: dict | None) -> dict[str, str]:
        """Text metadata of one file: with ``params``, a ``parameters`` line and the ``undiffuse``
        JSON chunk of them, then the ``provenance`` record; without, the line shows the record."""
        if params is None:
            return prov.png_text(record) if record is not None else {}
        text = {prov.PARAMETERS_KEY: prov.parameters_text(params), "undiffuse": json.dumps(params, default=str)}
        if record is not None:
            text[prov.RECORD_KEY] = json.dumps(record, sort_keys=True)
        return text


@dataclass
class File:
    """One encoded file. ``name`` is its name in the output folder, or None when the format writes
    one file holding every sample (``out`` is then that file's path)."""
    name: str | None
    data: bytes
    item: Item | None = None  # the sample a per-sample file holds


@dataclass
class Written:
    items: list[Item]                                 # the kept samples: record (with watermark), bytes
    refused: list[dict]                               # {"index", "seed", "reason"} per refused sample
    files: list[File] = field(default_factory=list)   # every encoded file, in order
    paths: list[str] = field(default_factory=list)    # the files written (empty with ``out=None``)


WRITERS: dict[str, Callable] = {}


def writer(name: str):
    """Register ``fn(batch, **options) -> list[File]`` as the writer of format ``name``."""
    def register(fn):
        WRITERS[name] = fn
        return fn
    return register


def write_samples(samples, out: str | None = None, *, format: str = "png", seed: int = 0,
                  params: dict | None = None, per_sample: Sequence[dict] | None = None,
                  records: Sequence[dict] | None = None, index: Sequence[int] | None = None,
                  content_filter: Callable | None = None, request: dict | None = None,
                  watermark: bool = True, key: str | None = None, **options) -> Written:
    """Filter, encode (with metadata, provenance and watermark) and write ``samples``.

    ``samples``: (N, C, H, W) images in [0, 1], or (N, ...) arrays (e.g. (N, D) points), a
    tensor or an array. Row ``k`` is the request's sample ``index[k]`` (default ``k``), with seed
    ``seed + index[k]``; ``per_sample[k]`` holds its own parameters (e.g. ``{"class": "3"}``)
    and ``records[k]`` its provenance record (``provenance.record``; none without ``records``).

    ``params``: the generation parameters shown in each file (``parameters`` line and
    ``undiffuse`` JSON chunk, with the sample's own and its seed); None shows the record instead.
    ``content_filter``: ``fn(output, request)`` (``content_filter.refusal``), called with
    ``{**request, **record}`` (``request`` defaults to ``params``); when one is given, ``params``
    in the files gain ``refused_seeds``. ``watermark``/``key``: the invisible mark of images.

    ``format``: a key of :data:`WRITERS` (``png``: ``out`` is a folder of ``grid.png`` or
    ``scatter.png`` plus ``000000.png``...; ``npz``: ``out`` is the file). ``options`` go to the
    format's writer (png: ``individual``, ``grid``, ``grid_scale``; npz: ``labels``, ``prompts``,
    ``controls``, ``control_extractors``; wav: ``sample_rate``, ``individual``, ``grid``; gif:
    ``fps``, ``individual``, ``grid``, ``grid_scale``, ``mp4``).
    With ``out=None`` nothing is written and the bytes are in the result. Nothing is written,
    not even the folder, when every sample is refused.
    """
    if format not in WRITERS:
        raise ValueError(f"unknown format {format!r}; allowed: {', '.join(WRITERS)}")
    fn = WRITERS[format]
    allowed = [p for p in inspect.signature(fn).parameters if p != "batch"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"format {format!r} has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(allowed) or 'none'}")
    arr = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    n = len(arr)
    index = list(range(n)) if index is None else [int(i) for i in index]
    for name, seq in (("index", index), ("per_sample", per_sample), ("records", records)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} samples; give one per sample")
    views = to_uint8(arr) if arr.ndim == 4 else arr
    request = params if request is None else request
    kept, refused = [], []
    for k in range(n):
        s = seed + index[k]
        extra = dict(per_sample[k]) if per_sample is not None else {}
        record = dict(records[k]) if records is not None else None
        shown = record if record is not None else {**(params or {}), **extra, "seed": s}
        reason = refusal(content_filter, views[k], {**(request or {}), **shown})
        if reason is None:
            kept.append(Item(k, index[k], s, arr[k], views[k], extra, None, record))
        else:
            refused.append({"index": index[k], "seed": s, "reason": reason})
    if params is not None:
        params = dict(params)
        if content_filter is not None:
            params["refused_seeds"] = [r["seed"] for r in refused]
        for it in kept:
            it.params = {**params, **it.extra, "seed": it.seed}
    written = Written(kept, refused)
    if not kept:
        return written
    batch = Batch(kept, arr, seed, params, content_filter is not None, watermark, key)
    written.files = fn(batch, **options)
    for f in written.files:
        if f.item is not None:
            f.item.data = f.data
    if out is not None:
        folder = any(f.name is not None for f in written.files)
        if folder and os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"output {out!r} exists and is not a folder; format {format!r} writes a folder")
        if not folder and os.path.isdir(out):
            raise ValueError(f"output {out!r} is a folder; format {format!r} writes one file")
        if folder:
            os.makedirs(out, exist_ok=True)
        for f in written.files:
            path = out if f.name is None else os.path.join(out, f.name)
            write_bytes(path, f.data, suffix=os.path.splitext(f.name or out)[1] or ".tmp")
            written.paths.append(path)
            if f.item is not None:
                f.item.path = path
    return written


# ----------------------------------------------------------------------------- formats

@writer("png")
def write_png(batch: Batch, *, individual: bool = True, grid: bool = True, grid_scale: int = 4) -> list[File]:
    """Images: ``grid.png`` (every kept image tiled on white, upscaled ``grid_scale`` times,
    marked, with the grid's record: the first sample's without its own parameters, seed the
    request's first, ``count``) and one PNG per image (``individual``). (N, D) points:
    ``scatter.png``, a density picture of the first two coordinates (``grid``), parameters only."""
    samples = batch.samples
    if samples.ndim == 2:
        if not grid:
            return []
        text = {} if batch.params is None else {
            prov.PARAMETERS_KEY: prov.parameters_text({**batch.params, "seed": batch.seed})}
        return [File("scatter.png", png_bytes(scatter(batch.kept()), text))]
    if samples.ndim != 4:
        raise ValueError(f"format 'png' writes (N, C, H, W) images or (N, D) points; got samples of shape "
                         f"{tuple(samples.shape)} (use format 'npz')")
    if grid_scale < 1:
        raise ValueError(f"grid_scale must be >= 1, got {grid_scale}")
    items, files = batch.items, []
    if grid:
        first = items[0]
        picture, status = batch.mark(upscale(tile(np.stack([it.view for it in items])), grid_scale), first.record)
        record = None
        if first.record is not None:
            record = {k: v for k, v in first.record.items() if k not in first.extra}
            record.update(seed=batch.seed, count=len(items), watermark=status)
        text = Batch.text(None, record)
        if batch.params is not None:  # the line names the seed range, the JSON chunk the first seed and count
            seeds = f"{first.seed}..{items[-1].seed}"
            text = {prov.PARAMETERS_KEY: prov.parameters_text({**batch.params, "seed": seeds}),
                    "undiffuse": json.dumps({**batch.params, "seed": batch.seed, "count": len(items)}, default=str)}
            if record is not None:
                text[prov.RECORD_KEY] = json.dumps(record, sort_keys=True)
        files.append(File("grid.png", png_bytes(picture, text)))
    if individual:
        for it in items:
            image, status = batch.mark(it.view, it.record)
            if it.record is not None:
                it.record["watermark"] = status
            files.append(File(f"{it.index:06d}.png", png_bytes(image, Batch.text(it.params, it.record)), it))
    return files


def npz_bytes(samples: np.ndarray, params: dict, *, labels=None, prompts=None, controls=None,
              control_extractors=None, truth=None) -> bytes:
    """An ``.npz`` of ``samples``, the JSON string ``parameters`` (and ``labels``, int64, and
    ``prompts``, unicode strings, one per sample; ``controls``, float32 (N, K, H, W), the control
    maps each sample was steered by, with ``control_extractors`` naming the extractor of each
    of the K channels; ``truth``, float32, the true clips a prediction or interpolation is
    scored against, as many frames as the input had)."""
    arrays = {"samples": samples, "parameters": np.array(json.dumps(params))}
    if truth is not None:
        arrays["truth"] = np.asarray(truth, np.float32)
    if controls is not None:
        arrays["controls"] = np.asarray(controls, np.float32)
        arrays["control_extractors"] = np.array(list(control_extractors), dtype=str)
    if labels is not None:
        arrays["labels"] = np.asarray(labels, np.int64)
    if prompts is not None:
        arrays["prompts"] = np.array(list(prompts), dtype=str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@writer("npz")
def write_npz(batch: Batch, *, labels=None, prompts=None, controls=None, control_extractors=None,
              truth=None) -> list[File]:
    """One ``.npz`` of every kept sample as given; ``parameters``: the shared parameters, the
    request's first ``seed``, ``count`` (and the kept ``seeds`` when a filter ran); ``labels``
    (one per row given, e.g. each sample's class index) and ``prompts`` (one per row) of the
    kept rows."""
    params = {**(batch.params or {}), "seed": batch.seed, "count": len(batch.items)}
    if batch.filtered:
        params["seeds"] = [it.seed for it in batch.items]
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(batch.samples):
            raise ValueError(f"labels has {len(labels)} entries for {len(batch.samples)} samples; give one per sample")
        labels = labels[[it.row for it in batch.items]]
    if prompts is not None:
        if len(prompts) != len(batch.samples):
            raise ValueError(f"prompts has {len(prompts)} entries for {len(batch.samples)} samples; give one per sample")
        prompts = [prompts[it.row] for it in batch.items]
    if controls is not None:
        if len(controls) != len(batch.samples):
            raise ValueError(f"controls has {len(controls)} maps for {len(batch.samples)} samples; give one per sample")
        controls = np.asarray(controls)[[it.row for it in batch.items]]
    if truth is not None:
        if len(truth) != len(batch.samples):
            raise ValueError(f"truth has {len(truth)} clips for {len(batch.samples)} samples; give one per sample")
        truth = np.asarray(truth)[[it.row for it in batch.items]]
    return [File(None, npz_bytes(batch.kept(), params, labels=labels, prompts=prompts, controls=controls,
                                 control_extractors=control_extractors, truth=truth))]


@writer("wav")
def write_wav(batch: Batch, *, sample_rate: int, individual: bool = True, grid: bool = True) -> list[File]:
    """Waveforms ``(N, 1, T)`` (or ``(N, T)``) in [-1, 1]: one 16-bit PCM ``000000.wav`` per clip
    (``individual``), its parameters and provenance record in the file's comment
    (``io.audio``), and ``spectrograms.png`` (``grid``): every kept clip's spectrogram tiled, with
    the shared parameters. Sound carries no invisible mark: records say ``watermark: "none
    (audio)"``."""
    samples = batch.samples
    if samples.ndim not in (2, 3) or (samples.ndim == 3 and samples.shape[1] != 1):
        raise ValueError(f"format 'wav' writes mono waveforms (N, 1, T) or (N, T); got samples of shape "
                         f"{tuple(samples.shape)}")
    files = []
    if grid:
        pictures = np.stack([spectrogram(it.sample, sample_rate) for it in batch.items])
        text = {} if batch.params is None else {
            prov.PARAMETERS_KEY: prov.parameters_text({**batch.params, "seed": f"{batch.items[0].seed}.."
                                                       f"{batch.items[-1].seed}", "sample_rate": sample_rate})}
        files.append(File("spectrograms.png", png_bytes(tile(pictures, nrow=min(4, len(pictures)), pad=2), text)))
    if individual:
        for it in batch.items:
            if it.record is not None:
                it.record["watermark"] = "none (audio)"
            meta = {"parameters": it.params, "provenance": it.record, "sample_rate": sample_rate}
            title = prov.parameters_text(it.params) if it.params is not None else None
            files.append(File(f"{it.index:06d}.wav", wav_bytes(it.sample, sample_rate, meta, title), it))
    return files


@writer("gif")
def write_gif(batch: Batch, *, fps: float = 8, individual: bool = True, grid: bool = True, grid_scale: int = 2,
              mp4: bool = False) -> list[File]:
    """Videos ``(N, T, C, H, W)`` in [0, 1]: ``strip.png`` (``grid``): every kept clip as a row of
    frames (``io.video.strip``), upscaled ``grid_scale`` times, marked, with the shared
    parameters (seed range, ``fps``); one looping ``000000.gif`` per clip (``individual``) and,
    with ``mp4`` (needs PyAV), ``000000.mp4`` beside it. Each clip file carries
    ``{"parameters", "provenance", "fps"}`` as JSON (``io.video``: the GIF's comment, the MP4's
    ``comment`` tag) and the parameters line as its title. Every frame gets the invisible mark
    like a PNG (``watermark``: ``embedded`` from 64 px up, else ``too small``); the GIF keeps a
    marked grey clip bit for bit, while the quantisation of colour GIFs (over 256 colours) and
    H.264 may weaken the mark."""
    samples = batch.samples
    if samples.ndim != 5:
        raise ValueError(f"format 'gif' writes videos (N, T, C, H, W); got samples of shape {tuple(samples.shape)}")
    if grid_scale < 1:
        raise ValueError(f"grid_scale must be >= 1, got {grid_scale}")
    items, files = batch.items, []
    clips = [to_uint8(it.sample) for it in items]  # (T, H, W, C) each
    if grid:
        picture, _ = batch.mark(upscale(strip(np.stack(clips)), grid_scale), items[0].record)
        text = {}
        if batch.params is not None:
            shown = {**batch.params, "seed": f"{items[0].seed}..{items[-1].seed}", "fps": fps}
            text = {prov.PARAMETERS_KEY: prov.parameters_text(shown),
                    "undiffuse": json.dumps({**batch.params, "seed": batch.seed, "count": len(items), "fps": fps},
                                            default=str)}
        files.append(File("strip.png", png_bytes(picture, text)))
    if individual:
        for it, clip in zip(items, clips):
            marked = [batch.mark(frame, it.record) for frame in clip]
            clip = np.stack([frame for frame, _ in marked])
            if it.record is not None:
                it.record["watermark"] = marked[0][1]
            meta = {"parameters": it.params, "provenance": it.record, "fps": fps}
            title = prov.parameters_text(it.params) if it.params is not None else None
            files.append(File(f"{it.index:06d}.gif", gif_bytes(clip, fps, meta, title), it))
            if mp4:
                files.append(File(f"{it.index:06d}.mp4", mp4_bytes(clip, fps, meta, title)))
    return files
