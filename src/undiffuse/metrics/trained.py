"""What the in-project evaluation networks (the digits features, the emoji image-text scorer)
share: deterministic training that leaves the caller's torch state alone, and safetensors
weights cached atomically under a content-hash name."""
from __future__ import annotations

import contextlib
import json
import os
import warnings

import torch
from safetensors.torch import load_file, save_file

from undiffuse.utils.atomic import write_atomic


@contextlib.contextmanager
def deterministic(threads: int):
    """``threads`` torch threads, deterministic algorithms and a forked global RNG for the
    block; the caller's thread count, flags and RNG state come back afterwards."""
    old = torch.get_num_threads()
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(old)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)


def save_weights(net: torch.nn.Module, path: str, metadata: dict) -> None:
    """The network's state as safetensors at ``path`` (atomic), with string ``metadata``."""
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda tmp: save_file(state, tmp, metadata=meta), suffix=".safetensors.tmp")


def load_weights(make, path: str, what: str) -> torch.nn.Module | None:
    """``make()`` (built without touching the global RNG) with the weights of ``path`` (eval
    mode), or None (with a warning naming ``what``) when the file is missing, unreadable, of
    another shape or not finite."""
    if not os.path.exists(path):
        return None
    try:
        with torch.random.fork_rng(devices=[]):
            net = make()
        state = load_file(path)
        net.load_state_dict(state, strict=True)
        if not all(torch.isfinite(v).all() for v in state.values()):
            raise ValueError("non-finite weights")
    except Exception as e:  # corrupt / truncated / foreign file: the caller retrains and overwrites
        warnings.warn(f"cached {what} weights {path} unreadable ({type(e).__name__}: {e}); retraining",
                      RuntimeWarning, stacklevel=3)
        return None
    return net.eval()
