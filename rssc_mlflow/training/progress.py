"""How long a training run will take on this machine, measured from its first steps."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import keras

# Steps timed after the first one (which traces the graph and fills the pipeline's caches).
MEASURED_STEPS = 5


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class DurationEstimate(keras.callbacks.Callback):
    """Times up to `MEASURED_STEPS` training steps after the first one and says, once, what the
    steps left will take at that pace (`say`, e.g. `runs.announce`).

    The first step is left out: it includes tracing and the first decoding of the images, so it
    says nothing about the steps after it. The timed steps stay within the first epoch, so no
    evaluation is timed with them; it comes on top. An epoch of one step has nothing to time and
    gets no estimate, nor does a run with no step left after the timed ones. `clock` is for
    tests.
    """

    def __init__(self, batch_size: int, say: Callable[[str], None], *,
                 measured_steps: int = MEASURED_STEPS,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self._batch_size, self._say, self._clock = batch_size, say, clock
        self._measured_steps = measured_steps
        self._first_epoch: int | None = None
        self._seen = 0
        self._started = 0.0
        self.seconds_per_step: float | None = None
        self.estimate_s: float | None = None

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._first_epoch, self._seen, self.seconds_per_step = None, 0, None

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._first_epoch is None:
            self._first_epoch = epoch  # > 0 for a resumed run

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.seconds_per_step is not None:
            return
        self._seen += 1
        params = self.params or {}
        steps = int(params.get("steps") or 0)
        total = (int(params.get("epochs", 1)) - (self._first_epoch or 0)) * steps
        timed = min(self._measured_steps, steps - 1)
        if timed < 1 or total - 1 - timed < 1:
            return
        if self._seen == 1:
            _wait_for(logs)
            self._started = self._clock()
        elif self._seen == 1 + timed:
            _wait_for(logs)
            self.seconds_per_step = (self._clock() - self._started) / timed
            self.estimate_s = self.seconds_per_step * (total - self._seen)
            self._say(f"measured {self.seconds_per_step:.2f} s per step of {self._batch_size} "
                      f"images (steps 2-{self._seen}): the {total - self._seen} steps left take "
                      f"about {format_duration(self.estimate_s)} on this machine, per-epoch "
                      "evaluation not included")


def _wait_for(logs: Mapping[str, Any] | None) -> None:
    """Reading a value waits for the step that computes it (GPU steps run asynchronously)."""
    for value in (logs or {}).values():
        float(value)
        return
