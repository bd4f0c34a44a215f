"""fit: the run's training data is read through one iterator.

Keras `fit`, given `steps_per_epoch` and a dataset of known length, opens a second iterator
over it once it has taken that many batches, i.e. after the last epoch of a dataset that holds
all the epochs (`make_dataset`); tearing that unused iterator down kept a demo-profile
`pretrain` waiting after its last epoch (docs/PERFORMANCE.md). Keras's default strategy opens
a dataset with `tf.data.Dataset.__iter__`, which is what these tests count.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from rssc_mlflow.data.pipeline import make_dataset
from rssc_mlflow.training import fit as fit_lib

CROP, CLASSES, IMAGES, BATCH, EPOCHS = 32, 3, 12, 4, 3


def _opened(train: Callable[[], object]) -> list[int]:
    """How often each dataset was opened while `train` ran (one count per dataset)."""
    opened: list[tf.data.Dataset] = []  # held, so no id is reused while counting
    original = tf.data.Dataset.__iter__

    def spy(self):
        opened.append(self)
        return original(self)

    with mock.patch.object(tf.data.Dataset, "__iter__", spy):
        train()
    distinct = {id(ds): ds for ds in opened}.values()
    return [sum(ds is other for ds in opened) for other in distinct]


def _examples() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (IMAGES, 40, 40, 3), dtype=np.uint8)
    return tf.data.Dataset.from_tensor_slices({
        "image": [tf.io.encode_png(i).numpy() for i in images],
        "label": np.arange(IMAGES) % CLASSES})


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((CROP, CROP, 3)), keras.layers.Conv2D(2, 3, strides=4),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    fit_lib.compile_model(model, task="single")
    return model


def test_keras_opens_a_dataset_of_known_length_again_after_its_last_batch() -> None:
    # The behaviour `fit_lib.length_hidden` exists for. If this fails after a Keras upgrade,
    # Keras no longer re-opens a consumed dataset and `length_hidden` can go.
    ds = (tf.data.Dataset.from_tensor_slices((np.zeros((IMAGES, 3), np.float32),
                                              np.zeros(IMAGES, np.float32)))
          .batch(BATCH).repeat(EPOCHS))
    assert int(ds.cardinality()) == EPOCHS * IMAGES // BATCH
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    opened = _opened(lambda: model.fit(ds, epochs=EPOCHS, steps_per_epoch=IMAGES // BATCH,
                                       verbose=0))
    assert opened == [2]
    # With its length hidden, once, and every epoch still runs.
    hidden = fit_lib.length_hidden(ds)
    assert int(hidden.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    history = []
    opened = _opened(lambda: history.append(model.fit(
        hidden, epochs=EPOCHS, steps_per_epoch=IMAGES // BATCH, verbose=0)))
    assert opened == [1]
    assert len(history[0].history["loss"]) == EPOCHS


def test_fit_reads_the_runs_pipeline_through_one_iterator() -> None:
    examples = _examples()

    def train(first_epoch: int, epochs: int) -> tf.data.Dataset:
        return make_dataset(examples, training=True, crop=CROP, batch_size=BATCH,
                            preprocessing="unit", num_examples=IMAGES, cache="memory",
                            first_epoch=first_epoch, epochs=epochs)

    model = _tiny_model()
    steps = IMAGES // BATCH
    schedule = fit_lib.make_schedule(peak_lr=1e-3, steps_per_epoch=steps, epochs=EPOCHS,
                                     warmup_epochs=1)
    logged: list[int] = []
    opened = _opened(lambda: fit_lib.fit(
        model, train, None, epochs=EPOCHS, steps_per_epoch=steps, schedule=schedule,
        checkpoint_dir=None, log_epoch=lambda e, v: logged.append(e), verbose=0))
    assert opened == [1]
    assert logged == [1, 2, 3]
    assert int(model.optimizer.iterations.numpy()) == EPOCHS * steps  # every batch trained
