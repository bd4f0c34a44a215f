"""files: atomic_write_text (all or nothing, no temp file left behind) and hash_file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from rssc_mlflow import files


def test_writes_replaces_and_leaves_no_temp_file(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_text("old")
    assert files.atomic_write_text(path, "névé\n") == path
    assert path.read_bytes() == "névé\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path, monkeypatch):
    path = tmp_path / "a.json"
    path.write_text("old")

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_the_data_is_fsynced_before_the_rename(tmp_path: Path, monkeypatch):
    order: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])
    files.atomic_write_text(tmp_path / "a.json", "x")
    assert order == ["fsync", "replace"]


def test_hash_file_matches_hashlib_over_the_whole_file(tmp_path: Path, monkeypatch):
    data = os.urandom(3 * 1000 + 7)
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    monkeypatch.setattr(files, "_CHUNK", 1000)  # several chunks, the last one short
    assert files.hash_file(path) == (len(data), (hashlib.sha256(data).hexdigest(),))
    assert files.hash_file(path, "sha256", "md5") == (
        len(data), (hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert files.hash_file(empty, "md5") == (0, (hashlib.md5(b"").hexdigest(),))


def test_hash_file_reads_the_file_once_for_all_digests(tmp_path: Path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 2500)
    monkeypatch.setattr(files, "_CHUNK", 1000)
    opened: list[Path] = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: (opened.append(self),
                                                             real_open(self, *a, **k))[1])
    files.hash_file(path, "sha256", "md5", "sha1")
    assert opened == [path]

