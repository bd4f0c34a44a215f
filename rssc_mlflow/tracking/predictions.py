"""Per-image test predictions of an evaluation, as one compact artifact of its run.

Every evaluation (pretrain, adapt, finetune, probe) logs `evaluation/predictions.npz`: the
model's outputs on each test image, the true labels and the image file names in the same row
order, plus the digests of the split and the prepared dataset that fix which images these are.
Two runs evaluated on the same test split can then be compared image by image
(`results.findings`: paired bootstrap intervals).

The file is written with `np.savez_compressed` and read with `allow_pickle=False`, so it holds
no object arrays: file names are a fixed-width unicode array and the digests 0-d strings.

Row order: the evaluation pipeline yields the test images in the prepared dataset's storage
order, filtered to the split (`pipeline.filter_examples`), not in the split's listed order.
`evaluation_files` reads that order from the same filtered examples, without decoding images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from rssc_mlflow.errors import RsscError

if TYPE_CHECKING:
    import tensorflow as tf

ARTIFACT = "evaluation/predictions.npz"
# Set on a run once its artifact is logged: summarize downloads only for runs that carry it.
TAG_PREDICTIONS = "rssc.predictions"
FORMAT_VERSION = 1
_ARRAYS = ("probs", "y_true", "files", "split_digest", "dataset_digest", "format_version")


@dataclasses.dataclass(frozen=True, eq=False)
class Predictions:
    """One evaluation's outputs: row i of `probs` and `y_true` is the image `files[i]`.

    `probs`: float32 (N, C) class probabilities (softmax) or label probabilities (sigmoid).
    `y_true`: (N,) class indices, or (N, L) uint8 multi-hot labels.
    """

    probs: np.ndarray
    y_true: np.ndarray
    files: np.ndarray
    split_digest: str
    dataset_digest: str
    run_id: str = ""

    def __post_init__(self) -> None:
        n = len(self.files)
        where = f" of run {self.run_id}" if self.run_id else ""
        if self.probs.ndim != 2 or self.probs.shape[0] != n or len(self.y_true) != n:
            raise RsscError(
                f"Inconsistent predictions{where}: probs {self.probs.shape}, y_true "
                f"{self.y_true.shape} and {n} file names must have one row per test image.")
        if self.y_true.ndim == 2 and self.y_true.shape != self.probs.shape:
            raise RsscError(
                f"Inconsistent predictions{where}: multi-hot y_true {self.y_true.shape} and "
                f"probs {self.probs.shape} must have the same shape.")
        if len(set(self.files.tolist())) != n:
            raise RsscError(f"Inconsistent predictions{where}: a test image is listed twice.")

    @property
    def multilabel(self) -> bool:
        return self.y_true.ndim == 2

    def __len__(self) -> int:
        return len(self.files)


def make(probs: np.ndarray, y_true: np.ndarray, files: Sequence[str], *, split_digest: str,
         dataset_digest: str, run_id: str = "") -> Predictions:
    """Predictions in their stored dtypes (float32 probs, compact integer labels)."""
    y = np.asarray(y_true)
    y = y.astype(np.uint8) if y.ndim == 2 else y.astype(np.int32)
    return Predictions(np.asarray(probs, dtype=np.float32), y, np.asarray(files, dtype=str),
                       str(split_digest), str(dataset_digest), run_id)


def save(pred: Predictions, path: Path) -> Path:
    np.savez_compressed(path, probs=pred.probs, y_true=pred.y_true, files=pred.files,
                        split_digest=np.asarray(pred.split_digest),
                        dataset_digest=np.asarray(pred.dataset_digest),
                        format_version=np.asarray(FORMAT_VERSION))
    return Path(path)


def read(path: Path | io.BytesIO, run_id: str = "") -> Predictions:
    """Load a predictions file; RsscError naming what is wrong when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _ARRAYS if k not in npz.files]
            if missing:
                raise RsscError(
                    f"The predictions file {path} of run {run_id or '?'} lacks "
                    f"{', '.join(missing)}; it was not written by rssc's write_artifact.")
            arrays = {k: npz[k] for k in _ARRAYS}
    except (OSError, ValueError) as exc:  # not an npz, truncated, or holding object arrays
        raise RsscError(f"The predictions file {path} of run {run_id or '?'} cannot be read "
                        f"({exc}).") from None
    return Predictions(arrays["probs"], arrays["y_true"], arrays["files"],
                       str(arrays["split_digest"]), str(arrays["dataset_digest"]), run_id)


def write_artifact(folder: Path, probs: np.ndarray, y_true: np.ndarray, files: Sequence[str], *,
                   split_digest: str, dataset_digest: str) -> Path:
    """Write `predictions.npz` into `folder` (to be logged under `evaluation/`)."""
    return save(make(probs, y_true, files, split_digest=split_digest,
                     dataset_digest=dataset_digest), Path(folder) / Path(ARTIFACT).name)


def load_predictions(run_id: str, client: mlflow.MlflowClient | None = None, *,
                     artifact_uri: str | None = None) -> Predictions | None:
    """The run's predictions, or None when it has no such artifact (runs logged before it).

    `artifact_uri` (the run's `info.artifact_uri`, when the caller has it) downloads directly,
    sparing the tracking server two look-ups of the run per call.
    """
    if artifact_uri:
        with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
            try:
                path = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{artifact_uri.rstrip('/')}/{ARTIFACT}", dst_path=tmp,
                    tracking_uri=client.tracking_uri if client else None)
            except (MlflowException, OSError):  # not there: a run without predictions
                return None
            return read(Path(path), run_id)
    client = client or mlflow.MlflowClient()
    folder = str(Path(ARTIFACT).parent)
    if ARTIFACT not in {a.path for a in client.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        path = client.download_artifacts(run_id, ARTIFACT, tmp)
        return read(Path(path), run_id)


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a progress bar per download; summarize downloads one file per run."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def evaluation_files(examples: tf.data.Dataset, filenames: Sequence[str]) -> np.ndarray:
    """The file names of `filenames` in the order the evaluation pipeline yields their images.

    That pipeline is `pipeline.filter_examples(examples, filenames)` then a deterministic map
    (`pipeline.make_dataset`), so its order is this one; no image is decoded here.
    """
    from rssc_mlflow.data import pipeline

    names = pipeline.filter_examples(examples, filenames).map(lambda ex: ex["filename"])
    order = np.asarray([n.decode("utf-8") for n in names.as_numpy_iterator()], dtype=str)
    if len(order) != len(set(filenames)):
        raise RsscError(f"The evaluation pipeline found {len(order)} of the split's "
                        f"{len(set(filenames))} test images in the prepared dataset.")
    return order
