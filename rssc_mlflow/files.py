"""Files: writing one so that a reader, or a run killed mid-write, never sees half of it, and
hashing one."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_CHUNK = 1 << 20


def atomic_write_text(path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` all at once: to a temp file in the same folder (os.replace is
    atomic only within one file system), fsynced so a crash cannot leave an empty file in its
    place, then renamed over `path`. The temp file is removed when anything fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def hash_file(path: Path, *algorithms: str) -> tuple[int, tuple[str, ...]]:
    """(size, hex digests) of a file, one digest per hashlib algorithm named (sha256 when none
    is), in one streamed pass so a large file is read once and never sits in memory."""
    hashes = [hashlib.new(name) for name in algorithms or ("sha256",)]
    size = 0
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            for h in hashes:
                h.update(chunk)
            size += len(chunk)
    return size, tuple(h.hexdigest() for h in hashes)
