"""Evaluation metrics computed from model outputs (probabilities) and true labels.

All values are fractions in [0, 1]; summaries multiply by 100 to compare with the paper.

Multi-label thresholding: a label is predicted when its probability is **strictly greater**
than the threshold (`probs > 0.5`). This matches the authors' code, which rounded the sigmoid
outputs with `np.round` (0.5 rounds to 0.0, half to even), and Keras's `F1Score` and
`BinaryAccuracy`, which use `y_pred > threshold`; so the in-training F1 and the final F1 agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from sklearn import metrics as skm

from rssc_mlflow import protocol
from rssc_mlflow.data.catalog import Task

# Above this many classes the confusion matrix is drawn without numbers in the cells (46 MLRSNet
# categories would make them unreadable) and with smaller tick labels.
ANNOTATE_MAX_CLASSES = 20


def _as_probs(probs: Any, n: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != n:
        raise ValueError(f"probs must have shape (n_samples={n}, n_classes), got {probs.shape}.")
    return probs


def predict_labels(probs: Any, threshold: float = protocol.MULTILABEL_THRESHOLD) -> np.ndarray:
    """Multi-hot predictions: 1 where `probs > threshold` (strict, see module docstring)."""
    return (np.asarray(probs) > threshold).astype(np.int64)


def single_label_metrics(
    y_true: Any, probs: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, per-class report and confusion matrix for a single-label task.

    Args:
        y_true: integer class indices, shape (n,).
        probs: class probabilities (or any scores; argmax is taken), shape (n, n_classes).
        class_names: names for the report keys; defaults to the class indices as strings.

    Returns:
        {"accuracy": float, "report": sklearn classification_report dict (per class and
        averages; precision/recall/f1-score as fractions, support as counts),
        "confusion_matrix": (n_classes, n_classes) int array, rows = true classes,
        "y_pred": (n,) int array}.
    """
    y_true = np.asarray(y_true).astype(np.int64)
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be integer class indices of shape (n,), got {y_true.shape}.")
    probs = _as_probs(probs, len(y_true))
    y_pred = probs.argmax(axis=1)
    labels = np.arange(probs.shape[1])
    names = [str(c) for c in (class_names if class_names is not None else labels)]
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "report": skm.classification_report(
            y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0
        ),
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels),
        "y_pred": y_pred,
    }


def mean_average_precision(y_true: Any, probs: Any) -> tuple[float, int]:
    """Mean over labels of average precision, skipping labels without a positive sample.

    AP is undefined for a label that never occurs (no recall to reach), and scikit-learn's
    `average_precision_score(average="macro")` would count it as 0 with a warning; small test
    splits easily miss rare labels, so such labels are left out of the mean instead.

    Returns:
        (mAP, number of labels averaged). mAP is nan when no label has a positive.
    """
    y_true = np.asarray(y_true)
    probs = _as_probs(probs, len(y_true))
    present = np.flatnonzero(y_true.sum(axis=0) > 0)
    if present.size == 0:
        return float("nan"), 0
    aps = [skm.average_precision_score(y_true[:, j], probs[:, j]) for j in present]
    return float(np.mean(aps)), int(present.size)


def multi_label_metrics(
    y_true: Any, probs: Any, threshold: float = protocol.MULTILABEL_THRESHOLD
) -> dict[str, Any]:
    """F1 (micro, macro, weighted, samples), mAP, subset accuracy and Hamming loss.

    Predictions are `probs > threshold`. F1 uses `zero_division=0`, as scikit-learn's report
    the authors printed. mAP follows `mean_average_precision` (labels with a positive only).

    Args:
        y_true: multi-hot labels, shape (n, n_labels).
        probs: sigmoid outputs, shape (n, n_labels).
    """
    y_true = np.asarray(y_true).astype(np.int64)
    if y_true.ndim != 2:
        raise ValueError(f"y_true must be multi-hot of shape (n, n_labels), got {y_true.shape}.")
    probs = _as_probs(probs, len(y_true))
    y_pred = predict_labels(probs, threshold)
    result: dict[str, Any] = {
        f"f1_{avg}": float(skm.f1_score(y_true, y_pred, average=avg, zero_division=0))
        for avg in ("micro", "macro", "weighted", "samples")
    }
    result["map"], result["map_labels"] = mean_average_precision(y_true, probs)
    result["subset_accuracy"] = float(skm.accuracy_score(y_true, y_pred))
    result["hamming_loss"] = float(skm.hamming_loss(y_true, y_pred))
    result["threshold"] = float(threshold)
    return result


