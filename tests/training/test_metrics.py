"""Metrics against scikit-learn and against hand calculations on small fixed examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from rssc_mlflow.training.metrics import (
    classification_report_text,
    confusion_matrix_png,
    keras_metrics,
    label_prior_f1,
    mean_average_precision,
    multi_label_metrics,
    predict_labels,
    single_label_metrics,
)

# 3 samples x 4 labels, where micro, macro, weighted and samples F1 all differ.
# Sample 0 has probability exactly 0.5 for label 1: NOT predicted (strict `>`).
Y_ML = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1]])
P_ML = np.array([[0.9, 0.5, 0.2, 0.1], [0.6, 0.7, 0.1, 0.3], [0.8, 0.4, 0.51, 0.2]], np.float32)
# Predictions: [[1,0,0,0], [1,1,0,0], [1,0,1,0]].
# Per label (TP, FP, FN): (2,1,0) F1 .8; (1,0,1) F1 2/3; (0,1,1) F1 0; (0,0,1) F1 0.
HAND = {
    "f1_micro": 6 / 11,  # TP 3, FP 2, FN 3: 2*3 / (2*3 + 2 + 3)
    "f1_macro": (0.8 + 2 / 3) / 4,
    "f1_weighted": (0.8 * 2 + 2 / 3 * 2) / 6,  # supports 2, 2, 1, 1
    "f1_samples": (2 / 3 + 2 / 3 + 2 / 5) / 3,
    "map": (1 + 5 / 6 + 1 / 2 + 1 / 2) / 4,
    "subset_accuracy": 0.0,
    "hamming_loss": 5 / 12,
}


def test_threshold_is_strict() -> None:
    assert predict_labels(np.array([[0.5, 0.5000001, 0.4999]])).tolist() == [[0, 1, 0]]
    # Same as the authors' np.round at the boundary.
    assert np.round(0.5) == 0.0


def test_multi_label_hand_values() -> None:
    m = multi_label_metrics(Y_ML, P_ML)
    for key, value in HAND.items():
        assert m[key] == pytest.approx(value), key
    assert m["map_labels"] == 4
    assert len({round(m[k], 6) for k in ("f1_micro", "f1_macro", "f1_weighted", "f1_samples")}) == 4


def test_multi_label_matches_sklearn() -> None:
    m = multi_label_metrics(Y_ML, P_ML)
    pred = (P_ML > 0.5).astype(int)
    for avg in ("micro", "macro", "weighted", "samples"):
        assert m[f"f1_{avg}"] == pytest.approx(
            skm.f1_score(Y_ML, pred, average=avg, zero_division=0)
        )
    assert m["map"] == pytest.approx(skm.average_precision_score(Y_ML, P_ML, average="macro"))
    # With `>=` the 0.5 would count as a false positive and micro F1 would be 0.5.
    assert skm.f1_score(Y_ML, (P_ML >= 0.5).astype(int), average="micro") == pytest.approx(0.5)


def test_map_skips_labels_without_positives() -> None:
    y = np.hstack([Y_ML, np.zeros((3, 1), int)])
    p = np.hstack([P_ML, np.array([[0.9], [0.1], [0.2]], np.float32)])
    value, used = mean_average_precision(y, p)
    assert used == 4
    assert value == pytest.approx(HAND["map"])
    assert np.isnan(mean_average_precision(np.zeros((2, 2)), np.ones((2, 2)))[0])


def test_single_label_metrics() -> None:
    y = np.array([0, 1, 2, 2, 1])
    probs = np.array(
        [[0.8, 0.1, 0.1, 0], [0.1, 0.2, 0.7, 0], [0, 0.3, 0.7, 0], [0.2, 0.2, 0.6, 0], [0, 1, 0, 0]]
    )
    m = single_label_metrics(y, probs, class_names=["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["y_pred"].tolist() == [0, 2, 2, 2, 1]
    assert m["confusion_matrix"].tolist() == [
        [1, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 2, 0],
        [0, 0, 0, 0],
    ]
    assert m["report"]["c"]["precision"] == pytest.approx(2 / 3)
    assert m["report"]["c"]["recall"] == pytest.approx(1.0)
    assert m["report"]["b"]["recall"] == pytest.approx(0.5)
    assert m["report"]["d"]["support"] == 0
    assert m["report"]["macro avg"]["f1-score"] == pytest.approx(
        skm.f1_score(y, m["y_pred"], labels=[0, 1, 2, 3], average="macro", zero_division=0)
    )


def test_report_text() -> None:
    text = classification_report_text(Y_ML, P_ML, task="multi", class_names=list("wxyz"))
    assert "samples avg" in text and "micro avg" in text
    text = classification_report_text([0, 1], [[0.9, 0.1], [0.2, 0.8]], task="single")
    assert "accuracy" in text
    with pytest.raises(ValueError):
        classification_report_text([0], [[1.0]], task="other")  # type: ignore[arg-type]


def test_keras_f1_micro_matches_sklearn() -> None:
    f1, binary_accuracy = keras_metrics("multi")
    assert f1.name == "f1_micro" and binary_accuracy.name == "binary_accuracy"
    # Integer multi-hot labels, as the data pipeline yields them.
    f1.update_state(Y_ML.astype(np.int32), P_ML)
    binary_accuracy.update_state(Y_ML.astype(np.int32), P_ML)
    assert float(f1.result()) == pytest.approx(HAND["f1_micro"], abs=1e-5)
    assert float(binary_accuracy.result()) == pytest.approx(1 - HAND["hamming_loss"], abs=1e-6)


def test_keras_single_accuracy() -> None:
    (acc,) = keras_metrics("single")
    assert acc.name == "accuracy"
    acc.update_state(np.array([0, 1, 2]), np.array([[0.9, 0.1, 0], [0.6, 0.4, 0], [0, 0, 1.0]]))
    assert float(acc.result()) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        keras_metrics("x")  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [3, 46])
def test_confusion_matrix_png(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, n, 200)
    pred = np.where(rng.random(200) < 0.8, y, rng.integers(0, n, 200))
    out = confusion_matrix_png(y, pred, [f"class_{i}" for i in range(n)], tmp_path / "cm" / "m.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_label_prior_f1_is_the_f1_of_predicting_the_frequent_labels():
    # Labels 0 and 2 are on more than half of the training rows, label 1 on exactly half (not
    # more: left out), label 3 on none.
    train = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0]])
    test = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0]])
    # Every test row is predicted {0, 2}: TP = 1 + 1 + 2 = 4, FP = 1 + 1 + 0 = 2,
    # FN = 1 + 1 + 0 = 2, so F1 = 2*4 / (2*4 + 2 + 2) = 2/3.
    assert label_prior_f1(train, test) == pytest.approx(2 / 3)
    assert label_prior_f1(train, test) == pytest.approx(
        skm.f1_score(test, np.tile([1, 0, 1, 0], (3, 1)), average="micro"))


@pytest.mark.parametrize("n", [3, 46])
def test_confusion_matrix_carries_its_title_and_the_synthetic_mark(tmp_path: Path, n: int) -> None:
    from PIL import Image

    y = np.arange(60) % n
    names = [f"class_{i}" for i in range(n)]
    title = "pretrain ucm (profile smoke, seed 42): test accuracy 100.00%, 60 images"
    marked = confusion_matrix_png(y, y, names, tmp_path / "marked.png", title=title,
                                  synthetic=True)
    plain = confusion_matrix_png(y, y, names, tmp_path / "plain.png")
    with Image.open(marked) as a, Image.open(plain) as b:
        assert a.text["Title"] == f"{title} / SYNTHETIC DATA: not comparable to the paper"
        assert "Title" not in b.text
        top_a = np.asarray(a.convert("RGB"))[: a.height // 12].astype(int)
        top_b = np.asarray(b.convert("RGB"))[: b.height // 12].astype(int)
    red = lambda rgb: ((rgb[..., 0] > 150) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum()  # noqa: E731
    dark = lambda rgb: (rgb.sum(axis=-1) < 200).sum()  # noqa: E731
    assert red(top_a) > 50 and red(top_b) == 0  # the mark, drawn in red at the top
    assert dark(top_a) > 50  # the title's text
