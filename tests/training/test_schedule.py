"""The schedule at exact steps, against hand-computed rates."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from rssc_mlflow import protocol
from rssc_mlflow.data import splits
from rssc_mlflow.data.catalog import get_spec
from rssc_mlflow.training.schedule import (
    AuthorsStepSchedule,
    WarmupStepDecay,
    decay_boundaries,
    make_schedule,
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


def test_rate_at_the_first_and_last_step_of_an_epoch() -> None:
    s = WarmupStepDecay(1.0, steps_per_epoch=4, epochs=10, warmup_epochs=1)
    assert rate(s, 0 * 4) == pytest.approx(0.25)  # epoch 0, first step
    assert rate(s, 0 * 4 + 3) == pytest.approx(1.0)  # epoch 0, last step
    assert rate(s, 5 * 4) == pytest.approx(0.2)  # epoch 5, first step
    assert np.isclose(rate(s, 4 * 4 + 3), 1.0)  # epoch 4, last step


def test_defaults_are_protocol() -> None:
    s = WarmupStepDecay(1.0, steps_per_epoch=1, epochs=100)
    assert s.warmup_epochs == protocol.WARMUP_EPOCHS
    assert s.decay_factor == protocol.DECAY_FACTOR
    assert s.boundaries == list(protocol.DECAY_EPOCHS)


# --- `--schedule-steps authors`: RSSC-transfer's train.py, step by step --------------------------


def authors_callback_rates(n_train: int, batch: int, peak: float, epochs: int = 100) -> list[float]:
    """The rate each batch trained at under train.py, by running its loop: Adam starts at
    1e-5; after every batch, LRScheduleSteps sets the next batch's rate from its step counter
    (counted in n // batch steps per epoch) while fit runs ceil(n / batch) batches per epoch."""
    counted = n_train // batch
    w, decay_at = 5 * counted, [50 * counted, 70 * counted, 90 * counted]
    lr, rates = 1e-5, []
    for step in range(epochs * -(-n_train // batch)):
        rates.append(lr)  # this batch trains at the current rate
        if step < w:
            lr = peak / w * step
        else:
            for p in decay_at:
                if p == step:
                    lr = lr / 5.0
    return rates


def authors(split: tuple[str, str], peak: float) -> tuple[AuthorsStepSchedule, int]:
    """The authors' schedule for the real split size of a dataset (catalog class counts)."""
    key, role = split
    n = sum(splits.n_train_for(c, role) for c in get_spec(key).expected_per_class.values())
    s = make_schedule("authors", peak_lr=peak, n_train=n, batch_size=100, epochs=100,
                      warmup_epochs=protocol.WARMUP_EPOCHS)
    assert isinstance(s, AuthorsStepSchedule)
    return s, n


def rates(schedule, steps: int) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(schedule(np.arange(steps))), dtype=np.float64)


def test_authors_schedule_ucm_target_exact_steps() -> None:
    s, n = authors(("ucm", "target"), 3e-4)
    assert n == 420 and s.counted_steps_per_epoch == 4 and s.steps_per_epoch == 5
    peak = 3e-4
    assert rate(s, 0) == pytest.approx(1e-5)  # Adam's initial rate
    assert rate(s, 1) == 0.0  # step 0 of the ramp
    assert rate(s, 2) == pytest.approx(peak / 20)
    assert rate(s, 20) == pytest.approx(peak * 19 / 20)  # last ramp value (w = 5 * 4 = 20)
    assert rate(s, 21) == pytest.approx(peak * 19 / 20)  # held: the peak itself is never set
    assert 20 // s.steps_per_epoch == 4  # the warm-up ends in epoch 4 (0-based), not 5
    for decay, (last, epoch) in enumerate([(200, 40), (280, 56), (360, 72)], start=1):
        assert rate(s, last) == pytest.approx(peak * 0.95 * 0.2 ** (decay - 1))
        assert rate(s, last + 1) == pytest.approx(peak * 0.95 * 0.2 ** decay)
        assert (last + 1) // s.steps_per_epoch == epoch  # decays at epochs 40, 56, 72
    # The paper's counting on the same split: decays at epochs 50, 70, 90.
    paper = make_schedule("paper", peak_lr=peak, n_train=n, batch_size=100, epochs=100,
                          warmup_epochs=5)
    assert rate(paper, 249) == pytest.approx(peak) and rate(paper, 250) == pytest.approx(peak * 0.2)


@pytest.mark.parametrize(("split", "peak"), [(("ucm", "target"), 3e-4),
                                             (("ucm", "source"), 3e-3),
                                             (("patternnet", "target"), 3e-4),
                                             (("patternnet", "source"), 3e-3)])
def test_authors_schedule_matches_their_callback_at_every_step(split, peak) -> None:
    s, n = authors(split, peak)
    expected = np.asarray(authors_callback_rates(n, 100, peak))
    got = rates(s, len(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-12)


def test_authors_schedule_patternnet_target_exact_steps() -> None:
    s, n = authors(("patternnet", "target"), 3e-4)
    assert (n, s.counted_steps_per_epoch, s.steps_per_epoch) == (6080, 60, 61)
    peak, w = 3e-4, 300
    assert rate(s, 0) == pytest.approx(1e-5) and rate(s, 1) == 0.0
    assert rate(s, 150) == pytest.approx(peak * 149 / w)
    assert rate(s, w) == pytest.approx(peak * 299 / 300)
    assert w // 61 == 4
    assert rate(s, 3000) == pytest.approx(peak * 299 / 300)
    assert rate(s, 3001) == pytest.approx(peak * 299 / 300 * 0.2)
    assert [p // 61 for p in (3001, 4201, 5401)] == [49, 68, 88]  # epochs of the decays
    assert rate(s, 6099) == pytest.approx(peak * 299 / 300 * 0.008)


def test_authors_schedule_with_fewer_images_than_a_batch() -> None:
    # 0 counted steps per epoch: no warm-up, and train.py divides by 5 three times after batch
    # 0 (every decay step is 0), so training stays at 1e-5 / 125.
    s = make_schedule("authors", peak_lr=3e-3, n_train=40, batch_size=100, epochs=100,
                      warmup_epochs=5)
    assert rate(s, 0) == pytest.approx(1e-5)
    assert rate(s, 1) == pytest.approx(1e-5 / 125) and rate(s, 99) == pytest.approx(1e-5 / 125)
    np.testing.assert_allclose(rates(s, 100), authors_callback_rates(40, 100, 3e-3), rtol=1e-5)


def test_authors_schedule_round_trip_and_unknown_kind() -> None:
    s, _ = authors(("ucm", "target"), 3e-4)
    again = AuthorsStepSchedule.from_config(s.get_config())
    np.testing.assert_allclose(rates(again, 500), rates(s, 500))
    with pytest.raises(ValueError, match="schedule_steps must be one of"):
        make_schedule("author", peak_lr=1.0, n_train=10, batch_size=2, epochs=1, warmup_epochs=0)