def label_prior_f1(train_y: Any, test_y: Any) -> float:
    """F1-micro of the label-prior baseline: every test image gets the labels that more than
    half of the training images carry. A multi-label model that learned nothing from the images
    scores about this (MLRSNet's labels are dominated by a few frequent ones)."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y).astype(np.int64)
    prior = (train_y.mean(axis=0) > 0.5).astype(np.int64)
    return float(skm.f1_score(test_y, np.broadcast_to(prior, test_y.shape), average="micro",
                              zero_division=0))


def classification_report_text(
    y_true: Any,
    probs: Any,
    *,
    task: Task,
    class_names: Sequence[str] | None = None,
    threshold: float = protocol.MULTILABEL_THRESHOLD,
    digits: int = 4,
) -> str:
    """scikit-learn's text report, as the authors printed it (argmax, or `probs > threshold`)."""
    probs = np.asarray(probs)
    if task == "single":
        y_pred = probs.argmax(axis=1)
        y_true = np.asarray(y_true).astype(np.int64)
    elif task == "multi":
        y_pred = predict_labels(probs, threshold)
        y_true = np.asarray(y_true).astype(np.int64)
    else:
        raise ValueError(f"task must be 'single' or 'multi', got {task!r}.")
    labels = np.arange(probs.shape[1])
    names = [str(c) for c in (class_names if class_names is not None else labels)]
    return skm.classification_report(
        y_true, y_pred, labels=labels, target_names=names, digits=digits, zero_division=0
    )


SYNTHETIC_MARK = "SYNTHETIC DATA: not comparable to the paper"


def confusion_matrix_png(
    y_true: Any, y_pred: Any, class_names: Sequence[str], path: str | Path, *,
    title: str = "", synthetic: bool = False,
) -> Path:
    """Draw the row-normalised confusion matrix (colour = fraction of the true class) to `path`.

    Counts are written in the cells only up to `ANNOTATE_MAX_CLASSES` classes; the figure grows
    with the number of classes so that 46 tick labels stay readable. `title` goes on top, and
    `synthetic` adds `SYNTHETIC_MARK` under it in red; both are also the PNG's Title metadata.
    """
    # The Figure API with its own Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(class_names)
    cm = skm.confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=np.arange(n))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)

    side = max(6.0, 0.28 * n + 3.0)
    fig = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    annotate = n <= ANNOTATE_MAX_CLASSES
    shown = skm.ConfusionMatrixDisplay(norm, display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, include_values=annotate, xticks_rotation=90,
        im_kw={"vmin": 0.0, "vmax": 1.0}, text_kw={"fontsize": 8})
    # Our own colorbar: the display's has no label and takes a fixed share of the axes.
    fig.colorbar(shown.im_, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fontsize = 9 if annotate else 7
    ax.tick_params(labelsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # The colour is the row fraction, but a cell shows its count (none where it is 0), in
    # white on the darker half of the scale.
    for (i, j), text in np.ndenumerate(shown.text_ if annotate else np.empty((0, 0))):
        text.set_text(str(cm[i, j]) if cm[i, j] else "")
        text.set_color("white" if norm[i, j] > 0.5 else "black")
    # Fixed margins sized for the longest class name: `tight_layout` would measure every tick
    # label, a cost every run would pay for every figure.
    fontsize_in = fontsize / 72
    margin = 0.6 * fontsize_in * max(len(str(c)) for c in class_names) + 0.6
    heading = [line for line in (title, SYNTHETIC_MARK if synthetic else "") if line]
    if title:
        fig.text(0.5, 1 - 0.25 / side, title, ha="center", va="top", fontsize=10, wrap=True)
    if synthetic:
        fig.text(0.5, 1 - (0.25 + 0.22 * bool(title)) / side, SYNTHETIC_MARK, ha="center",
                 va="top", fontsize=10, color="#c00000", fontweight="bold")
    top = 0.97 - 0.25 * len(heading) / side
    fig.subplots_adjust(left=min(0.45, margin / side), bottom=min(0.45, margin / side),
                        right=0.88, top=top)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Title": " / ".join(heading)} if heading else None)
    return path


def keras_metrics(task: Task) -> list[keras.metrics.Metric]:
    """Metrics to compile into the model, consistent with the final evaluation.

    single: `accuracy` (sparse categorical; labels are class indices).
    multi: `f1_micro` (same `> 0.5` rule as `multi_label_metrics`; `F1Score` casts labels to
    float32 itself, so integer multi-hot labels work) and `binary_accuracy`.
    """
    if task == "single":
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if task == "multi":
        threshold = protocol.MULTILABEL_THRESHOLD
        return [
            keras.metrics.F1Score(average="micro", threshold=threshold, name="f1_micro"),
            keras.metrics.BinaryAccuracy(threshold=threshold, name="binary_accuracy"),
        ]
    raise ValueError(f"task must be 'single' or 'multi', got {task!r}.")
