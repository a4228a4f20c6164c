"""Shared by the benchmark scripts: replace one marked section of BENCHMARKS.md."""
from __future__ import annotations

import os
from pathlib import Path


def write_section(path, section: str, start: str, end: str) -> None:
    """Replace the lines from ``start`` to ``end`` (markers included) with ``section``, or append
    it when the markers are missing; the file is replaced atomically."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = section.rstrip("\n") + "\n"
    lines = text.splitlines(keepends=True)
    starts = [i for i, l in enumerate(lines) if l.strip() == start]
    ends = [i for i, l in enumerate(lines) if l.strip() == end]
    if starts and ends and ends[0] > starts[0]:
        new = "".join(lines[:starts[0]]) + section + "".join(lines[ends[0] + 1:])
    else:
        new = text.rstrip("\n") + "\n\n" + section
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
