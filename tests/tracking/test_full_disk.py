"""A full disk while writing artifacts: the run is FAILED, the user is told, nothing registered.

The fault is injected into MLflow's local artifact repository (what the SQLite store writes
through): when asked to store the model, it writes part of the files, truncates the largest one,
then raises ENOSPC, like a disk filling up mid-copy. A second case fills the disk at the first
artifact of a run (the split manifest, before any training). Both are also injected for real,
on a 4 MiB tmpfs holding the experiment's artifacts (skipped where mounting is not permitted).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from typer.testing import CliRunner

from rssc_mlflow import commands
from rssc_mlflow.cli import app
from rssc_mlflow.errors import ModelError
from rssc_mlflow.tracking import registry, runs

pytestmark = pytest.mark.slow
DISK_FULL = "No space left on device"
runner = CliRunner()


@pytest.fixture()
def store(world, monkeypatch, tmp_path) -> mlflow.MlflowClient:
    """The shared prepared data with a store of this test's own (nothing else registered)."""
    world.activate(monkeypatch, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.MlflowClient()


def _fill_disk_when(monkeypatch, wanted) -> list[str]:
    """Make LocalArtifactRepository.log_artifacts fail with ENOSPC for dirs `wanted` accepts,
    after leaving a half-written copy behind. Returns the dirs it failed on."""
    real = LocalArtifactRepository.log_artifacts
    hits: list[str] = []

    def log_artifacts(self, local_dir, artifact_path=None):
        if not wanted(Path(local_dir)):
            return real(self, local_dir, artifact_path)
        hits.append(str(local_dir))
        real(self, local_dir, artifact_path)
        written = [p for p in Path(self.artifact_dir, artifact_path or "").rglob("*") if p.is_file()]
        biggest = max(written, key=lambda p: p.stat().st_size)
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
        raise OSError(errno.ENOSPC, DISK_FULL)

    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", log_artifacts)
    return hits


def _only_run(store: mlflow.MlflowClient):
    found = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(found) == 1
    return store.get_run(found[0].info.run_id)


def test_disk_full_while_logging_the_model(store, monkeypatch) -> None:
    hits = _fill_disk_when(monkeypatch, lambda d: (d / "MLmodel").is_file())
    result = runner.invoke(app, ["pretrain", "--source", "ucm", "--profile", "smoke"])
    assert len(hits) == 1  # the fault hit the model upload, after training and evaluation
    assert result.exit_code == 1
    assert "\nerror: " in "\n" + result.stderr and DISK_FULL in result.stderr
    assert "Traceback" not in result.stderr
    assert "Free space" in result.stderr and "--resume" in result.stderr
    run = _only_run(store)
    assert run.info.status == "FAILED"
    assert run.data.tags[runs.TAG_ERROR] == f"OSError: [Errno 28] {DISK_FULL}"
    assert "test_accuracy" in run.data.metrics  # what was logged before the fault is kept
    assert mlflow.active_run() is None
    # No registry version, and the half-written model is marked FAILED, never READY.
    assert store.search_model_versions("name LIKE 'rssc-resnet50-%'") == []
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         output_format="list")
    assert [m.status.name for m in logged] == ["FAILED"]
    # Nothing downstream can pick the half-written model up.
    with pytest.raises(ModelError, match=r"'rssc-resnet50-ucm' is not registered yet.*"
                                         r"rssc pretrain --source ucm --profile smoke"):
        registry.resolve_source("ucm", profile="smoke")


def test_disk_full_at_the_first_artifact_fails_before_training(store, monkeypatch) -> None:
    # mlflow.log_dict (the split manifest) goes through log_artifact (one file): fail that one.
    def log_artifact(self, local_file, artifact_path=None):
        raise OSError(errno.ENOSPC, DISK_FULL)

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", log_artifact)
    trained = []
    monkeypatch.setattr(commands.fit_lib, "fit", lambda *a, **k: trained.append(1))
    with pytest.raises(OSError, match=DISK_FULL):
        commands.pretrain("ucm", profile="smoke")
    assert trained == []  # failed at the split manifest: no GPU time spent
    run = _only_run(store)
    assert run.info.status == "FAILED" and DISK_FULL in run.data.tags[runs.TAG_ERROR]
    assert store.search_model_versions("name LIKE 'rssc-resnet50-%'") == []


def test_cli_reports_a_full_disk_as_one_paragraph(monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, DISK_FULL)

    monkeypatch.setattr(commands, "pretrain", full)
    result = runner.invoke(app, ["pretrain", "--source", "ucm", "--profile", "smoke"])
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    assert DISK_FULL in result.stderr and "Free space" in result.stderr


@pytest.fixture()
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs; we run as root in CI), skipped where mounting is not
    permitted: the simulations above then stand alone."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _artifacts_on(disk: Path, store: mlflow.MlflowClient) -> None:
    """The `rssc` experiment keeps its artifacts on `disk`; the store itself is elsewhere."""
    store.create_experiment(runs.experiment_name(), artifact_location=(disk / "art").as_uri())


def test_real_full_disk_while_logging_the_model(store, small_disk) -> None:
    """4 MiB take the split manifest and the evaluation artifacts, not ResNet-50's ~90 MB."""
    _artifacts_on(small_disk, store)
    result = runner.invoke(app, ["pretrain", "--source", "ucm", "--profile", "smoke"])
    assert result.exit_code == 1, result.output[-3000:]
    assert "\nerror: " in "\n" + result.stderr and DISK_FULL in result.stderr
    assert "Traceback" not in result.stderr and "Free space" in result.stderr
    run = _only_run(store)
    assert run.info.status == "FAILED"
    assert run.data.tags[runs.TAG_ERROR].startswith(f"OSError: [Errno 28] {DISK_FULL}")
    assert "test_accuracy" in run.data.metrics  # the evaluation was logged before the model
    assert store.search_model_versions("name LIKE 'rssc-resnet50-%'") == []
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         output_format="list")
    assert [m.status.name for m in logged] == ["FAILED"]
    assert mlflow.active_run() is None


def test_real_full_disk_at_the_first_artifact(store, small_disk, monkeypatch) -> None:
    _artifacts_on(small_disk, store)
    filler = small_disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as out:
        while True:  # until the filesystem refuses: really full
            out.write(b"\0" * 65536)
            out.flush()
    trained = []
    monkeypatch.setattr(commands.fit_lib, "fit", lambda *a, **k: trained.append(1))
    result = runner.invoke(app, ["pretrain", "--source", "ucm", "--profile", "smoke"])
    assert result.exit_code == 1 and DISK_FULL in result.stderr, result.output[-3000:]
    assert "Traceback" not in result.stderr
    assert trained == []  # failed at the split manifest: no training
    run = _only_run(store)
    assert run.info.status == "FAILED" and DISK_FULL in run.data.tags[runs.TAG_ERROR]
    assert store.search_model_versions("name LIKE 'rssc-resnet50-%'") == []
