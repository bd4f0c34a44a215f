"""Feature extraction reads its (uncached) pipeline once and returns what predict returns."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from rssc_mlflow.training import transfer


def test_extract_features_reads_the_dataset_once_and_matches_predict() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(10) % 3
    reads = []

    def examples():
        reads.append(1)  # one call per pass over the dataset (what decoding would cost)
        yield from zip(images, labels)

    ds = tf.data.Dataset.from_generator(examples, output_signature=(
        tf.TensorSpec((8, 8, 3), tf.uint8), tf.TensorSpec((), tf.int64))).batch(4)
    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(5, 3)(inputs))
    backbone = keras.Model(inputs, pooled)

    features, got_labels = transfer.extract_features(backbone, ds)

    assert reads == [1]
    assert features.dtype == np.float32 and features.shape == (10, 5)
    np.testing.assert_array_equal(got_labels, labels)
    expected = backbone.predict(images.astype("float32"), batch_size=4, verbose=0)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
