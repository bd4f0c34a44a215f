"""The paper's learning-rate schedule: per-step linear warm-up, then step decay.

Paper (Sec. "Model and training"): the rate rises linearly, per step, over the first 5 epochs to
3e-3 (from scratch) or 3e-4 (any pre-trained start), then is multiplied by 0.2 at epochs 50, 70
and 90 of 100.

Choices the paper leaves open, fixed here:

- Warm-up uses `(step + 1) / warmup_steps`, so the first step trains with `peak / warmup_steps`
  rather than 0 (a step at rate 0 would be wasted) and the last warm-up step reaches the peak.
- Runs of other lengths decay at the same *fractions* of the run:
  `boundary = floor(d / 100 * epochs + 0.5)` (half up, like `protocol.resize_for_crop`) for
  d in (50, 70, 90). 10 epochs -> 5, 7, 9; 3 epochs -> 2, 2, 3 (the last one falls after the
  run, so never applies).
- A decay applies from the first step of its boundary epoch: 0-based epoch index >= boundary.
- Warm-up and decay multiply: `lr = peak * min(1, (step + 1) / warmup_steps) * 0.2**n`.
  For the paper's schedule this is exactly "warm-up, then step decay" (warm-up ends at epoch 5,
  long before the first boundary); it only matters for short runs where the warm-up is longer
  than the first boundary, which then still decay on time instead of jumping from the peak
  straight to `peak * 0.2**n` when the warm-up ends.

`AuthorsStepSchedule` (`--schedule-steps authors`) is instead the rate the authors' train.py
gave each batch; docs/PROTOCOL.md ("Learning-rate steps") states what it replays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from rssc_mlflow import protocol

PAPER_EPOCHS = 100  # `decay_epochs` are given in units of this schedule length


def decay_boundaries(epochs: int, decay_epochs: Sequence[int] = protocol.DECAY_EPOCHS) -> list[int]:
    """0-based epoch indices from which each decay applies, for a run of `epochs` epochs.

    `decay_epochs` are positions in a 100-epoch run; they are moved to the same fraction of
    `epochs` with half-up rounding (integer arithmetic, so no float surprises at .5).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    return [(2 * d * epochs + PAPER_EPOCHS) // (2 * PAPER_EPOCHS) for d in decay_epochs]


def peak_lr_for(init: str) -> float:
    """Peak learning rate for a start: 3e-3 from scratch, 3e-4 from anything pre-trained."""
    return protocol.PEAK_LR_SCRATCH if init == "scratch" else protocol.PEAK_LR_PRETRAINED


@keras.saving.register_keras_serializable(package="rssc_mlflow")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear per-step warm-up to `peak_lr`, then multiply by `decay_factor` at each boundary.

    Graph-compatible: `__call__` uses only backend ops, and accepts int or float steps (Keras
    passes the optimizer's int64 iteration counter; some callers pass float32).

    Args:
        peak_lr: rate reached at the end of the warm-up.
        steps_per_epoch: optimizer steps per epoch (batches per epoch).
        epochs: length of the run; decay boundaries scale with it (see module docstring).
        warmup_epochs: warm-up length in epochs (may be 0: no warm-up).
        decay_epochs: decay positions in units of a 100-epoch run.
        decay_factor: multiplier applied at each boundary passed.
    """

    def __init__(
        self,
        peak_lr: float,
        steps_per_epoch: int,
        epochs: int,
        warmup_epochs: int = protocol.WARMUP_EPOCHS,
        decay_epochs: Sequence[int] = protocol.DECAY_EPOCHS,
        decay_factor: float = protocol.DECAY_FACTOR,
    ) -> None:
        super().__init__()
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.peak_lr = float(peak_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.warmup_epochs = int(warmup_epochs)
        self.decay_epochs = tuple(int(d) for d in decay_epochs)
        self.decay_factor = float(decay_factor)
        self.boundaries = decay_boundaries(self.epochs, self.decay_epochs)

    @property
    def warmup_steps(self) -> int:
        return self.warmup_epochs * self.steps_per_epoch

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        if self.warmup_steps > 0:
            ramp = ops.minimum((step + 1.0) / float(self.warmup_steps), 1.0)
        else:
            ramp = ops.ones_like(step)
        # Compare steps, not a divided epoch index: integers below 2**24 are exact in float32.
        passed = ops.zeros_like(step)
        for boundary in self.boundaries:
            first_step = float(boundary * self.steps_per_epoch)
            passed = passed + ops.cast(ops.greater_equal(step, first_step), "float32")
        return self.peak_lr * ramp * ops.power(self.decay_factor, passed)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
            "decay_epochs": list(self.decay_epochs),
            "decay_factor": self.decay_factor,
        }


@keras.saving.register_keras_serializable(package="rssc_mlflow")
class AuthorsStepSchedule(WarmupStepDecay):
    """The rate RSSC-transfer's train.py gave each batch (`--schedule-steps authors`).

    Their callback counts warm-up and decays in `counted_steps_per_epoch = n_train // batch`
    (floor) steps while Keras runs `steps_per_epoch = ceil(n_train / batch)` batches, and it
    sets the rate for batch s + 1 after batch s. With w = warmup_epochs * counted steps:

    - batch 0 trains at the optimizer's initial rate (`initial_lr`, their Adam(lr=1e-5));
    - batch b in 1..w at `peak * (b - 1) / w` (so batch 1 at 0);
    - later batches keep the last warm-up rate, `peak * (w - 1) / w` (the peak itself is never
      set), multiplied by `decay_factor` once for every decay step p >= w with p < b, where
      p = boundary * counted steps (boundaries as in `decay_boundaries`: 50, 70, 90 of 100).
      A decay step inside the warm-up (p < w) is never applied, as in their callback.
    """

    def __init__(
        self,
        peak_lr: float,
        steps_per_epoch: int,
        counted_steps_per_epoch: int,
        epochs: int,
        warmup_epochs: int = protocol.WARMUP_EPOCHS,
        decay_epochs: Sequence[int] = protocol.DECAY_EPOCHS,
        decay_factor: float = protocol.DECAY_FACTOR,
        initial_lr: float = protocol.AUTHORS_INITIAL_LR,
    ) -> None:
        if steps_per_epoch >= 1 and (counted_steps_per_epoch < 0 or warmup_epochs < 0):
            raise ValueError("counted_steps_per_epoch and warmup_epochs must be >= 0.")
        super().__init__(peak_lr, steps_per_epoch, epochs, warmup_epochs, decay_epochs,
                         decay_factor)
        self.counted_steps_per_epoch = int(counted_steps_per_epoch)
        self.initial_lr = float(initial_lr)

    @property
    def warmup_steps(self) -> int:
        return self.warmup_epochs * self.counted_steps_per_epoch

    @property
    def decay_steps(self) -> list[int]:
        """Steps after which a decay applies (the first decayed batch is the next one)."""
        return [b * self.counted_steps_per_epoch for b in self.boundaries
                if b * self.counted_steps_per_epoch >= self.warmup_steps]

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        w = float(self.warmup_steps)
        plateau = self.peak_lr * (w - 1.0) / w if w > 0 else self.initial_lr
        ramp = self.peak_lr * (step - 1.0) / w if w > 0 else ops.zeros_like(step)
        rate = ops.where(step < 1.0, self.initial_lr, ops.where(step <= w, ramp, plateau))
        passed = ops.zeros_like(step)
        for p in self.decay_steps:
            passed = passed + ops.cast(ops.greater(step, float(p)), "float32")
        return rate * ops.power(self.decay_factor, passed)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "counted_steps_per_epoch": self.counted_steps_per_epoch,
                "initial_lr": self.initial_lr}


Schedule = WarmupStepDecay | AuthorsStepSchedule


def make_schedule(schedule_steps: str, *, peak_lr: float, n_train: int, batch_size: int,
                  epochs: int, warmup_epochs: int) -> Schedule:
    """The schedule of a run on `n_train` images in batches of `batch_size` (ceil per epoch)."""
    steps_per_epoch = -(-n_train // batch_size)
    if schedule_steps == "paper":
        return WarmupStepDecay(peak_lr=peak_lr, steps_per_epoch=steps_per_epoch, epochs=epochs,
                               warmup_epochs=warmup_epochs)
    if schedule_steps == "authors":
        return AuthorsStepSchedule(peak_lr=peak_lr, steps_per_epoch=steps_per_epoch,
                                   counted_steps_per_epoch=n_train // batch_size,
                                   epochs=epochs, warmup_epochs=warmup_epochs)
    raise ValueError(f"schedule_steps must be one of {protocol.SCHEDULE_STEPS}, "
                     f"got {schedule_steps!r}.")


@keras.saving.register_keras_serializable(package="rssc_mlflow")
class RunSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The optimizer's schedule: the rate of every step of the current run, in a tf.Variable.

    `fit` gives it the run's `Schedule` (`assign`), which is tabulated step by step; the
    optimizer then reads `rates[iterations]` (the last rate past the end). Because the numbers
    live in a variable, a traced train step does not depend on them: one compiled model
    (`speed`'s pool) follows each new run's schedule without being traced again.
    """

    def __init__(self, schedule: dict[str, Any] | Schedule | None = None) -> None:
        super().__init__()
        import tensorflow as tf  # this module's schedules use only keras.ops

        self._rates = tf.Variable([0.0], shape=tf.TensorShape([None]), dtype=tf.float32,
                                  trainable=False, name="run_schedule_rates")
        self.schedule: Schedule | None = None
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        if schedule is not None:
            self.assign(schedule)

    def assign(self, schedule: Schedule, steps: int | None = None) -> None:
        """Follow `schedule` for `steps` steps (default: its whole run)."""
        import numpy as np

        if steps is None:
            steps = schedule.steps_per_epoch * schedule.epochs
        rates = keras.ops.convert_to_numpy(schedule(np.arange(max(1, steps), dtype=np.int64)))
        self._rates.assign(np.asarray(rates, dtype=np.float32))
        self.schedule = schedule

    def rates(self) -> Any:
        return self._rates.numpy()

    def __call__(self, step: Any) -> Any:
        import tensorflow as tf

        last = tf.shape(self._rates, out_type=tf.int64)[0] - 1
        return tf.gather(self._rates, tf.minimum(tf.cast(step, tf.int64), last))

    def get_config(self) -> dict[str, Any]:
        return {"schedule": None if self.schedule is None
                else keras.saving.serialize_keras_object(self.schedule)}
