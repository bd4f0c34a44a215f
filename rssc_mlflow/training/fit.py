"""The one training loop behind pretrain, adapt and finetune.

Keras `fit` with: Adam on the warm-up + step-decay schedule, a checkpoint at the end of every
epoch (`BackupAndRestore`, so a resumed run continues where it stopped), one batched MLflow call
per epoch, and a hard stop with a clear error when the loss becomes NaN.

The learning rate lives in the optimizer's variable and `StepLearningRate` sets it to
`schedule(step)` before every step (step = the optimizer's iteration count, exactly what Keras
would pass to a schedule given to the optimizer). The traced train step never depends on the
schedule, so one compiled model can be reused for runs of any length (`model_pool`).

Two CPU-speed choices, same mathematics (see `FusedAdam` and `fast_conv_gradients`):
- Adam updates each variable with TensorFlow's fused `ResourceApplyAdam` kernel (the update of
  Keras 2 / TF1's Adam) instead of ~15 separate ops: a 3x cheaper optimizer step on a CPU and
  about 5 s less tracing for ResNet-50.
- On CPU, conv input-gradients use TensorFlow's "eigen_tensor" kernel: the default one is
  10-20x slower at the 1x1 and 2x2 feature maps of small crops (a demo step 4x slower in all).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf

from rssc_mlflow.errors import RsscError
from rssc_mlflow.training import metrics as metrics_lib
from rssc_mlflow.training.schedule import Schedule, WarmupStepDecay

# The CPU kernel used for conv input-gradients inside traced train steps (see module doc).
CPU_CONV_INPUT_GRAD_KERNEL = "eigen_tensor"


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


@keras.saving.register_keras_serializable(package="rssc_mlflow")
class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam whose per-variable update is TensorFlow's fused `ResourceApplyAdam` kernel.

    The same update as `keras.optimizers.Adam` (m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2),
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps), t = iterations + 1), in one op per
    variable. Falls back to Keras's update for anything the kernel does not cover (amsgrad,
    sparse gradients, distribution strategies, non-float32 variables).
    """

    def update_step(self, gradient, variable, learning_rate):
        if (self.amsgrad or isinstance(gradient, tf.IndexedSlices)
                or tf.distribute.has_strategy() or variable.dtype != tf.float32):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        try:
            handles = (variable.handle, self._momentums[index].handle,
                       self._velocities[index].handle)
        except AttributeError:  # not a resource variable
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=handles[0], m=handles[1], v=handles[2],
            beta1_power=tf.pow(beta_1, local_step), beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


class StepLearningRate(keras.callbacks.Callback):
    """Sets the optimizer's learning rate to `schedule(iterations)` before every training step."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self._schedule = schedule
        self._step: int | None = None

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        self._step = None

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
        if self._step is None:
            # Read the device counter once, at the first step (after BackupAndRestore has put
            # a resumed run's optimizer back); counting here afterwards avoids a device-to-host
            # sync before every step on a GPU.
            self._step = int(self.model.optimizer.iterations.numpy())
        self.model.optimizer.learning_rate = self._schedule(self._step)
        self._step += 1


def fast_conv_gradients(model: keras.Model) -> None:
    """On CPU (no GPU visible, float32), trace the model's train step with the fast conv
    input-gradient kernel. A no-op elsewhere and in eager mode (the label only affects graphs)."""
    if tf.config.list_physical_devices("GPU") or getattr(model, "_rssc_fast_conv", False):
        return
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        return
    train_step = model.train_step

    def labelled_train_step(data):
        graph = tf.compat.v1.get_default_graph()
        with graph._kernel_label_map({"Conv2DBackpropInput": CPU_CONV_INPUT_GRAD_KERNEL}):
            return train_step(data)

    model.train_step = labelled_train_step
    model._rssc_fast_conv = True


def make_schedule(*, peak_lr: float, steps_per_epoch: int, epochs: int,
                  warmup_epochs: int) -> WarmupStepDecay:
    """The paper's schedule (`schedule.make_schedule` picks by `--schedule-steps`)."""
    return WarmupStepDecay(peak_lr=peak_lr, steps_per_epoch=steps_per_epoch, epochs=epochs,
                           warmup_epochs=warmup_epochs)


def compile_model(model: keras.Model, *, task: str, run_eagerly: bool = False) -> None:
    """Adam (rate set per step by `fit`); the loss and in-training metrics follow the task."""
    loss = "binary_crossentropy" if task == "multi" else "sparse_categorical_crossentropy"
    model.compile(optimizer=FusedAdam(learning_rate=0.0), loss=loss,
                  metrics=metrics_lib.keras_metrics(task), run_eagerly=run_eagerly)
    fast_conv_gradients(model)


def prebuild(model: keras.Model, data: tf.data.Dataset) -> None:
    """Build the compiled metrics and the optimizer before the train step is traced.

    Keras (without a distribution strategy) builds them inside the first trace, which makes
    TensorFlow trace the whole ResNet-50 train step twice (~10 s more per new model).
    """
    try:
        model._symbolic_build(data_batch=data.element_spec)
    except Exception:  # noqa: BLE001 - private Keras API: without it, Keras builds lazily
        pass


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
    The model must have been compiled by `compile_model`: the rate of
    every step comes from `schedule`. Returns the epoch training started from (0 unless resumed).

    A resumed run restores weights, optimizer state and the epoch from the backup, then asks
    `train` for the epochs left: their batches depend only on (seed, epoch), so with op
    determinism the resumed run ends with exactly the weights of an uninterrupted one.
    """
    prebuild(model, train(first_epoch=0, epochs=1))
    extra_callbacks = list(callbacks)  # the caller's (e.g. progress.DurationEstimate)
    callbacks: list[keras.callbacks.Callback] = [
        StepLearningRate(schedule),
        # Logging before the backup: an epoch is checkpointed only once it is recorded.
        EpochLogger(log_epoch, schedule, already_logged),
        *extra_callbacks,
    ]
    first_epoch = 0
    if checkpoint_dir is not None:  # None: no per-epoch backup (~1.5 s each for ResNet-50)
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
        first_epoch = int(model._initial_epoch or 0)
    if first_epoch >= epochs:
        return first_epoch  # killed after the last backup: nothing left to train
    model.fit(train(first_epoch=first_epoch, epochs=epochs - first_epoch),
              validation_data=eval_ds, epochs=epochs, initial_epoch=first_epoch,
              steps_per_epoch=steps_per_epoch, shuffle=False,  # the pipeline shuffles
              callbacks=callbacks, verbose=verbose)
    return first_epoch


def predict_with_labels(model: keras.Model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs and true labels for a finite (images, labels) dataset, in order."""
    probs = model.predict(ds.map(lambda x, y: x), verbose=0)
    labels = np.concatenate([y.numpy() for _, y in ds])
    return np.asarray(probs, dtype=np.float32), labels
