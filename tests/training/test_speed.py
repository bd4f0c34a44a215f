"""The speed work: a reused model trains exactly like a fresh one (and follows each run's
schedule), each private API it relies on still exists and does what it should, and with the
switch off (`RSSC_SPEED=0`) runs train the same model the plain way.

Tiny eager runs (crop 32, 4 images, 2 epochs of one step): eager mode avoids ~25 s of tracing
per model, and the pool hands out the same model object, reset, whatever the mode.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from rssc_mlflow import models
from rssc_mlflow.tracking import registry
from rssc_mlflow.training import fit as fit_lib
from rssc_mlflow.training import speed

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


def _train(data, tmp_path: Path, source, seed: int, tag: str, preprocessing: str | None = None,
           zero_init_residual: bool = False):
    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    epochs_of = lambda first_epoch, epochs: ds.repeat(epochs)  # noqa: E731 - same batches
    model = speed.acquire(CLASSES, "single", crop=CROP, source=source, seed=seed,
                          run_eagerly=True, preprocessing=preprocessing,
                          zero_init_residual=zero_init_residual)
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
    assert not speed.is_enabled()
    fresh = _train(data, tmp_path, sources["scratch"], 42, "fresh")
    assert [e for e, _ in fresh[2]] == [1, 2]
    assert fresh[2][0][1]["lr"] == pytest.approx(3e-3)  # warm-up ends with epoch 1

    with speed.enabled():
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
        again = speed.acquire(CLASSES, "single", crop=CROP, source=sources["scratch"],
                                   seed=42, run_eagerly=True)
        assert again is model
        assert all(not np.any(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables)
        stats = speed.stats()
        assert list(stats["classifiers"].values()) == [4]
        assert stats["sources"] == 1  # the weight file was read once
    assert not speed.is_enabled() and speed.stats()["classifiers"] == {}

    _same(second, fresh)
    _same(third, first)


def _gammas(model) -> list[np.ndarray]:
    backbone = models.unwrap(model).get_layer(models.BACKBONE_NAME)
    return [keras.ops.convert_to_numpy(layer.gamma) for layer in backbone.layers
            if layer.name.endswith("_3_bn")]


def test_pooled_zero_init_residual_runs_equal_fresh_ones(data, sources, tmp_path) -> None:
    """The profile's init is part of the pool's key: a pooled scratch run with zero-init
    residuals starts at gamma 0 and trains like a fresh one, even after a run without it."""
    fresh = _train(data, tmp_path, sources["scratch"], 42, "fresh", zero_init_residual=True)
    with speed.enabled():
        plain = _train(data, tmp_path, sources["scratch"], 42, "plain")
        model = speed.acquire(CLASSES, "single", crop=CROP, source=sources["scratch"], seed=42,
                              run_eagerly=True, zero_init_residual=True)
        assert model is not plain[0]
        assert len(_gammas(model)) == 16 and not any(np.any(g) for g in _gammas(model))
        pooled = _train(data, tmp_path, sources["scratch"], 42, "pool", zero_init_residual=True)
        again = _train(data, tmp_path, sources["scratch"], 42, "again", zero_init_residual=True)
        assert pooled[0] is again[0] is model
        assert sorted(speed.stats()["classifiers"]) == sorted([
            f"{CLASSES}-single-{CROP}px-float32-eager-_DefaultDistributionStrategyx1",
            f"{CLASSES}-single-{CROP}px-float32-eager-_DefaultDistributionStrategyx1"
            "-zero-init-residual"])
    _same(pooled, fresh)
    _same(again, fresh)
    assert any(np.any(g) for g in _gammas(plain[0]))  # trained from Keras's gamma 1


def test_pooled_feature_extractor(data, sources) -> None:
    x, _ = data
    fresh = speed.feature_extractor(crop=CROP, source=sources["imagenet"], num_classes=5)
    expected = np.asarray(fresh.predict(x, verbose=0))
    assert expected.shape == (IMAGES, models.FEATURE_DIM)
    with speed.enabled():
        pooled = speed.feature_extractor(crop=CROP, source=sources["imagenet"])
        np.testing.assert_array_equal(np.asarray(pooled.predict(x, verbose=0)), expected)
        predict_function = pooled.predict_function
        assert speed.feature_extractor(crop=CROP, source=sources["imagenet"]) is pooled
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
    with speed.enabled():
        _train((x8, y), tmp_path, sources["scratch"], 7, "pool-1", preprocessing="imagenet-rgb")
        pooled = _train((x8, y), tmp_path, source, 42, "pool-2", preprocessing="imagenet-rgb")
        assert list(speed.stats()["classifiers"]) == [
            f"{CLASSES}-single-{CROP}px-float32-eager-_DefaultDistributionStrategyx1"
            "-uint8-imagenet-rgb"]
        extractor = speed.feature_extractor(crop=CROP, source=source,
                                                 preprocessing="imagenet-rgb")
        np.testing.assert_array_equal(
            np.asarray(extractor.predict(x8, verbose=0)),
            np.asarray(speed.feature_extractor(crop=CROP, source=source).predict(
                xf, verbose=0)))
    _same(pooled, fresh)


# --- The reused model follows each run's schedule ---------------------------------------------


class _Rates(keras.callbacks.Callback):
    """The rate the optimizer uses in each step (its schedule at the step's iteration)."""

    def __init__(self):
        super().__init__()
        self.rates: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_reused_model_follows_the_new_runs_schedule_exactly(data, sources, tmp_path) -> None:
    from rssc_mlflow.training.schedule import AuthorsStepSchedule

    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(1)  # 4 steps per epoch
    runs = [(fit_lib.make_schedule(peak_lr=3e-3, steps_per_epoch=IMAGES, epochs=2,
                                   warmup_epochs=1), 2),
            (AuthorsStepSchedule(peak_lr=1e-3, steps_per_epoch=IMAGES, counted_steps_per_epoch=3,
                                 epochs=5, warmup_epochs=2), 5)]
    with speed.enabled():
        models_used = []
        for i, (schedule, epochs) in enumerate(runs):
            model = speed.acquire(CLASSES, "single", crop=CROP, source=sources["scratch"],
                                  seed=1, run_eagerly=True)
            models_used.append(model)
            rates = _Rates()
            fit_lib.fit(model, lambda first_epoch, epochs: ds.repeat(epochs), None,
                        epochs=epochs, steps_per_epoch=IMAGES, schedule=schedule,
                        checkpoint_dir=tmp_path / str(i), log_epoch=lambda e, v: None,
                        verbose=0, callbacks=[rates])
            expected = [float(keras.ops.convert_to_numpy(schedule(s)))
                        for s in range(epochs * IMAGES)]
            assert rates.rates == expected
        assert models_used[0] is models_used[1]
    assert len(set(runs[1][0](s).numpy().item() for s in range(20))) > 3  # a varied schedule


# --- Private APIs: each fails loudly on an upgrade, and has a correct fallback ------------------


def test_fused_adam_updates_like_keras_adam() -> None:
    rng = np.random.default_rng(5)
    init = [rng.normal(size=(7, 3)).astype("float32"), rng.normal(size=(3,)).astype("float32")]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in init] for _ in range(6)]
    results = []
    for cls in (speed.FusedAdam, keras.optimizers.Adam):
        variables = [keras.Variable(w) for w in init]
        optimizer = cls(learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-2, 2, 0.5))
        optimizer.build(variables)
        # `step` runs only within this iteration, so the late binding B023 warns of is moot.
        step = tf.function(lambda g: optimizer.apply(g, variables))  # noqa: B023
        for g in grads:
            step([tf.constant(a) for a in g])
        results.append([v.numpy() for v in variables])
        if cls is speed.FusedAdam:
            ops = {op.type for op in step.get_concrete_function(
                [tf.constant(a) for a in grads[0]]).graph.get_operations()}
            # Loud: Keras's Adam slots moved, so FusedAdam fell back to Keras's update.
            assert "ResourceApplyAdam" in ops, "FusedAdam no longer uses the fused kernel"
    for fused, plain in zip(*results, strict=True):
        assert not np.array_equal(fused, init[0] if fused.shape == init[0].shape else init[1])
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-7)


