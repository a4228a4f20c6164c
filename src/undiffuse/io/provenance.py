"""Provenance of generated images: what made them, written into the PNG itself.

Every PNG undiffuse writes for a generated image carries two text chunks:

* ``parameters``: one line ``key: value, ...`` (the convention image tools and galleries
  read for generation settings);
* ``provenance``: a JSON record with the model's name and SHA-256 checksum (of the weights
  file the samples came from), sampler, steps, seed, guidance, software version and the
  UTC time of generation (``$SOURCE_DATE_EPOCH`` when set, so that files can be reproduced
byte for byte).

(The older ``undiffuse`` chunk, the JSON of the parameters alone, is still written by
``undiffuse sample`` and ``generate.save_images``; every writer of these chunks goes through
``writers.write_samples``.) :func:`read` gets them back; ``undiffuse verify IMAGE`` reports
them. Re-encoding (e.g. to JPEG) or stripping chunks removes them; the invisible watermark
(``undiffuse.io.watermark``, embedded by default in images at least 64 px a side, payload the
first 32 bits of ``model_sha256``) survives JPEG q75, a half-size round trip and a 10% crop
at the sizes measured in BENCHMARKS.md. The record's ``watermark`` field says whether the
image was marked (``embedded``, ``too small``, ``off``); :func:`read_watermark` looks for it.
"""
from __future__ import annotations

import io
import json
import os
import time

import numpy as np
from PIL import Image, UnidentifiedImageError

from undiffuse.io import watermark as wm
from undiffuse.io.images import png_bytes as png_bytes  # an (H, W, C) uint8 array as PNG bytes with text chunks
from undiffuse.utils.hashing import file_sha256
from undiffuse.utils.version import __version__

RECORD_KEY = "provenance"
PARAMETERS_KEY = "parameters"
FORMAT = "undiffuse-provenance/1"


def software() -> str:
    return f"undiffuse {__version__}"


def file_checksum(path: str) -> str:
    """SHA-256 (hex) of a file, cached while its size and modification time stay the same."""
    return file_sha256(path)


def model_checksum(checkpoint: str, weights: str = "ema") -> str:
    """SHA-256 of the weights file a loaded run's samples come from (``ema`` or ``model``)."""
    return file_checksum(os.path.join(checkpoint, f"{weights}.safetensors"))


def record(model: str, checksum: str, *, sampler: str, steps: int, seed: int, guidance: float = 1.0,
           created: float | None = None, **extra) -> dict:
    """The JSON provenance record of one image (``extra``: class, prompt, step, ...)."""
    if created is None:  # SOURCE_DATE_EPOCH: the reproducible-builds way to pin the time
        epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
        created = float(epoch) if epoch.isdigit() else time.time()
    return {"format": FORMAT, "model": model, "model_sha256": checksum, "sampler": sampler, "steps": int(steps),
            "seed": int(seed), "guidance": float(guidance), **extra, "software": software(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))}


def parameters_text(params: dict) -> str:
    """One line, ``key: value, ...``, the form image tools read from the ``parameters`` chunk."""
    return ", ".join(f"{k}: {v}" for k, v in params.items())


def png_text(rec: dict) -> dict[str, str]:
    """The PNG text chunks for one record."""
    shown = {k: v for k, v in rec.items() if k not in ("format", "created")}
    return {PARAMETERS_KEY: parameters_text(shown), RECORD_KEY: json.dumps(rec, sort_keys=True)}


class NotAnImage(ValueError):
    """The file is missing or is not an image PIL can open."""


def read(source) -> dict:
    """``{"parameters": str | None, "provenance": dict | None, "problems": [...]}`` from a PNG
    path or PNG bytes. A malformed record is reported in ``problems``, not raised."""
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        img.load()
    except (OSError, UnidentifiedImageError) as e:
        raise NotAnImage(f"cannot read an image from {source if isinstance(source, str) else 'bytes'}: {e}") from None
    text = dict(getattr(img, "text", {}) or {})
    out = {"parameters": text.get(PARAMETERS_KEY), "provenance": None, "problems": []}
    raw = text.get(RECORD_KEY)
    if raw is not None:
        try:
            rec = json.loads(raw)
        except ValueError:
            out["problems"].append("the provenance chunk is not valid JSON")
        else:
            missing = [k for k in ("model", "model_sha256", "sampler", "steps", "seed", "software", "created")
                       if not isinstance(rec, dict) or k not in rec]
            if missing:
                out["problems"].append(f"the provenance record lacks {', '.join(missing)}")
            else:
                out["provenance"] = rec
    return out


def read_watermark(source, rec: dict | None = None) -> dict:
    """Look for the invisible mark in a PNG/JPEG path or bytes (``watermark.detect``), checking
    its payload against ``rec["model_sha256"]`` when a record is given. Images under one tile
    (32 px) a side are not checked (``{"checked": False, "reason": ...}``)."""
    img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    arr = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
    if min(arr.shape[:2]) < wm.TILE:
        return {"checked": False, "detected": False,
                "reason": f"the image is {arr.shape[1]}x{arr.shape[0]}; the mark needs at least {wm.TILE} px a side"}
    expected = wm.payload_of(rec["model_sha256"]) if rec and isinstance(rec.get("model_sha256"), str) else None
    try:
        found = wm.detect(arr, expected=expected)
    except ValueError:  # the record's checksum is not hex
        found = wm.detect(arr)
    return {"checked": True, **found}
