"""`commands`' helpers: the parameters a run logs about its data, and the batch split."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rssc_mlflow import commands


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
