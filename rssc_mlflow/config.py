"""Where things live on disk, read from the environment with documented defaults."""

from __future__ import annotations

import os
from pathlib import Path

from rssc_mlflow.errors import RsscError

DEFAULT_DATA_DIR = Path.home() / "rssc_data"


def data_dir() -> Path:
    """Root of prepared datasets and split manifests: `$RSSC_DATA_DIR`, default `~/rssc_data`."""
    return Path(os.environ.get("RSSC_DATA_DIR", DEFAULT_DATA_DIR)).expanduser()


def tfds_dir() -> Path:
    """Where the tensorflow-datasets builders write their records."""
    return data_dir() / "tfds"


def splits_dir() -> Path:
    return data_dir() / "splits"


def cache_dir() -> Path:
    """Decoded-and-resized image caches: `$RSSC_CACHE_DIR`, default `<data dir>/cache`."""
    return Path(os.environ.get("RSSC_CACHE_DIR", data_dir() / "cache")).expanduser()


def prepare_memory_mb() -> int:
    """Encoded examples `prepare` holds in memory before TFDS spills them to temporary files
    (`RSSC_PREPARE_MEMORY_MB`; 1000 = TFDS's own bound). So prepare's peak RSS grows with the
    dataset up to this, then stays flat. Lower it on small machines: spilling costs speed."""
    return _megabytes("RSSC_PREPARE_MEMORY_MB", 1000)


def cache_memory_mb() -> int:
    """Budget for in-memory image caches (`RSSC_CACHE_MEMORY_MB`); larger caches go to disk."""
    return _megabytes("RSSC_CACHE_MEMORY_MB", 2048)


def _megabytes(variable: str, default: int) -> int:
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise RsscError(f"{variable} must be a whole number of megabytes (0 or more), got "
                        f"{value!r}. Set it to e.g. {default}, or unset it for the default.")
    return int(value)


def checkpoint_dir() -> Path:
    """Per-run training checkpoints (`RSSC_CHECKPOINT_DIR`, default `<data dir>/checkpoints`).

    Kept on local disk until the run is FINISHED, so `--resume RUN_ID` can continue it.
    """
    return Path(os.environ.get("RSSC_CHECKPOINT_DIR", data_dir() / "checkpoints")).expanduser()


def op_determinism() -> bool:
    """`RSSC_OP_DETERMINISM=1`: TensorFlow's op determinism for training runs.

    With it a CPU run, resumed or not, gives bit-identical metrics for the same seed; on a GPU
    it selects deterministic (slower) kernels. Recorded on the run as `rssc.op_determinism`.
    """
    return os.environ.get("RSSC_OP_DETERMINISM", "").lower() in ("1", "true", "yes")
