"""`commands`' run lock: an interrupted run is resumable only where its checkpoint folder is
and only while no process is training it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from rssc_mlflow import commands
from rssc_mlflow.tracking import runs


def _run(folder: Path | None, stage: str = "finetune", run_id: str = "abc123"):
    tags = {runs.TAG_STAGE: stage}
    if folder is not None:
        tags[runs.TAG_CHECKPOINT_DIR] = str(folder)
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(tags=tags))


def test_resumable_only_with_a_free_local_checkpoint_folder(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "abc123"
    assert not commands.can_resume(_run(folder))  # another machine's run: no folder here
    folder.mkdir(parents=True)
    assert commands.can_resume(_run(folder))
    assert not commands.can_resume(_run(folder, stage="probe"))  # nothing to resume
    assert not commands.can_resume(_run(None))  # failed before it had a checkpoint folder
    with commands._training_lock(folder, "abc123"):
        assert not commands.can_resume(_run(folder))  # being trained right now
        with pytest.raises(commands.RunLocked, match=r"Run abc123 is being trained by another "
                                                     r"process on this machine .*locked"):
            with commands._training_lock(folder, "abc123"):
                pass
    assert commands.can_resume(_run(folder))  # released


def test_a_killed_process_releases_its_lock(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from rssc_mlflow import commands
        with commands._training_lock(Path({str(folder)!r}), "r1"):
            print("held", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not commands.can_resume(_run(folder, run_id="r1"))
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.wait()
    assert commands.can_resume(_run(folder, run_id="r1"))


def _data(n_train: int, options: dict) -> SimpleNamespace:
    return SimpleNamespace(prepared=SimpleNamespace(options=options),
                           split=SimpleNamespace(train=[f"f{i}" for i in range(n_train)]))


def test_data_params_record_prepare_options_and_the_shuffle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSSC_CACHE_MEMORY_MB", "300")
    train = SimpleNamespace(stage="pretrain", image_size=256)
    assert commands._data_params(_data(1_000, {}), train) == {
        "dataset_options": "default", "shuffle_buffer": "1000", "shuffle_full": "true"}
    # ImageNet-100 with val (131,689 at crop 256, 80 %): cached on disk, a 409-image window.
    big = commands._data_params(_data(105_351, {"with_val": True}), train)
    assert big == {"dataset_options": "with_val=true", "shuffle_buffer": "409",
                   "shuffle_full": "false"}
    probe = SimpleNamespace(stage="probe", image_size=256)  # no training pipeline: no shuffle
    assert commands._data_params(_data(10, {"tiff_as_jpeg": 75}), probe) == {
        "dataset_options": "tiff_as_jpeg=75"}


def test_batch_split_over_replicas() -> None:
    from rssc_mlflow.errors import RsscError

    assert commands.batch_split(64, 4) == {"replicas": 4, "global_batch_size": 64,
                                           "per_replica_batch_size": 16}
    assert commands.batch_split(8, 1)["per_replica_batch_size"] == 8
    with pytest.raises(RsscError, match=r"64 does not split evenly over 3 replicas.*"
                                        r"Received: batch_size=64, replicas=3.*multiple of 3"):
        commands.batch_split(64, 3)


def test_resume_on_another_replica_count_is_refused(isolated_environment: Path) -> None:
    import mlflow

    from rssc_mlflow.errors import RsscError

    with mlflow.start_run() as two:
        mlflow.log_param("replicas", "2")
    with mlflow.start_run() as old:  # logged before runs recorded their replicas
        pass
    commands._check_resume_replicas(two.info.run_id, 2)
    commands._check_resume_replicas(old.info.run_id, 4)
    commands._check_resume_replicas(None, 4)
    with pytest.raises(RsscError, match=r"trained on 2 replica\(s\), but this process sees 1\. "
                                        r"Received: replicas=1.*CUDA_VISIBLE_DEVICES"):
        commands._check_resume_replicas(two.info.run_id, 1)
