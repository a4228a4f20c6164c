"""The on-disk cache folder (text embeddings, feature networks, rendered datasets)."""
from __future__ import annotations

import os


def cache_dir() -> str:
    """``$UNDIFFUSE_CACHE`` if set (and non-empty), else ``~/.cache/undiffuse``."""
    return os.environ.get("UNDIFFUSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "undiffuse")
