"""The source manifest of a prepared dataset: every source file with size and sha256.

Saved as JSON next to the prepared records. `digest` (sha256 of the canonical manifest: sorted
paths, compact JSON) identifies the exact source bytes a dataset was built from, the same on any
machine, so runs can record which data they saw.

`options` are the prepare switches that change the stored images although the source bytes are
the same (`--tiff-as-jpeg`): they enter the digest, so a dataset prepared with them is told
apart from the default one. They are left out of the canonical form when there are none, so the
digests of default preparations stay what they always were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rssc_mlflow.files import atomic_write_text, hash_file

MANIFEST_FILE = "rssc_manifest.json"


@dataclasses.dataclass(frozen=True, order=True)
class FileEntry:
    path: str  # relative to the dataset root, '/'-separated
    size: int
    sha256: str


def hash_files(root: Path, relpaths: Iterable[str], workers: int | None = None) -> list[FileEntry]:
    """FileEntry for each path under `root`; threads, because hashlib releases the GIL."""
    rels = list(relpaths)
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashed = list(pool.map(lambda r: hash_file(root / r), rels))
    return [FileEntry(r, size, sha256) for r, (size, (sha256,)) in zip(rels, hashed)]


@dataclasses.dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]
    options: tuple[tuple[str, Any], ...] = ()  # sorted (name, JSON value) pairs

    @classmethod
    def of(cls, entries: Iterable[FileEntry],
           options: Mapping[str, Any] | None = None) -> Manifest:
        return cls(tuple(sorted(entries)), tuple(sorted((options or {}).items())))

    def canonical(self) -> bytes:
        rows = [[e.path, e.size, e.sha256] for e in sorted(self.files)]
        data: dict[str, Any] = {"files": rows}
        if self.options:
            data["options"] = dict(self.options)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False,
                          sort_keys=True).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "num_files": len(self.files),
                               "total_bytes": self.total_bytes}
        if self.options:
            out["options"] = dict(self.options)
        out["files"] = [[e.path, e.size, e.sha256] for e in self.files]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls.of((FileEntry(p, int(s), h) for p, s, h in data["files"]),
                      data.get("options"))


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST_FILE
    return atomic_write_text(path, json.dumps(manifest.to_json(), ensure_ascii=False))


def read_manifest(folder: Path) -> Manifest:
    return Manifest.from_json(json.loads((folder / MANIFEST_FILE).read_text()))
