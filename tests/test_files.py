"""files.atomic_write_text: all or nothing, no temp file left behind."""

from __future__ import annotations

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