def test_fast_conv_gradients_label_the_kernel_and_keep_the_gradients() -> None:
    rng = np.random.default_rng(6)
    x = tf.constant(rng.normal(size=(2, 2, 2, 8)).astype("float32"))
    kernel = tf.constant(rng.normal(size=(3, 3, 8, 5)).astype("float32"))

    def input_gradient(labelled: bool):
        def grad(x):
            graph = tf.compat.v1.get_default_graph()
            # Loud: the private API the speed-up needs is gone.
            assert hasattr(graph, "_kernel_label_map"), "tf Graph._kernel_label_map is gone"
            context = (graph._kernel_label_map(
                {"Conv2DBackpropInput": speed.CPU_CONV_INPUT_GRAD_KERNEL})
                if labelled else contextlib.nullcontext())
            with context:  # as in a train step: the gradient is made inside the label map
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = tf.reduce_sum(tf.square(tf.nn.conv2d(x, kernel, 1, "SAME")))
                return tape.gradient(loss, x)

        fn = tf.function(grad)
        graph = fn.get_concrete_function(x).graph
        labels = [op.get_attr("_kernel") for op in graph.get_operations()
                  if op.type == "Conv2DBackpropInput"
                  and "_kernel" in op.node_def.attr]
        return fn(x).numpy(), labels

    fast, fast_labels = input_gradient(True)
    plain, plain_labels = input_gradient(False)
    assert fast_labels == [speed.CPU_CONV_INPUT_GRAD_KERNEL.encode()] and plain_labels == []
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)


