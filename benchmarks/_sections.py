"""Shared by the benchmark scripts: replace one marked section of BENCHMARKS.md."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from pathlib import Path


def log(*a) -> None:
    """Progress to stderr, flushed (stdout carries a child's JSON result)."""
    print(*a, file=sys.stderr, flush=True)


def peak_mib() -> float:
    """This process's peak resident memory in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_avg() -> float:
    """The 1-minute load average (how busy the shared machine was)."""
    return round(os.getloadavg()[0], 2)


def machine() -> dict:
    """The CPU, core count (ignoring OMP limits), system and library versions, today's date."""
    import diffusers
    import torch

    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), platform.machine())
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, env=env).stdout.strip() or str(os.cpu_count())
    return {"cpu": cpu, "nproc": int(nproc), "system": f"{platform.system()} {platform.release()} {platform.machine()}",
            "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "date": _dt.date.today().isoformat()}


def command() -> str:
    """The command line that ran this benchmark, as a user would retype it."""
    return "python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def duration_label(seconds: float) -> str:
    """``300`` -> "5 min", ``90`` -> "1.5 min", ``30`` -> "30 s"."""
    if seconds >= 60:
        return f"{seconds / 60:g} min" if seconds % 60 == 0 else f"{seconds / 60:.1f} min"
    return f"{seconds:g} s"


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


def rerun_arguments(parser) -> None:
    """The options of benchmarks that keep their results in a results.json: --render (only
    rewrite the section), --again (re-measure rows already there), --write FILE."""
    parser.add_argument("--render", action="store_true", help="rewrite the section from the saved results")
    parser.add_argument("--again", action="store_true", help="re-measure rows already in results.json")
    parser.add_argument("--write", help="update this Markdown file's section")


def load_results(path) -> dict:
    """A benchmark's merged results (row name -> numbers, plus ``_meta``), or {}."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(path, results: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


def table_section(start: str, end: str, title: str, intro: str, header: list[str], results: dict, row) -> str:
    """A marked Markdown section: title, intro, a table with one ``row(name, numbers)`` list of
    cells per result (``_``-prefixed keys skipped), then ``_meta["notes"]``."""
    lines = [start, title, "", intro, "", "| " + " | ".join(header) + " |",
             "| --- |" + " ---: |" * (len(header) - 1)]
    for name, r in results.items():
        if not name.startswith("_"):
            lines.append("| " + " | ".join([name, *row(r)]) + " |")
    lines += ["", results.get("_meta", {}).get("notes", ""), end]
    return "\n".join(lines) + "\n"


def finish(args, results: dict, markdown) -> int:
    """Print ``markdown(results)`` and, with ``--write FILE``, put it in that file's section."""
    section = markdown(results)
    if args.write:
        marks = [line for line in section.splitlines() if line.startswith("<!-- ")]
        write_section(args.write, section, marks[0], marks[-1])
    print(section)
    return 0
