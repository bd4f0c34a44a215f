"""The per-image predictions artifact: written by real evaluations, read back, row order checked.

The row order is the point: the evaluation pipeline yields test images in the prepared
dataset's storage order, not in the split's order, so `files[i]` must be read from the
pipeline. The training tests check it against the prepared records' labels, and check that
the split's own order would have been wrong (so the check can fail).
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from rssc_mlflow import commands, models
from rssc_mlflow.data import splits
from rssc_mlflow.data.prepare import load_prepared
from rssc_mlflow.errors import RsscError
from rssc_mlflow.tracking import predictions as preds
from rssc_mlflow.tracking import runs

SMOKE = {"profile": "smoke"}


def _example(n: int = 5, classes: int = 3) -> preds.Predictions:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(classes), size=n)
    return preds.make(probs, rng.integers(0, classes, n), [f"c/img_{i}.jpg" for i in range(n)],
                      split_digest="s" * 16, dataset_digest="d" * 16)


@pytest.fixture()
def store(world, monkeypatch):
    world.activate(monkeypatch)
    return mlflow.MlflowClient()


# --- The file ------------------------------------------------------------------------------------


def test_round_trip_keeps_arrays_dtypes_and_digests(tmp_path):
    pred = _example()
    path = preds.save(pred, tmp_path / "p.npz")
    back = preds.read(path, "run-1")
    np.testing.assert_array_equal(back.probs, pred.probs)
    np.testing.assert_array_equal(back.y_true, pred.y_true)
    assert back.files.tolist() == [f"c/img_{i}.jpg" for i in range(5)]
    assert back.probs.dtype == np.float32 and back.y_true.dtype == np.int32
    assert back.files.dtype.kind == "U"  # fixed-width unicode: loads without pickle
    assert (back.split_digest, back.dataset_digest, back.run_id) == ("s" * 16, "d" * 16, "run-1")
    assert not back.multilabel
    multi = preds.make(np.full((2, 4), 0.7), np.eye(2, 4), ["a", "b"], split_digest="x",
                       dataset_digest="y")
    assert multi.multilabel and multi.y_true.dtype == np.uint8


def test_unreadable_or_foreign_files_are_refused_by_name(tmp_path):
    pickled = tmp_path / "object.npz"
    np.savez(pickled, probs=np.zeros((1, 2)), y_true=np.zeros(1), files=np.array([{"a": 1}]),
             split_digest=np.asarray("s"), dataset_digest=np.asarray("d"),
             format_version=np.asarray(1))
    with pytest.raises(RsscError, match="cannot be read.*allow_pickle"):
        preds.read(pickled, "r1")
    partial = tmp_path / "partial.npz"
    np.savez(partial, probs=np.zeros((1, 2)), y_true=np.zeros(1))
    with pytest.raises(RsscError, match="lacks files, split_digest, dataset_digest"):
        preds.read(partial, "r2")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(RsscError, match="junk.npz of run r3 cannot be read"):
        preds.read(junk, "r3")


def test_inconsistent_predictions_are_refused():
    with pytest.raises(RsscError, match="one row per test image"):
        preds.make(np.zeros((3, 2)), np.zeros(2), ["a", "b", "c"], split_digest="s",
                   dataset_digest="d")
    with pytest.raises(RsscError, match="listed twice"):
        preds.make(np.zeros((2, 2)), np.zeros(2), ["a", "a"], split_digest="s",
                   dataset_digest="d")
    with pytest.raises(RsscError, match="same shape"):
        preds.make(np.zeros((2, 3)), np.zeros((2, 2)), ["a", "b"], split_digest="s",
                   dataset_digest="d")


def test_a_run_without_the_artifact_loads_as_none(store):
    with mlflow.start_run() as run:
        mlflow.log_text("x", "evaluation/per_class_report.txt")
    assert preds.load_predictions(run.info.run_id) is None
    assert preds.load_predictions(run.info.run_id, artifact_uri=run.info.artifact_uri) is None
    with mlflow.start_run() as logged, tempfile.TemporaryDirectory() as tmp:
        pred = _example()
        # Logged as commands._log_evaluation logs it: the folder, under evaluation/.
        preds.write_artifact(Path(tmp), pred.probs, pred.y_true, pred.files, split_digest="s",
                             dataset_digest="d")
        mlflow.log_artifacts(tmp, artifact_path="evaluation")
    back = preds.load_predictions(logged.info.run_id)
    np.testing.assert_array_equal(back.probs, pred.probs)
    direct = preds.load_predictions(logged.info.run_id, artifact_uri=logged.info.artifact_uri)
    assert direct.files.tolist() == pred.files.tolist()
    assert back.run_id == logged.info.run_id
    assert [a.path for a in store.list_artifacts(logged.info.run_id, "evaluation")] == [
        preds.ARTIFACT]


# --- Real evaluations (synthetic world, smoke profile) --------------------------------------------

def _check_rows_are_their_images(key: str, pred: preds.Predictions, role: str) -> None:
    """files[i] is the image whose labels are y_true[i] (from the prepared records), and the
    split's listed order would not have been (the check can fail)."""
    prepared = load_prepared(key)
    split = splits.get_split(prepared, role, seed=42)
    assert sorted(pred.files.tolist()) == sorted(split.test)
    assert pred.files.tolist() != list(split.test)
    record = {r.filename: r for r in prepared.records}
    if pred.multilabel:
        expected = np.array([record[f].labels for f in pred.files])
        in_split_order = np.array([record[f].labels for f in split.test])
    else:
        expected = np.array([record[f].label for f in pred.files])
        in_split_order = np.array([record[f].label for f in split.test])
    np.testing.assert_array_equal(pred.y_true, expected)
    assert not np.array_equal(pred.y_true, in_split_order)
    assert pred.split_digest == split.digest
    assert pred.dataset_digest == prepared.manifest_digest


