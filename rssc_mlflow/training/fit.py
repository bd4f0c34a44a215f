"""The one training loop behind pretrain, adapt and finetune, as the paper trains.

Keras `fit` with: `keras.optimizers.Adam` on the warm-up + step-decay schedule (a
`LearningRateSchedule`, `schedule.RunSchedule`), a checkpoint at the end of every epoch
(`keras.callbacks.BackupAndRestore`, so a resumed run continues where it stopped), and one
callback per epoch (`EpochLogger`: one batched MLflow call, and a hard stop with a clear error
when the loss becomes NaN).

The CPU speed work (model reuse, a fused Adam kernel, a faster conv-gradient kernel, an early
build) is `speed`'s, behind its one switch; none of it changes what is trained.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf

from rssc_mlflow.errors import RsscError
from rssc_mlflow.training import metrics as metrics_lib
from rssc_mlflow.training import speed
from rssc_mlflow.training.schedule import RunSchedule, Schedule, WarmupStepDecay

# optimizer -> the RunSchedule it was made with (Keras exposes only the current rate).
_run_schedules: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class NanLossError(RsscError):
    """Training diverged."""


class EpochLogger(keras.callbacks.Callback):
    """Hands each finished epoch's logs (plus the learning rate) to `log_epoch(epoch, values)`.

    Epochs are numbered from 1. Epochs listed in `already_logged` (a resumed run) are skipped,
    so a resumed run never records an epoch twice.
    """

    def __init__(self, log_epoch: Callable[[int, dict[str, float]], None],
                 schedule: Schedule, already_logged: set[int] | None = None):
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


def make_schedule(*, peak_lr: float, steps_per_epoch: int, epochs: int,
                  warmup_epochs: int) -> WarmupStepDecay:
    """The paper's schedule (`schedule.make_schedule` picks by `--schedule-steps`)."""
    return WarmupStepDecay(peak_lr=peak_lr, steps_per_epoch=steps_per_epoch, epochs=epochs,
                           warmup_epochs=warmup_epochs)


def compile_model(model: keras.Model, *, task: str, run_eagerly: bool = False) -> None:
    """Adam on a `RunSchedule` (`fit` gives it the run's schedule); the loss and in-training
    metrics follow the task."""
    loss = "binary_crossentropy" if task == "multi" else "sparse_categorical_crossentropy"
    run_schedule = RunSchedule()
    optimizer = speed.adam(run_schedule)
    _run_schedules[optimizer] = run_schedule
    model.compile(optimizer=optimizer, loss=loss,
                  metrics=metrics_lib.keras_metrics(task), run_eagerly=run_eagerly)
    speed.fast_conv_gradients(model)


class TrainingEpochs(Protocol):
    """The training batches of epochs first_epoch .. first_epoch + epochs - 1, one after another
    (`pipeline.make_dataset` with its other arguments bound, e.g. by `functools.partial`)."""

    def __call__(self, *, first_epoch: int, epochs: int) -> tf.data.Dataset: ...


def fit(model: keras.Model, train: TrainingEpochs, eval_ds: tf.data.Dataset | None, *,
        epochs: int, steps_per_epoch: int, schedule: Schedule,
        checkpoint_dir: Path | None, log_epoch: Callable[[int, dict[str, float]], None],
        already_logged: set[int] | None = None, verbose: int = 2,
        callbacks: Sequence[keras.callbacks.Callback] = ()) -> int:
    """Train for `epochs`, resuming from `checkpoint_dir` when it holds a backup.

    The evaluation split is passed as validation data, as the authors did: it is reported each
    epoch and never used for model selection (the last epoch is the result). `eval_ds=None`
    skips it (the `demo` profile: the final evaluation is made after `fit` anyway).
    The model must have been compiled by `compile_model`: its optimizer's `RunSchedule` is
    given `schedule`, so the rate of every step is `schedule(step)`. Returns the epoch
    training started from (0 unless resumed).

    A resumed run restores weights, optimizer state and the epoch from the backup, then asks
    `train` for the epochs left: their batches depend only on (seed, epoch), so with op
    determinism the resumed run ends with exactly the weights of an uninterrupted one.
    """
    run_schedule = _run_schedules.get(model.optimizer)
    if run_schedule is None:
        raise ValueError("fit: compile the model with compile_model (Adam on a RunSchedule).")
    run_schedule.assign(schedule, steps=epochs * steps_per_epoch)
    speed.prebuild(model, train(first_epoch=0, epochs=1))
    extra_callbacks = list(callbacks)  # the caller's (e.g. progress.DurationEstimate)
    callbacks: list[keras.callbacks.Callback] = [
        # Logging before the backup: an epoch is checkpointed only once it is recorded.
        EpochLogger(log_epoch, schedule, already_logged),
        *extra_callbacks,
    ]
    first_epoch = 0
    if checkpoint_dir is not None:  # None: no per-epoch backup (each costs a full weight write)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        # double_checkpoint: a kill while the weights are written falls back to the previous
        # epoch's backup instead of failing to load a truncated file.
        backup = keras.callbacks.BackupAndRestore(
            str(checkpoint_dir), save_freq="epoch", delete_checkpoint=False,
            double_checkpoint=True)
        callbacks.append(backup)
        # Restore now (fit restores again; cheap) to learn which epoch the data must start at.
        backup.set_model(model)
        backup.on_train_begin()
        # Backups are made at epoch ends only, so the restored step count gives the epoch.
        first_epoch = int(model.optimizer.iterations.numpy()) // steps_per_epoch
    if first_epoch >= epochs:
        return first_epoch  # killed after the last backup: nothing left to train
    model.fit(length_hidden(train(first_epoch=first_epoch, epochs=epochs - first_epoch)),
              validation_data=eval_ds, epochs=epochs, initial_epoch=first_epoch,
              steps_per_epoch=steps_per_epoch, shuffle=False,  # the pipeline shuffles
              callbacks=callbacks, verbose=verbose)
    return first_epoch


def length_hidden(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with its length unknown to Keras, for `fit` on a dataset that holds all its epochs.

    Given `steps_per_epoch` and a dataset of known length, Keras starts a new iterator over
    the dataset as soon as it has taken that many batches: after the last epoch, when nothing
    will read it, and `fit` then waits while tf.data tears it down. Unknown, it keeps one.
    """
    return ds.filter(lambda *_: True)


def predict_with_labels(model: keras.Model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs and true labels for a finite (images, labels) dataset, in order."""
    probs = model.predict(ds.map(lambda x, y: x), verbose=0)
    labels = np.concatenate([y.numpy() for _, y in ds])
    return np.asarray(probs, dtype=np.float32), labels
