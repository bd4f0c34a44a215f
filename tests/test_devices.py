"""Device assignment for `reproduce --parallel N --gpus-per-run K`, with fake device lists."""

from __future__ import annotations

import stat

import pytest

from rssc_mlflow import devices
from rssc_mlflow.errors import RsscError


def test_assign_devices_splits_the_visible_list_in_order():
    visible = ["0", "1", "2", "3"]
    assert devices.assign_devices(visible, 2, 2) == ["0,1", "2,3"]
    assert devices.assign_devices(visible, 4, 1) == ["0", "1", "2", "3"]
    assert devices.assign_devices(visible, 3, 1) == ["0", "1", "2"]  # a spare GPU stays idle


def test_assign_devices_honours_an_existing_cuda_visible_devices():
    visible = devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "5,7,GPU-abc"})
    assert visible == ["5", "7", "GPU-abc"]
    assert devices.assign_devices(visible, 3, 1) == ["5", "7", "GPU-abc"]


def test_zero_gpus_per_run_hides_every_gpu():
    assert devices.assign_devices([], 3, 0) == ["", "", ""]


def test_too_few_gpus_is_refused_with_what_to_do():
    with pytest.raises(RsscError) as err:
        devices.assign_devices(["0", "1", "2"], 2, 2)
    text = str(err.value)
    assert "needs 4 GPUs" in text and "only 3 are available" in text
    assert "Received: parallel=2, gpus_per_run=2" in text and "Lower --parallel" in text


def test_negative_gpus_per_run_is_refused():
    with pytest.raises(RsscError, match=r"cannot be negative\. Received: -1"):
        devices.assign_devices(["0"], 1, -1)


@pytest.mark.parametrize("value", ["", "-1"])
def test_a_hiding_cuda_visible_devices_means_no_gpu(value):
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == []


def test_visible_gpus_reads_nvidia_smi(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
                    "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert devices.visible_gpus({}, nvidia_smi=str(fake)) == ["0", "1"]
    assert devices.visible_gpus({}, nvidia_smi=str(tmp_path / "absent")) == []


def test_worker_env_and_replicas():
    assert devices.worker_env("2,3") == {"CUDA_VISIBLE_DEVICES": "2,3",
                                         "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert devices.replicas_for("2,3") == 2
    assert devices.replicas_for("4") == 1
    assert devices.replicas_for("") == 1
