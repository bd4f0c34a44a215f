"""Which GPUs each parallel worker of `reproduce` may use, decided without TensorFlow.

TensorFlow takes the whole memory of every GPU it sees, so N workers that all see every card
fight over all of them. `reproduce --parallel N --gpus-per-run K` gives worker i the GPUs
i*K .. i*K+K-1 of the visible list through CUDA_VISIBLE_DEVICES, which CUDA reads when the
child first initialises it, so it is set in the child's environment before TensorFlow starts.
The parent never imports TensorFlow to count GPUs: initialising CUDA there would itself take
memory on every card. It reads an existing CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping

from rssc_mlflow.errors import RsscError

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
# TensorFlow reads this when it initialises a GPU: allocate memory as needed, not all of it.
ALLOW_GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"
_NVIDIA_SMI_TIMEOUT_S = 20


def visible_gpus(environ: Mapping[str, str] | None = None,
                 nvidia_smi: str = "nvidia-smi") -> list[str]:
    """The GPU ids this process may hand out: CUDA_VISIBLE_DEVICES when it is set (the user,
    or a scheduler such as Slurm, restricted us to those), else the indices `nvidia-smi -L`
    lists; [] when neither names a GPU."""
    environ = os.environ if environ is None else environ
    if CUDA_VISIBLE_DEVICES in environ:
        # "" and "-1" hide every GPU (CUDA's convention); ids may be indices or GPU-UUIDs.
        ids = [d.strip() for d in environ[CUDA_VISIBLE_DEVICES].split(",") if d.strip()]
        return [] if ids[:1] == ["-1"] else ids
    try:
        listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True,
                                 timeout=_NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return []  # no driver: no GPU
    return re.findall(r"^GPU (\d+):", listing.stdout, re.MULTILINE) if listing.returncode == 0 \
        else []


def assign_devices(visible: list[str], parallel: int, per_run: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each of `parallel` workers: worker i gets visible[i*K:(i+1)*K].

    `per_run` 0 hides every GPU from the workers (CPU runs, "" each). Refuses a negative
    `per_run`, and more GPUs than `visible` holds, rather than let two workers share a card.
    """
    if per_run < 0:
        raise RsscError(f"Invalid --gpus-per-run: it cannot be negative. Received: {per_run}. "
                        "Pass the number of GPUs each run gets (0 for CPU-only runs).")
    if parallel < 1:
        raise RsscError(f"Invalid --parallel: at least 1 run at a time. Received: {parallel}.")
    needed = parallel * per_run
    if needed > len(visible):
        seen = ", ".join(visible) or "none"
        raise RsscError(
            f"--parallel {parallel} --gpus-per-run {per_run} needs {needed} GPUs, but only "
            f"{len(visible)} are available (GPUs: {seen}). Received: parallel={parallel}, "
            f"gpus_per_run={per_run}. Lower --parallel or --gpus-per-run so that their product "
            f"is at most {len(visible)}, or set {CUDA_VISIBLE_DEVICES} to the GPUs to use.")
    return [",".join(visible[i * per_run:(i + 1) * per_run]) for i in range(parallel)]


def worker_env(devices: str) -> dict[str, str]:
    """What a worker's environment adds to the parent's: its GPUs, and memory growth so that
    even a worker given several GPUs takes only the memory it uses."""
    return {CUDA_VISIBLE_DEVICES: devices, ALLOW_GROWTH: "true"}


def replicas_for(devices: str) -> int:
    """Replicas of a run that sees `devices` under the `auto` strategy (Mirrored over its
    GPUs when it has several, else one): what its fingerprint will say."""
    return max(1, len([d for d in devices.split(",") if d.strip()]))
