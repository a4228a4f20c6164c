"""Atomic file writes: write a temporary file in the target's folder, then rename it over the
target, so a reader never sees a half-written file and an old file survives a failed write."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable


def write_atomic(path, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Call ``write(tmp_path)`` then move the result to ``path``; the temp file is removed on error."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, data, indent: int = 1) -> None:
    def _write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent)

    write_atomic(path, _write)


def write_text(path, text: str) -> None:
    def _write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    write_atomic(path, _write)
