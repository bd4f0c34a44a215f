"""Feature extraction and the linear probe ("softmax classifier" on frozen features).

The faithful probe is the authors': one Dense layer trained with Adam at a fixed 1e-3, batch
100, 100 epochs, on raw features (their StandardScaler call had no effect). `lbfgs` is the
corrected alternative: scikit-learn's logistic regression, orders of magnitude faster.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from rssc_mlflow import protocol
from rssc_mlflow.training import speed


def extract_features(backbone: keras.Model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """2048-d pooled features and labels for every element of a finite (images, labels) dataset.

    One pass: the extraction pipeline is not cached (`commands`), so reading it a second time
    for the labels would decode every image twice.
    """
    features, labels = [], []
    for x, y in ds:
        features.append(np.asarray(backbone.predict_on_batch(x), dtype=np.float32))
        labels.append(y.numpy())
    return np.concatenate(features), np.concatenate(labels)


@dataclasses.dataclass
class ProbeResult:
    test_probs: np.ndarray
    history: list[dict[str, float]]  # per-epoch values (Adam) or one row (lbfgs)


def probe_epochs(x: np.ndarray, y: np.ndarray, *, batch_size: int,
                 seed: int) -> tuple[tf.data.Dataset, int]:
    """The probe's training batches, endlessly, and the steps of one epoch.

    One dataset for all epochs: from numpy arrays Keras builds a new input pipeline every
    epoch, which costs far more than a probe epoch's one or two steps. Batched before
    `repeat`, so every epoch is one full pass in a fresh order, as `fit(shuffle=True)` makes it.
    """
    ds = (tf.data.Dataset.from_tensor_slices((x, y))
          .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
          .batch(batch_size).repeat())
    return ds, -(-len(x) // batch_size)


def train_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, task: str,
                num_classes: int, solver: str = "adam", standardize: bool = False,
                epochs: int = 100, batch_size: int = 100, lr: float | None = None,
                seed: int = protocol.SEED) -> ProbeResult:
    """Fit a linear classifier on features and return its outputs on `test_x`."""
    if standardize:  # the corrected option; the authors meant to but did not
        scaler = StandardScaler().fit(train_x)
        train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    if solver == "lbfgs":
        base = LogisticRegression(max_iter=1000, random_state=seed)
        clf = OneVsRestClassifier(base) if task == "multi" else base
        clf.fit(train_x, train_y)
        probs = clf.predict_proba(test_x)
        if task == "single" and probs.shape[1] != num_classes:
            # Classes absent from the training split get probability 0.
            full = np.zeros((len(test_x), num_classes), np.float32)
            full[:, clf.classes_] = probs
            probs = full
        return ProbeResult(np.asarray(probs, np.float32), [{"train_accuracy": float(clf.score(train_x, train_y))}])
    speed.set_random_seed(seed)  # keras's, minus a cache flush when pooled
    activation, loss = (("sigmoid", "binary_crossentropy") if task == "multi"
                        else ("softmax", "sparse_categorical_crossentropy"))
    probe = keras.Sequential([keras.Input((train_x.shape[1],)),
                              keras.layers.Dense(num_classes, activation=activation)])
    probe.compile(optimizer=keras.optimizers.Adam(lr or protocol.PROBE_LR), loss=loss)
    ds, steps = probe_epochs(train_x, train_y, batch_size=batch_size, seed=seed)
    hist = probe.fit(ds, epochs=epochs, steps_per_epoch=steps, shuffle=False,  # ds shuffles
                     verbose=0)
    rows = [{k: float(v[i]) for k, v in hist.history.items()} for i in range(epochs)]
    return ProbeResult(np.asarray(probe.predict(test_x, batch_size=1024, verbose=0), np.float32), rows)
