"""The one training loop behind pretrain, adapt and finetune.

Keras `fit` with: Adam on the warm-up + step-decay schedule, a checkpoint at the end of every
epoch (`BackupAndRestore`, so a resumed run continues where it stopped), one batched MLflow call
per epoch, and a hard stop with a clear error when the loss becomes NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from rssc_mlflow.errors import RsscError
from rssc_mlflow.training import metrics as metrics_lib
from rssc_mlflow.training.schedule import WarmupStepDecay


class NanLossError(RsscError):
    """Training diverged."""


class EpochLogger(keras.callbacks.Callback):
    """Hands each finished epoch's logs (plus the learning rate) to `log_epoch(epoch, values)`.

    Epochs are numbered from 1. Epochs listed in `already_logged` (a resumed run) are skipped,
    so a resumed run never records an epoch twice.
    """

    def __init__(self, log_epoch: Callable[[int, dict[str, float]], None],
                 schedule: WarmupStepDecay, already_logged: set[int] | None = None):
        super().__init__()
        self._log_epoch = log_epoch
        self._schedule = schedule
        self._already_logged = already_logged or set()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        values = {k: float(v) for k, v in (logs or {}).items()}
        if not all(math.isfinite(v) for k, v in values.items() if k.endswith("loss")):
            raise NanLossError(
                f"Training diverged: the loss became {values.get('loss')} in epoch {epoch + 1}. "
                "Lower the learning rate (--lr) or check the input data; the run is marked FAILED."
            )
        step = int(self.model.optimizer.iterations.numpy())
        values["lr"] = float(self._schedule(max(step - 1, 0)))
        if epoch + 1 not in self._already_logged:
            self._log_epoch(epoch + 1, values)


def compile_for_training(model: keras.Model, *, task: str, peak_lr: float, steps_per_epoch: int,
                         epochs: int, warmup_epochs: int, run_eagerly: bool = False
                         ) -> WarmupStepDecay:
    """Adam on the protocol's schedule; the loss and in-training metrics follow the task."""
    schedule = WarmupStepDecay(peak_lr=peak_lr, steps_per_epoch=steps_per_epoch, epochs=epochs,
                               warmup_epochs=warmup_epochs)
    loss = "binary_crossentropy" if task == "multi" else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss=loss,
                  metrics=metrics_lib.keras_metrics(task), run_eagerly=run_eagerly)
    return schedule


def fit(model: keras.Model, train_ds: tf.data.Dataset, eval_ds: tf.data.Dataset | None, *,
        epochs: int, schedule: WarmupStepDecay, checkpoint_dir: Path,
        log_epoch: Callable[[int, dict[str, float]], None],
        already_logged: set[int] | None = None, verbose: int = 2) -> keras.callbacks.History:
    """Train for `epochs`, resuming from `checkpoint_dir` when it holds a backup.

    The evaluation split is passed as validation data, as the authors did: it is reported each
    epoch and never used for model selection (the last epoch is the result).
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [
        # Logging before the backup: an epoch is checkpointed only once it is recorded.
        EpochLogger(log_epoch, schedule, already_logged),
        keras.callbacks.BackupAndRestore(str(checkpoint_dir), save_freq="epoch",
                                         delete_checkpoint=False),
    ]
    return model.fit(train_ds, validation_data=eval_ds, epochs=epochs, callbacks=callbacks,
                     verbose=verbose)


def predict_with_labels(model: keras.Model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs and true labels for a finite (images, labels) dataset, in order."""
    probs = model.predict(ds.map(lambda x, y: x), verbose=0)
    labels = np.concatenate([y.numpy() for _, y in ds])
    return np.asarray(probs, dtype=np.float32), labels
