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


def test_probe_epochs_are_full_passes_in_a_fresh_order() -> None:
    """250 rows, batch 100: each epoch is 3 steps (100, 100, 50) holding every row once, and
    the order changes between epochs (the protocol's shuffle) but not between runs (seeded)."""
    x = np.arange(250, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    y = np.arange(250) % 7

    def three_epochs(seed: int) -> list[np.ndarray]:
        ds, steps = transfer.probe_epochs(x, y, batch_size=100, seed=seed)
        assert steps == 3
        batches = [(bx.numpy(), by.numpy()) for bx, by in ds.take(3 * steps)]
        assert [len(bx) for bx, _ in batches] == [100, 100, 50] * 3
        for bx, by in batches:  # rows stay paired with their labels
            np.testing.assert_array_equal(bx[:, 0].astype(int) % 7, by)
        rows = np.concatenate([bx[:, 0] for bx, _ in batches]).astype(int)
        epochs = [rows[i * 250:(i + 1) * 250] for i in range(3)]
        for epoch in epochs:
            assert sorted(epoch) == list(range(250))
        return epochs

    first = three_epochs(seed=42)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    assert all(np.array_equal(a, b) for a, b in zip(first, three_epochs(seed=42)))
    assert not np.array_equal(first[0], three_epochs(seed=7)[0])


def test_adam_probe_trains_epochs_and_learns_separable_features() -> None:
    """The protocol's probe: one history row per epoch, and on features that separate the
    classes it classifies held-out rows as scikit-learn's logistic regression does."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (5, 32)).astype(np.float32)
    labels = rng.integers(0, 5, 300)
    feats = centres[labels] + rng.normal(0, 0.3, (300, 32)).astype(np.float32)
    result = transfer.train_probe(feats[:200], labels[:200], feats[200:], task="single",
                                  num_classes=5, epochs=40, lr=1e-2)
    assert len(result.history) == 40 and "loss" in result.history[0]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    reference = LogisticRegression(max_iter=1000).fit(feats[:200], labels[:200])
    ours = (result.test_probs.argmax(1) == labels[200:]).mean()
    assert ours >= reference.score(feats[200:], labels[200:]) - 0.02
