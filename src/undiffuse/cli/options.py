"""What the subcommand modules share: the parser class whose usage errors exit with status 2,
option types, the options several commands take (``--device``, ``--set``), and the usage
checks they repeat (an output folder or file, a run to load). Every check names the option.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from undiffuse.config import parse_duration, parse_value
from undiffuse.inference import generate as gen
from undiffuse.inference.posthoc_ema import PosthocError
from undiffuse.io.checkpoint import CheckpointError
from undiffuse.io.content_filter import load_filter
from undiffuse.utils.acceleration import device_option

DEVICE_HELP = "cpu (default), cuda, cuda:1, ..."


class Parser(argparse.ArgumentParser):
    def error(self, message) -> NoReturn:  # argparse's own usage errors: status 2, message names the option
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------- option types

def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), parse_value(v)


def sigma_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 8,0 or 80,3,0, got {text!r}") from None


# ----------------------------------------------------------------------------- shared options

def add_device(parser, *, default: str | None = "cpu", help: str = DEVICE_HELP) -> None:
    """``--device``: checked when parsed (a bad device is a usage error)."""
    parser.add_argument("--device", type=device_option, default=default, help=help)


def add_set(parser, help: str | None = None) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``, a list of (key, value)."""
    parser.add_argument("--set", dest="overrides", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                        help=help)


# ----------------------------------------------------------------------------- usage checks (status 2)

def check_folder(parser, path: str | None, option: str = "--out") -> None:
    """An output folder may be missing or a folder, not a file."""
    if path and os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"{option} {path!r} exists and is not a folder")


def check_file(parser, path: str | None, option: str = "--out") -> None:
    """An output file may be missing or a file, not a folder."""
    if path and os.path.isdir(path):
        parser.error(f"{option} {path!r} is a folder; give a file name")


def load_run(parser, path: str, option: str = "--checkpoint", **kwargs) -> gen.LoadedRun:
    """:func:`generate.load_run`; a run that cannot be loaded is a usage error naming ``option``."""
    try:
        return gen.load_run(path, **kwargs)
    except (CheckpointError, PosthocError) as e:
        parser.error(f"{option}: {e}")


def load_content_filter(parser, spec: str | None):
    """The ``--content-filter MODULE:CALLABLE`` function, or None; a bad one is a usage error."""
    if not spec:
        return None
    try:
        return load_filter(spec)
    except ValueError as e:
        parser.error(f"--content-filter: {e}")


def log(message: str) -> None:
    """Progress and notes go to stderr; stdout carries the command's JSON result."""
    print(message, file=sys.stderr)
