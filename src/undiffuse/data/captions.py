"""Captions for a folder of images, in the two layouts people already use.

* ``metadata.jsonl`` at the folder's root (the Hugging Face ``imagefolder`` layout): one JSON
  object per line with ``file_name`` (the image's path relative to the root, ``/``-separated)
  and ``text`` (a caption, or a list of wordings of it). Blank lines are skipped.
* A sidecar ``NAME.txt`` beside ``NAME.png`` (or .jpg/.jpeg/.webp): each non-blank line is one
  wording.

An image may have one source only: an image named in ``metadata.jsonl`` that also has a
sidecar file is an error. A line that is not a JSON object with a string ``file_name`` and a
non-empty ``text``, a ``file_name`` given twice and (with ``strict``) a ``file_name`` that names
no image are errors naming the file and line number; otherwise entries for missing images and
images without a caption are named in a :class:`DataWarning`.
"""
from __future__ import annotations

import json
import os
import warnings

from undiffuse.data.base import DataError, DataWarning

METADATA = "metadata.jsonl"
SIDECAR = ".txt"
CAPTION_FILES = (METADATA,)  # names at the root that are caption files, not data
NAMED = 5  # how many uncaptioned images a warning names before "and N more"


def is_caption_file(rel: str) -> bool:
    """True for ``metadata.jsonl`` at the root and ``*.txt`` sidecars (not images, not bad files)."""
    return rel in CAPTION_FILES or rel.lower().endswith(SIDECAR)


def _texts(value, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise DataError(f"{where}: 'text' must be a caption string or a list of them, got {value!r}")
    texts = [t.strip() for t in items if t.strip()]
    if not texts:
        raise DataError(f"{where}: 'text' is empty")
    return texts


def read_metadata(root: str) -> dict[str, tuple[list[str], int]]:
    """``file_name -> (wordings, line number)`` from ``root/metadata.jsonl`` ({} without one)."""
    path = os.path.join(root, METADATA)
    if not os.path.isfile(path):
        return {}
    out: dict[str, tuple[list[str], int]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the caption file ({e})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) or "text" not in row:
            raise DataError(f"{where}: expected an object with 'file_name' (a string) and 'text'")
        name = os.path.normpath(row["file_name"]).replace(os.sep, "/")
        if name in out:
            raise DataError(f"{where}: {name!r} was already captioned on line {out[name][1]}")
        out[name] = (_texts(row["text"], where), number)
    return out


def _sidecar(root: str, rel: str) -> list[str] | None:
    path = os.path.join(root, os.path.splitext(rel)[0] + SIDECAR)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the caption file ({e})") from None
    if not texts:
        raise DataError(f"{path}: the caption file is empty")
    return texts


def folder_captions(root: str, images: list[str], strict: bool) -> list[list[str]] | None:
    """Wordings for each image of ``images`` (paths relative to ``root``), ``[]`` for an
    uncaptioned one; None when the folder has no caption files at all."""
    table = read_metadata(root)
    out = []
    for rel in images:
        side = _sidecar(root, rel)
        if rel in table and side is not None:
            raise DataError(f"{os.path.join(root, rel)}: captioned twice, on line {table[rel][1]} of {METADATA} "
                            f"and in {os.path.splitext(rel)[0] + SIDECAR}; keep one")
        out.append(table[rel][0] if rel in table else side or [])
    if not table and not any(out):
        return None
    known = set(images)
    for name, (_, number) in table.items():
        if name not in known:
            _problem(f"{os.path.join(root, METADATA)} line {number}: {name!r} is not an image of the folder", strict)
    missing = [rel for rel, texts in zip(images, out) if not texts]
    if missing:
        more = f" and {len(missing) - NAMED} more" if len(missing) > NAMED else ""
        _problem(f"{root}: {len(missing)} image(s) have no caption ({', '.join(missing[:NAMED])}{more}); they train "
                 f"with the empty caption (unconditional) under --conditioning text", strict)
    return out


def _problem(message: str, strict: bool) -> None:
    if strict:
        raise DataError(message)
    warnings.warn(message, DataWarning, stacklevel=4)
