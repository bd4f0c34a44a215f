"""`rssc verify`: a prepared dataset re-hashed; every changed, missing or extra file named."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rssc_mlflow.cli import app
from rssc_mlflow.data import prepare as prep
from rssc_mlflow.data.manifest import MANIFEST_FILE
from rssc_mlflow.data.verify import verify
from rssc_mlflow.errors import DatasetError

runner = CliRunner()
SHARD = "rssc_ucm-train.tfrecord-00000-of-00001"


@dataclasses.dataclass
class Prepared:
    data_dir: Path  # a private copy of the prepared data dir: damage it freely
    manual_dir: Path

    @property
    def folder(self) -> Path:
        return prep.prepared_dir("ucm")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """UCM prepared once (1 tiny image per class); tests get copies of it."""
    from rssc_mlflow.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("verify")
    manual = write_synthetic(root / "synth", ["ucm"], images_per_class=1, image_size=16)["ucm"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSSC_DATA_DIR", str(root / "data"))
        prep.prepare("ucm", manual)
        yield root / "data", manual


@pytest.fixture()
def ucm(template: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Prepared:
    data_dir = shutil.copytree(template[0], tmp_path / "data")
    monkeypatch.setenv("RSSC_DATA_DIR", str(data_dir))
    return Prepared(data_dir, template[1])


def _cli(*args: str):
    return runner.invoke(app, ["verify", *args])


def test_intact_dataset_is_ok_even_after_reading_it(ucm: Prepared) -> None:
    recorded = json.loads((ucm.folder / prep.FILES_FILE).read_text())
    paths = [p for p, _, _ in recorded["files"]]
    # Every prepared file but the digest list and the marker (checked on its own).
    assert {SHARD, "dataset_info.json", "features.json", prep.METADATA_FILE, prep.RECORDS_FILE,
            MANIFEST_FILE} <= set(paths)
    assert prep.FILES_FILE not in paths and prep.COMPLETE_FILE not in paths
    assert len(list(prep.load_prepared("ucm").examples())) == 21  # TFDS reads write nothing
    report = verify("ucm")
    assert report.ok and report.checked == len(paths) and not report.notes
    result = _cli("ucm")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ucm: OK, {len(paths)} prepared files (")
    assert "match their digests" in lines[0] and report.digest[:16] in lines[0]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_changed_file_named(ucm: Prepared) -> None:
    _flip_byte(ucm.folder / SHARD)  # same size, other bytes: only the sha256 can tell
    (ucm.folder / "features.json").write_text("{}")  # other size
    report = verify("ucm")
    assert not report.ok and set(report.changed) == {SHARD, "features.json"}
    assert "recorded" in report.changed[SHARD] and "bytes" in report.changed["features.json"]
    assert not report.missing and not report.extra


def test_missing_file_named(ucm: Prepared) -> None:
    (ucm.folder / prep.RECORDS_FILE).unlink()
    report = verify("ucm")
    assert report.missing == [prep.RECORDS_FILE] and not report.changed and not report.extra


def test_extra_file_named(ucm: Prepared) -> None:
    (ucm.folder / "sub").mkdir()
    (ucm.folder / "sub" / "stray.tfrecord").write_bytes(b"x")
    report = verify("ucm")
    assert report.extra == ["sub/stray.tfrecord"] and not report.changed and not report.missing


def test_marker_and_manifest_must_agree(ucm: Prepared) -> None:
    (ucm.folder / prep.COMPLETE_FILE).write_text("0" * 64 + "\n")
    report = verify("ucm")
    assert set(report.changed) == {prep.COMPLETE_FILE}
    (ucm.folder / prep.COMPLETE_FILE).unlink()
    assert verify("ucm").missing == [prep.COMPLETE_FILE]


def test_cli_lists_every_problem_and_exits_1(ucm: Prepared) -> None:
    _flip_byte(ucm.folder / SHARD)
    (ucm.folder / "label.labels.txt").unlink()
    (ucm.folder / "notes.txt").write_text("mine")
    result = _cli("ucm")
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    assert f"changed: {SHARD} (sha256 " in result.stdout
    assert "missing: label.labels.txt" in out and "extra: notes.txt" in out
    err = result.stderr
    assert err.startswith("error: ucm: the prepared dataset in ")
    assert "is damaged: 1 changed, 1 missing, 1 extra file(s)" in err
    assert "rssc prepare ucm --manual-dir DIR --force" in err and "Traceback" not in result.output


def test_dataset_prepared_without_file_digests(ucm: Prepared) -> None:
    # What a dataset prepared by an older rssc looks like: no rssc_files.json.
    (ucm.folder / prep.FILES_FILE).unlink()
    _flip_byte(ucm.folder / SHARD)  # cannot be seen without the digests
    report = verify("ucm")
    assert report.ok and report.checked == 0
    assert "the TFDS files cannot be checked" in report.notes[0]
    result = _cli("ucm")
    assert result.exit_code == 0
    assert "warning: rssc_files.json is missing (prepared by an older rssc)" in result.stderr
    assert "`rssc prepare ucm --manual-dir DIR --force`" in result.stderr
    assert "source manifest, metadata and marker agree" in result.stdout
    # What it can still check: the source manifest against the dataset digest.
    manifest = json.loads((ucm.folder / MANIFEST_FILE).read_text())
    manifest["files"][0][1] += 1
    (ucm.folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert set(verify("ucm").changed) == {MANIFEST_FILE}
    # The advertised fix works: a forced prepare records the digests again.
    prep.prepare("ucm", ucm.manual_dir, force=True)
    report = verify("ucm")
    assert report.ok and report.checked > 0 and not report.notes


def test_not_prepared_and_unknown_key(data_env: Path) -> None:
    with pytest.raises(DatasetError, match="dataset 'ucm' is not prepared"):
        verify("ucm")
    result = _cli("ucm")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: dataset 'ucm' is not prepared: run `rssc prepare ucm")
    result = _cli("ucmm")
    assert result.exit_code == 1 and "Unknown dataset 'ucmm'" in result.stderr