@pytest.mark.slow
def test_finetune_logs_multilabel_predictions_in_pipeline_order(store):
    result = commands.finetune("scratch", "mlrsnet_ml", log_model=False, **SMOKE)
    run = store.get_run(result.run_id)
    assert run.data.tags[preds.TAG_PREDICTIONS] == preds.ARTIFACT
    pred = preds.load_predictions(result.run_id, store)
    assert pred.probs.shape == (92, 60) and pred.y_true.dtype == np.uint8  # 46 x 2 test images
    _check_rows_are_their_images("mlrsnet_ml", pred, "target")
    assert pred.split_digest == run.data.tags[runs.TAG_SPLIT_DIGEST]
    # The logged metric is the artifact's, recomputed independently.
    f1 = f1_score(pred.y_true, pred.probs > 0.5, average="micro", zero_division=0)
    assert run.data.metrics["test_f1_micro"] == pytest.approx(f1, abs=1e-12)


@pytest.mark.slow
def test_probe_logs_predictions_and_features_in_pipeline_order(store, monkeypatch, tmp_path):
    stand_in = models.build_classifier(10, "single", crop=32)  # a random "ImageNet" backbone
    monkeypatch.setenv("RSSC_IMAGENET_WEIGHTS",
                       str(models.save_notop_weights(stand_in, tmp_path / "notop.h5")))
    result = commands.probe("imagenet", "ucm", **SMOKE)  # lbfgs on random features: minutes
    pred = preds.load_predictions(result.run_id, store)
    _check_rows_are_their_images("ucm", pred, "target")
    path = mlflow.artifacts.download_artifacts(run_id=result.run_id,
                                               artifact_path=commands.FEATURES_ARTIFACT)
    with np.load(path, allow_pickle=False) as f:
        features = {k: f[k] for k in f.files}
    # The features' file names are the rows' too (they used to list the split's order).
    assert features["test_files"].tolist() == pred.files.tolist()
    record = {r.filename: r.label for r in load_prepared("ucm").records}
    assert [record[f] for f in features["train_files"]] == features["train_y"].tolist()
    np.testing.assert_array_equal(features["test_y"], pred.y_true)
    assert store.get_run(result.run_id).data.metrics["test_accuracy"] == pytest.approx(
        accuracy_score(pred.y_true, pred.probs.argmax(axis=1)))

