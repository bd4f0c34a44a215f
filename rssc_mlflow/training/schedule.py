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
"""

from __future__ import annotations

from typing import Any, Sequence

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


def lr_at_epoch(schedule: WarmupStepDecay, epoch: int, *, last_step: bool = False) -> float:
    """Rate used at the first (or, with `last_step`, the last) step of 0-based `epoch`, for logs."""
    step = epoch * schedule.steps_per_epoch + (schedule.steps_per_epoch - 1 if last_step else 0)
    return float(keras.ops.convert_to_numpy(schedule(step)))