def test_prebuild_builds_optimizer_and_metrics_before_the_trace(monkeypatch) -> None:
    x = np.zeros((2, CROP, CROP, 3), "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(2, "int64"))).batch(2)

    def compiled():
        model = keras.Sequential([keras.Input((CROP, CROP, 3)), keras.layers.Flatten(),
                                  keras.layers.Dense(CLASSES, activation="softmax")])
        fit_lib.compile_model(model, task="single")
        return model

    model = compiled()
    assert not model.optimizer.built
    unbuilt_metrics = len(model.metrics_variables)
    assert speed.prebuild(model, ds), "Model._symbolic_build is gone or failed"
    assert model.optimizer.built and len(model.metrics_variables) > unbuilt_metrics
    monkeypatch.setenv(speed.SPEED_ENV, "0")  # the fallback: Keras builds lazily, in fit
    plain = compiled()
    assert not speed.prebuild(plain, ds) and not plain.optimizer.built
    assert type(plain.optimizer) is keras.optimizers.Adam


def test_fast_seed_equals_keras_seed() -> None:
    assert speed._fast_seed_state() is not None, "Keras's global seed state moved"

    def draws():
        layer = keras.layers.Dense(4)
        layer.build((None, 3))
        return [layer.kernel.numpy(), keras.ops.convert_to_numpy(keras.random.normal((3,))),
                np.random.random(), __import__("random").random()]

    keras.utils.set_random_seed(11)
    expected = draws()
    with speed.enabled():
        draws()  # move every stream on
        speed.set_random_seed(11)  # tf's seed is 11 already: the fast path
        got = draws()
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_keras_fit_starts_at_the_initial_epoch_the_pool_clears() -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    assert hasattr(model, "_initial_epoch"), "Keras's Model._initial_epoch is gone"
    x = np.zeros((2, 2), "float32")
    model._initial_epoch = 2  # what BackupAndRestore leaves after a resume
    history = model.fit(x, x[:, :1], epochs=3, verbose=0)
    assert history.epoch == [2], "Keras no longer starts fit at Model._initial_epoch"


def test_with_speed_off_runs_train_the_same_model_only_slower(data, sources, tmp_path,
                                                              monkeypatch) -> None:
    fast = _train(data, tmp_path, sources["imagenet"], 42, "fast")
    assert type(fast[0].optimizer) is speed.FusedAdam
    monkeypatch.setenv(speed.SPEED_ENV, "0")
    with speed.enabled():
        assert not speed.is_enabled()  # the switch turns the pool off too
        plain = _train(data, tmp_path, sources["imagenet"], 42, "plain-1")
        again = _train(data, tmp_path, sources["imagenet"], 42, "plain-2")
        assert speed.stats()["classifiers"] == {}
    assert type(plain[0].optimizer) is keras.optimizers.Adam and again[0] is not plain[0]
    _same(again, plain)
    for a, b in zip(plain[1], fast[1], strict=True):
        # Adam's first steps move a weight by about lr (3e-3) whatever the gradient's size, so
        # rounding in near-zero gradients shows up; a wrong update would be off by ~lr.
        np.testing.assert_allclose(a, b, rtol=0, atol=3e-4)
    assert [e for e, _ in plain[2]] == [e for e, _ in fast[2]]
    for (_, p), (_, f) in zip(plain[2], fast[2]):
        assert p["lr"] == f["lr"] and p["loss"] == pytest.approx(f["loss"], rel=1e-3)


def test_cpu_workers_split_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*speed.TF_THREAD_ENVS, speed.SPEED_ENV):
        monkeypatch.delenv(var, raising=False)
    for cores, workers, threads in ((2, 2, 1), (4, 2, 2), (3, 2, 1), (16, 3, 5), (1, 2, 1)):
        monkeypatch.setattr(speed, "_usable_cores", lambda cores=cores: cores)
        assert speed.cpu_threads_per_worker(workers) == threads, (cores, workers)
    assert speed.cpu_threads_per_worker(1) is None  # alone: TensorFlow's default pools
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "4")  # the user's choice wins
    assert speed.cpu_threads_per_worker(2) is None
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    monkeypatch.setenv(speed.SPEED_ENV, "0")  # the switch turns it off with the rest
    assert speed.cpu_threads_per_worker(2) is None
    with pytest.raises(ValueError, match=r"Received: workers=0"):
        speed.cpu_threads_per_worker(0)


def test_data_autotune_is_off_on_a_cpu_only_machine_with_the_speed_choices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(speed.SPEED_ENV, raising=False)
    gpus: list = []
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: gpus if kind == "GPU" else [])
    assert speed.data_autotune() is False
    gpus.append(tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU"))
    assert speed.data_autotune() is True  # the pipeline may be what a GPU waits for
    gpus.clear()
    monkeypatch.setenv(speed.SPEED_ENV, "0")  # the switch: tf.data's default
    assert speed.data_autotune() is True


def test_a_runs_pipelines_follow_data_autotune(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from rssc_mlflow import commands

    data = SimpleNamespace(label_key="label")
    settings = SimpleNamespace(image_size=32, batch_size=8, seed=42)
    for value in (False, True):
        monkeypatch.setattr(speed, "data_autotune", lambda value=value: value)
        assert commands._pipeline_args(data, settings)["autotune"] is value


def test_usable_cores_follow_the_affinity_mask() -> None:
    import os

    assert speed._usable_cores() == len(os.sched_getaffinity(0))
