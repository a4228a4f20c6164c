"""SHA-256 of files, in one place: read in 1 MiB blocks, memoised while a file's identity
(path, inode, size, modification time) stays the same."""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache


@lru_cache(maxsize=256)
def _digest(path: str, inode: int, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 (hex) of a file's bytes; a file rewritten in place (new size or mtime) is hashed again."""
    st = os.stat(path)
    return _digest(os.path.abspath(path), st.st_ino, st.st_mtime_ns, st.st_size)


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
