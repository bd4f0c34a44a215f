"""The model pool: a reused model trains exactly like a fresh one, and its functions are reused.

Tiny eager runs (crop 32, 4 images, 2 epochs of one step): eager mode avoids ~25 s of tracing
per model, and the pool hands out the same model object, reset, whatever the mode.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from rssc_mlflow import models
from rssc_mlflow.tracking import registry
from rssc_mlflow.training import fit as fit_lib
from rssc_mlflow.training import model_pool

CROP, CLASSES, IMAGES, BATCH, EPOCHS = 32, 3, 4, 4, 2


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((IMAGES, CROP, CROP, 3)).astype("float32")
    y = np.arange(IMAGES) % CLASSES
    return x, y


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory) -> Path:
    """A notop weight file standing in for ImageNet weights (a differently seeded ResNet-50)."""
    keras.utils.set_random_seed(123)
    path = tmp_path_factory.mktemp("weights") / models.IMAGENET_WEIGHTS_FILE
    return models.save_notop_weights(models.build_classifier(3, "single", crop=CROP), path)


@pytest.fixture
def sources(weight_file, monkeypatch):
    monkeypatch.setenv(models.IMAGENET_WEIGHTS_ENV, str(weight_file))
    return {ref: registry.resolve_source(ref, profile="smoke") for ref in ("scratch", "imagenet")}


def _train(data, tmp_path: Path, source, seed: int, tag: str, preprocessing: str | None = None):
    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    epochs_of = lambda first_epoch, epochs: ds.repeat(epochs)  # noqa: E731 - same batches
    model = model_pool.acquire(CLASSES, "single", crop=CROP, source=source, seed=seed,
                               run_eagerly=True, preprocessing=preprocessing)
    assert int(model.optimizer.iterations.numpy()) == 0
    schedule = fit_lib.make_schedule(peak_lr=3e-3, steps_per_epoch=IMAGES // BATCH,
                                     epochs=EPOCHS, warmup_epochs=1)
    logged: list[tuple[int, dict[str, float]]] = []
    fit_lib.fit(model, epochs_of, None, epochs=EPOCHS, steps_per_epoch=IMAGES // BATCH,
                schedule=schedule,
                checkpoint_dir=tmp_path / tag, log_epoch=lambda e, v: logged.append((e, v)),
                verbose=0)
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    outputs = np.asarray(model.predict(x, verbose=0))
    return model, weights, logged, outputs


def _same(a, b) -> None:
    _, weights_a, logged_a, out_a = a
    _, weights_b, logged_b, out_b = b
    assert len(weights_a) == len(weights_b)
    for wa, wb in zip(weights_a, weights_b):
        np.testing.assert_array_equal(wa, wb)
    assert logged_a == logged_b  # loss, accuracy and lr of every epoch, exactly
    np.testing.assert_array_equal(out_a, out_b)


def test_pooled_runs_equal_fresh_runs(data, sources, tmp_path) -> None:
    assert not model_pool.is_enabled()
    fresh = _train(data, tmp_path, sources["scratch"], 42, "fresh")
    assert [e for e, _ in fresh[2]] == [1, 2]
    assert fresh[2][0][1]["lr"] == pytest.approx(3e-3)  # warm-up ends with epoch 1

    with model_pool.enabled():
        # A new pooled model trains from another source and seed first ...
        first = _train(data, tmp_path, sources["imagenet"], 7, "pool-1")
        model = first[0]
        assert model is not fresh[0]
        train_function = model.train_function
        assert train_function is not None
        # ... then, reset, it must train exactly like the fresh model.
        second = _train(data, tmp_path, sources["scratch"], 42, "pool-2")
        third = _train(data, tmp_path, sources["imagenet"], 7, "pool-3")
        assert second[0] is model and third[0] is model
        assert model.train_function is train_function  # made once, reused
        # Reset: optimizer state (iterations, rate, moments) back to zero.
        assert int(model.optimizer.iterations.numpy()) > 0
        again = model_pool.acquire(CLASSES, "single", crop=CROP, source=sources["scratch"],
                                   seed=42, run_eagerly=True)
        assert again is model
        assert all(not np.any(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables)
        stats = model_pool.stats()
        assert list(stats["classifiers"].values()) == [4]
        assert stats["sources"] == 1  # the weight file was read once
    assert not model_pool.is_enabled() and model_pool.stats()["classifiers"] == {}

    _same(second, fresh)
    _same(third, first)


def test_pooled_feature_extractor(data, sources) -> None:
    x, _ = data
    fresh = model_pool.feature_extractor(crop=CROP, source=sources["imagenet"], num_classes=5)
    expected = np.asarray(fresh.predict(x, verbose=0))
    assert expected.shape == (IMAGES, models.FEATURE_DIM)
    with model_pool.enabled():
        pooled = model_pool.feature_extractor(crop=CROP, source=sources["imagenet"])
        np.testing.assert_array_equal(np.asarray(pooled.predict(x, verbose=0)), expected)
        predict_function = pooled.predict_function
        assert model_pool.feature_extractor(crop=CROP, source=sources["imagenet"]) is pooled
        pooled.predict(x, verbose=0)
        assert pooled.predict_function is predict_function


def test_uint8_runs_with_preprocessing_in_the_model_equal_float_runs(sources, tmp_path) -> None:
    """What commands do: uint8 batches into `with_preprocessing`, pooled or not, train exactly
    like preprocessed float32 batches into the bare classifier."""
    from rssc_mlflow.data import pipeline

    rng = np.random.default_rng(3)
    x8 = rng.integers(0, 256, (IMAGES, CROP, CROP, 3), dtype=np.uint8)
    y = np.arange(IMAGES) % CLASSES
    xf = pipeline.preprocess(tf.constant(x8), "imagenet-rgb").numpy()
    source = sources["imagenet"]
    floats = _train((xf, y), tmp_path, source, 42, "float")
    fresh = _train((x8, y), tmp_path, source, 42, "uint8", preprocessing="imagenet-rgb")
    assert models.unwrap(fresh[0]) is not fresh[0]
    _, w_float, logged_float, _ = floats
    _, w_uint8, logged_uint8, _ = fresh
    assert logged_uint8 == logged_float
    for a, b in zip(w_uint8, w_float, strict=True):
        np.testing.assert_array_equal(a, b)
    with model_pool.enabled():
        _train((x8, y), tmp_path, sources["scratch"], 7, "pool-1", preprocessing="imagenet-rgb")
        pooled = _train((x8, y), tmp_path, source, 42, "pool-2", preprocessing="imagenet-rgb")
        assert list(model_pool.stats()["classifiers"]) == [
            f"{CLASSES}-single-{CROP}px-float32-eager-_DefaultDistributionStrategyx1"
            "-uint8-imagenet-rgb"]
        extractor = model_pool.feature_extractor(crop=CROP, source=source,
                                                 preprocessing="imagenet-rgb")
        np.testing.assert_array_equal(
            np.asarray(extractor.predict(x8, verbose=0)),
            np.asarray(model_pool.feature_extractor(crop=CROP, source=source).predict(
                xf, verbose=0)))
    _same(pooled, fresh)
