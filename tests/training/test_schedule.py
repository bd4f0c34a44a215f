"""The schedule at exact steps, against hand-computed rates."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from rssc_mlflow import protocol
from rssc_mlflow.training.schedule import (
    WarmupStepDecay,
    decay_boundaries,
    lr_at_epoch,
    peak_lr_for,
)


def rate(schedule: WarmupStepDecay, step: int) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_peak_lr_for() -> None:
    assert peak_lr_for("scratch") == 3e-3
    assert peak_lr_for("imagenet") == 3e-4
    assert peak_lr_for("mlrsnet_sl-adapt") == 3e-4


@pytest.mark.parametrize(
    ("epochs", "expected"),
    [(100, [50, 70, 90]), (10, [5, 7, 9]), (3, [2, 2, 3]), (5, [3, 4, 5]), (1, [1, 1, 1])],
)
def test_boundaries_same_fractions_half_up(epochs: int, expected: list[int]) -> None:
    # 5 epochs: 2.5 -> 3 and 3.5 -> 4 (half up; Python's round() would give 2 and 4).
    assert decay_boundaries(epochs) == expected


def test_paper_schedule_exact_steps() -> None:
    spe = 10
    s = WarmupStepDecay(3e-3, steps_per_epoch=spe, epochs=100)
    warm = 5 * spe  # 50 warm-up steps
    assert rate(s, 0) == pytest.approx(3e-3 / 50)  # first step is not lr 0
    assert rate(s, 1) == pytest.approx(3e-3 * 2 / 50)
    assert rate(s, warm - 1) == pytest.approx(3e-3)  # last warm-up step reaches the peak
    assert rate(s, warm) == pytest.approx(3e-3)  # first post-warm-up step
    assert rate(s, 50 * spe - 1) == pytest.approx(3e-3)  # last step of epoch 49
    assert rate(s, 50 * spe) == pytest.approx(3e-3 * 0.2)  # first step of epoch 50
    assert rate(s, 70 * spe - 1) == pytest.approx(3e-3 * 0.2)
    assert rate(s, 70 * spe) == pytest.approx(3e-3 * 0.04)
    assert rate(s, 90 * spe) == pytest.approx(3e-3 * 0.008)
    assert rate(s, 100 * spe - 1) == pytest.approx(3e-3 * 0.008)


def test_ten_epochs_boundaries() -> None:
    s = WarmupStepDecay(3e-4, steps_per_epoch=4, epochs=10, warmup_epochs=1)
    assert rate(s, 3) == pytest.approx(3e-4)
    assert rate(s, 5 * 4 - 1) == pytest.approx(3e-4)
    assert rate(s, 5 * 4) == pytest.approx(3e-4 * 0.2)
    assert rate(s, 7 * 4) == pytest.approx(3e-4 * 0.04)
    assert rate(s, 9 * 4) == pytest.approx(3e-4 * 0.008)


def test_three_epochs_two_boundaries_in_one_epoch() -> None:
    # Boundaries 2, 2, 3: epoch 2 gets two decays at once; the third is after the run.
    s = WarmupStepDecay(1.0, steps_per_epoch=5, epochs=3, warmup_epochs=1)
    assert rate(s, 0) == pytest.approx(0.2)
    assert rate(s, 9) == pytest.approx(1.0)
    assert rate(s, 10) == pytest.approx(0.04)
    assert rate(s, 14) == pytest.approx(0.04)


def test_warmup_longer_than_run() -> None:
    # 3 epochs with the default 5-epoch warm-up: 15 steps of a 25-step ramp, and the
    # boundary at epoch 2 still applies (warm-up and decay multiply).
    s = WarmupStepDecay(1.0, steps_per_epoch=5, epochs=3)
    assert rate(s, 0) == pytest.approx(1 / 25)
    assert rate(s, 9) == pytest.approx(10 / 25)
    assert rate(s, 10) == pytest.approx(11 / 25 * 0.04)
    assert rate(s, 14) == pytest.approx(15 / 25 * 0.04)


def test_no_warmup() -> None:
    s = WarmupStepDecay(1.0, steps_per_epoch=2, epochs=10, warmup_epochs=0)
    assert rate(s, 0) == pytest.approx(1.0)
    assert rate(s, 10) == pytest.approx(0.2)


def test_float32_step_and_tf_function() -> None:
    s = WarmupStepDecay(3e-3, steps_per_epoch=10, epochs=100)
    fn = tf.function(lambda step: s(step))
    for step in (0, 49, 499, 500):
        expected = rate(s, step)
        assert float(fn(tf.constant(step, tf.int64))) == pytest.approx(expected)
        assert float(fn(tf.constant(float(step), tf.float32))) == pytest.approx(expected)


def test_optimizer_uses_schedule() -> None:
    s = WarmupStepDecay(1.0, steps_per_epoch=2, epochs=10, warmup_epochs=1)
    opt = keras.optimizers.Adam(learning_rate=s)
    assert float(opt.learning_rate) == pytest.approx(0.5)  # iteration 0


def test_config_round_trip() -> None:
    s = WarmupStepDecay(3e-4, steps_per_epoch=7, epochs=10, warmup_epochs=2)
    config = keras.saving.serialize_keras_object(s)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, WarmupStepDecay)
    assert restored.get_config() == s.get_config()
    for step in (0, 13, 34, 35, 69):
        assert rate(restored, step) == pytest.approx(rate(s, step))


def test_lr_at_epoch() -> None:
    s = WarmupStepDecay(1.0, steps_per_epoch=4, epochs=10, warmup_epochs=1)
    assert lr_at_epoch(s, 0) == pytest.approx(0.25)
    assert lr_at_epoch(s, 0, last_step=True) == pytest.approx(1.0)
    assert lr_at_epoch(s, 5) == pytest.approx(0.2)
    assert np.isclose(lr_at_epoch(s, 4, last_step=True), 1.0)


def test_defaults_are_protocol() -> None:
    s = WarmupStepDecay(1.0, steps_per_epoch=1, epochs=100)
    assert s.warmup_epochs == protocol.WARMUP_EPOCHS
    assert s.decay_factor == protocol.DECAY_FACTOR
    assert s.boundaries == list(protocol.DECAY_EPOCHS)
