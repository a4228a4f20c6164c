"""The content-filter hook: a user-supplied callable, named by import path, that sees each
generated output and its request and may refuse it.

``fn(output, request)``: ``output`` is the (H, W, C) uint8 image (or the sample vector),
``request`` a dict of the generation parameters and the output's provenance record
(``model``, ``seed``, ``sampler``, ``steps``, ``guidance``, ``class``/``prompt``, ...).
Returning ``None`` or ``True`` keeps the output; ``False`` or a non-empty string (the reason)
refuses it, and so does raising (fail closed). Callers never write or return a refused
output and log the refusal.
"""
from __future__ import annotations

import importlib
from typing import Callable


def load_filter(spec: str) -> Callable:
    """``module:callable`` (``module:Class.method`` works too) -> the callable."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"content filter {spec!r} must be MODULE:CALLABLE, e.g. mypackage.filters:check")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"content filter module {module!r} cannot be imported: {e}") from None
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"content filter {spec!r}: {module!r} has no {name!r}")
    if not callable(obj):
        raise ValueError(f"content filter {spec!r} is not callable")
    return obj


def refusal(fn: Callable | None, output, request: dict) -> str | None:
    """None to keep ``output``, else the reason it is refused."""
    if fn is None:
        return None
    try:
        verdict = fn(output, request)
    except Exception as e:
        return f"content filter raised {type(e).__name__}: {e}"
    if verdict is None or verdict is True:
        return None
    return verdict if isinstance(verdict, str) and verdict else "refused by the content filter"
