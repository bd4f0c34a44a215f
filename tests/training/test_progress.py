"""The duration estimate, driven the way Keras drives a callback, with a clock we control."""

from __future__ import annotations

from rssc_mlflow import commands
from rssc_mlflow.training.progress import DurationEstimate, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _drive(estimate: DurationEstimate, clock: Clock, *, epochs: int, steps: int,
           first_epoch: int, step_s: list[float]) -> None:
    estimate.set_params({"epochs": epochs, "steps": steps, "verbose": 2})
    estimate.on_train_begin()
    estimate.on_epoch_begin(first_epoch)
    for batch, seconds in enumerate(step_s):
        clock.now += seconds
        estimate.on_train_batch_end(batch, {"loss": 1.0})


def test_the_first_step_is_left_out_and_the_rest_are_extrapolated():
    said, clock = [], Clock()
    estimate = DurationEstimate(100, said.append, measured_steps=5, clock=clock)
    # 10 epochs of 21 steps; step 1 traces (40 s), steps 2-6 take 0.5, 0.7, 0.6, 0.4, 0.8 s.
    _drive(estimate, clock, epochs=10, steps=21, first_epoch=0,
           step_s=[40.0, 0.5, 0.7, 0.6, 0.4, 0.8, 9.0, 9.0])
    assert estimate.seconds_per_step == (0.5 + 0.7 + 0.6 + 0.4 + 0.8) / 5  # 0.6 s
    assert estimate.estimate_s == 0.6 * (10 * 21 - 6)  # 204 steps left: 122.4 s
    assert said == ["measured 0.60 s per step of 100 images (steps 2-6): the 204 steps left "
                    "take about 2 min on this machine, per-epoch evaluation not included"]


def test_a_resumed_run_counts_only_the_epochs_left():
    said, clock = [], Clock()
    estimate = DurationEstimate(8, said.append, measured_steps=2, clock=clock)
    _drive(estimate, clock, epochs=100, steps=10, first_epoch=90, step_s=[5.0, 2.0, 2.0])
    assert estimate.estimate_s == 2.0 * (10 * 10 - 3)
    assert "the 97 steps left take about 3 min" in said[0]


def test_timed_steps_stay_in_the_first_epoch():
    said, clock = [], Clock()
    estimate = DurationEstimate(8, said.append, measured_steps=5, clock=clock)
    _drive(estimate, clock, epochs=4, steps=3, first_epoch=0, step_s=[9.0, 1.0, 3.0, 50.0])
    assert estimate.seconds_per_step == 2.0  # steps 2 and 3; step 4 starts epoch 2
    assert said[0].startswith("measured 2.00 s per step of 8 images (steps 2-3): the 9 steps")


def test_nothing_to_time_or_nothing_left():
    for epochs, steps in ((5, 1), (1, 2)):  # one step per epoch; one step timed, none left
        said, clock = [], Clock()
        estimate = DurationEstimate(8, said.append, clock=clock)
        _drive(estimate, clock, epochs=epochs, steps=steps, first_epoch=0, step_s=[3.0] * 5)
        assert said == [] and estimate.estimate_s is None


def test_format_duration():
    assert [format_duration(s) for s in (4.2, 89, 600, 5399, 5400, 36000)] == [
        "4 s", "89 s", "10 min", "90 min", "1.5 h", "10.0 h"]


def test_gpu_warning_only_for_paper_without_gpu():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        assert commands.gpu_warning("paper") == ""
    else:
        assert commands.gpu_warning("paper").startswith(
            "WARNING: profile paper (100 epochs at 256 px) and TensorFlow sees no GPU")
    assert commands.gpu_warning("demo") == "" and commands.gpu_warning("smoke") == ""
