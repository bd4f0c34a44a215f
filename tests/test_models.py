"""ResNet-50 classifiers, weight files and safe loading (tiny crops to stay fast on CPU)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from rssc_mlflow import models
from rssc_mlflow.errors import ModelError

CROP = 32


@pytest.fixture(scope="module")
def classifier() -> keras.Model:
    model = models.build_classifier(5, "single", crop=CROP)
    # Non-trivial BN statistics, so a load that skipped them would show in the outputs.
    rng = np.random.default_rng(0)
    for layer in model.get_layer("resnet50").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    return model


def run(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Eager inference: no tf.function tracing per model, which `predict` would pay each time."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def images(n: int = 2, crop: int = CROP) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (n, crop, crop, 3)).astype("float32")


def test_single_head(classifier: keras.Model) -> None:
    assert classifier.output.shape == (None, 5)
    head = classifier.get_layer("predictions")
    assert head.activation is keras.activations.softmax
    assert classifier.get_layer("resnet50").name == "resnet50"
    assert not any(isinstance(x, keras.layers.Lambda) for x in classifier.layers)
    probs = run(classifier, images())
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_backbone_and_replace_head(classifier: keras.Model) -> None:
    backbone = models.backbone_of(classifier)
    assert backbone.output.shape == (None, models.FEATURE_DIM)
    assert models.backbone_of(backbone) is backbone
    multi = models.replace_head(classifier, 7, "multi")
    assert multi.output.shape == (None, 7)
    assert multi.get_layer("predictions").activation is keras.activations.sigmoid
    # Shared backbone: same features as the original classifier.
    x = images()
    np.testing.assert_allclose(
        run(models.backbone_of(multi), x), run(backbone, x)
    )
    # Also from a bare Keras ResNet-50 (pooling is added).
    bare = models.backbone_of(keras.applications.ResNet50(include_top=False, weights=None,
                                                           input_shape=(CROP, CROP, 3)))
    assert bare.output.shape == (None, models.FEATURE_DIM)
    with pytest.raises(ValueError):
        models.replace_head(classifier, 3, "binary")  # type: ignore[arg-type]


@pytest.mark.parametrize("filename", ["notop.h5", "notop.weights.h5"])
def test_saved_notop_loads_in_keras_resnet50(
    classifier: keras.Model, tmp_path: Path, filename: str
) -> None:
    path = models.save_notop_weights(classifier, tmp_path / filename)
    keras_model = keras.applications.ResNet50(
        include_top=False, weights=str(path), input_shape=(CROP, CROP, 3)
    )
    x = images()
    np.testing.assert_array_equal(run(keras_model, x), run(classifier.get_layer("resnet50"), x))


def test_notop_file_as_imagenet_weights_at_another_crop(
    classifier: keras.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = models.save_notop_weights(classifier, tmp_path / models.IMAGENET_WEIGHTS_FILE)
    monkeypatch.setenv(models.IMAGENET_WEIGHTS_ENV, str(path))
    # Loaded by layer name into a 64 px model: conv weights do not depend on the input size.
    bigger = models.build_classifier(3, "multi", crop=64, backbone_weights="imagenet")
    same_crop = models.build_classifier(3, "multi", crop=CROP)
    models.copy_backbone_weights(bigger, same_crop)
    x = images()
    np.testing.assert_array_equal(
        run(models.backbone_of(same_crop), x), run(models.backbone_of(classifier), x)
    )


def test_imagenet_weights_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(models.IMAGENET_WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    with pytest.raises(ModelError) as err:
        models.imagenet_weights_path()
    message = str(err.value)
    assert "ImageNet weights not found" in message
    assert models.IMAGENET_WEIGHTS_URL in message and "RSSC_IMAGENET_WEIGHTS" in message

    cached = tmp_path / "home" / ".keras" / "models" / models.IMAGENET_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert models.imagenet_weights_path() == cached

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(ModelError):
        models.imagenet_weights_path()
    keras_home = tmp_path / "kh" / "models" / models.IMAGENET_WEIGHTS_FILE
    keras_home.parent.mkdir(parents=True)
    keras_home.write_bytes(b"")
    assert models.imagenet_weights_path() == keras_home

    monkeypatch.setenv(models.IMAGENET_WEIGHTS_ENV, str(tmp_path / "nope.h5"))
    with pytest.raises(ModelError, match="nope.h5"):
        models.imagenet_weights_path()
    monkeypatch.setenv(models.IMAGENET_WEIGHTS_ENV, str(cached))
    assert models.imagenet_weights_path() == cached


def test_load_model_file_keras_and_h5(classifier: keras.Model, tmp_path: Path) -> None:
    x = images()
    expected = run(classifier, x)
    for name in ("model.keras", "model.h5"):
        classifier.save(tmp_path / name)
        loaded = models.load_model_file(tmp_path / name)
        np.testing.assert_allclose(run(loaded, x), expected, rtol=1e-6)
    # A notop weight file comes back as a pooled backbone at the requested crop.
    weights = models.save_notop_weights(classifier, tmp_path / "bb.h5")
    backbone = models.load_model_file(weights, crop=CROP)
    assert backbone.output.shape == (None, models.FEATURE_DIM)
    np.testing.assert_array_equal(
        run(backbone, x), run(models.backbone_of(classifier), x)
    )


def test_load_model_file_refuses_lambda(tmp_path: Path) -> None:
    inputs = keras.Input((CROP, CROP, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="scale")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelError, match="Lambda layer 'scale'"):
        models.load_model_file(tmp_path / "lambda.keras")


@keras.saving.register_keras_serializable(package="rssc_tests")
class Doubler(keras.layers.Layer):
    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * 2.0


def test_load_model_file_refuses_custom_layer(tmp_path: Path) -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, Doubler(name="doubler")(inputs))
    model.save(tmp_path / "custom.keras")
    with pytest.raises(ModelError, match="doubler"):
        models.load_model_file(tmp_path / "custom.keras")


def test_load_model_file_refuses_non_resnet(tmp_path: Path) -> None:
    model = keras.Sequential(
        [
            keras.Input((CROP, CROP, 3)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )
    model.save(tmp_path / "cnn.keras")
    with pytest.raises(ModelError, match="conv1_conv"):
        models.load_model_file(tmp_path / "cnn.keras")
    with pytest.raises(ModelError, match="does not exist"):
        models.load_model_file(tmp_path / "missing.keras")
    (tmp_path / "cnn.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="unsupported"):
        models.load_model_file(tmp_path / "cnn.onnx")


def test_check_resnet50(classifier: keras.Model) -> None:
    models.check_resnet50(classifier)
    models.check_resnet50(models.backbone_of(classifier))
    # The authors' flat layout: ResNet-50 layers at the top level of the classifier.
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(CROP, CROP, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    flat = keras.Model(base.input, keras.layers.Dense(3, activation="softmax")(pooled))
    models.check_resnet50(flat)
    assert models.backbone_of(flat).output.shape == (None, models.FEATURE_DIM)
    one_channel = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(CROP, CROP, 1)
    )
    with pytest.raises(ModelError, match=r"conv1_conv.*\(7, 7, 1, 64\)"):
        models.check_resnet50(one_channel)


def test_load_backbone_weights_refuses_partial_file(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "partial.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv1_conv"]
        f.create_group("conv1_conv").attrs["weight_names"] = []
    # A stand-in with the first ResNet layer is enough to exercise the name matching.
    model = keras.Sequential([keras.Input((CROP, CROP, 3)), keras.layers.Conv2D(64, 7, name="conv1_conv")])
    with pytest.raises(ModelError, match="conv1_conv/kernel is missing"):
        models.load_backbone_weights(model, path)


def _layer_arrays(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [keras.ops.convert_to_numpy(w) for w in layer.weights]
            for layer in model.layers if layer.weights}


def test_legacy_h5_loader_equals_keras_by_name_which_skips_missing_layers(
        classifier: keras.Model, tmp_path: Path) -> None:
    """Why load_backbone_weights reads .h5 files itself: on complete files Keras's by-name
    loader gives the same arrays, but a layer missing from the file is silently left as it
    was, where ours refuses the file."""
    import h5py

    path = models.save_notop_weights(classifier, tmp_path / models.IMAGENET_WEIGHTS_FILE)
    saved = _layer_arrays(classifier.get_layer("resnet50"))
    ours = models.build_classifier(3, "multi", crop=CROP)  # a head, a fresh init
    models.load_backbone_weights(ours, path)
    theirs = models.build_classifier(3, "multi", crop=CROP)
    theirs.get_layer("resnet50").load_weights(path, by_name=True)
    ours_arrays = _layer_arrays(ours.get_layer("resnet50"))
    theirs_arrays = _layer_arrays(theirs.get_layer("resnet50"))
    assert ours_arrays.keys() == saved.keys() == theirs_arrays.keys() and len(saved) > 100
    for name, arrays in saved.items():
        assert len(ours_arrays[name]) == len(arrays) == len(theirs_arrays[name]), name
        for mine, keras_one, want in zip(ours_arrays[name], theirs_arrays[name], arrays):
            np.testing.assert_array_equal(mine, want, err_msg=name)
            np.testing.assert_array_equal(keras_one, want, err_msg=name)

    # The same file without one BatchNorm layer's weights.
    missing = "conv5_block3_3_bn"
    with h5py.File(path, "a") as f:
        del f[missing]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = [n.encode() for n in names if n != missing]
    fresh = models.build_classifier(3, "multi", crop=CROP)
    before = _layer_arrays(fresh.get_layer("resnet50"))[missing]
    fresh.get_layer("resnet50").load_weights(path, by_name=True)  # no error from Keras
    after = _layer_arrays(fresh.get_layer("resnet50"))
    for kept, init in zip(after[missing], before):
        np.testing.assert_array_equal(kept, init)  # still the random init
    np.testing.assert_array_equal(after["conv1_conv"][0], saved["conv1_conv"][0])
    with pytest.raises(ModelError, match=f"no weights for layer '{missing}'"):
        models.load_backbone_weights(models.build_classifier(3, "multi", crop=CROP), path)


def test_preprocessing_for() -> None:
    assert models.preprocessing_for("imagenet", None) == "imagenet-rgb"
    assert models.preprocessing_for("imagenet", "imagenet-caffe") == "imagenet-caffe"
    assert models.preprocessing_for("imagenet", "unit") == "unit"
    assert models.preprocessing_for("scratch", None) == "unit"
    assert models.preprocessing_for("imagenet100", None) == "unit"
    with pytest.raises(ValueError, match="unit, imagenet-rgb, imagenet-caffe"):
        models.preprocessing_for("imagenet", "bgr")
    with pytest.raises(ValueError, match="ImageNet-lineage"):
        models.preprocessing_for("scratch", "imagenet-rgb")


def test_set_precision_on_cpu() -> None:
    try:
        assert models.set_precision("mixed") == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        model = models.build_classifier(3, "multi", crop=CROP)
        assert model.get_layer("resnet50").get_layer("conv1_conv").compute_dtype == "bfloat16"
        assert model.output.dtype == "float32"
        with pytest.raises(ValueError):
            models.set_precision("half")  # type: ignore[arg-type]
    finally:
        assert models.set_precision("float32") == "float32"


def test_make_strategy() -> None:
    assert isinstance(models.make_strategy("auto"), tf.distribute.Strategy)
    with pytest.raises(ValueError):
        models.make_strategy("tpu")  # type: ignore[arg-type]


def test_with_preprocessing_runs_the_pipeline_arithmetic_inside_the_model(
        classifier: keras.Model) -> None:
    from rssc_mlflow.data import pipeline

    x8 = np.random.default_rng(2).integers(0, 256, (2, CROP, CROP, 3), dtype=np.uint8)
    for mode in ("unit", "imagenet-rgb", "imagenet-caffe"):
        wrapped = models.with_preprocessing(classifier, mode)
        assert wrapped.inputs[0].dtype == "uint8"
        assert models.unwrap(wrapped) is classifier
        assert wrapped.weights == classifier.weights  # shared, not copied
        expected = run(classifier, pipeline.preprocess(tf.constant(x8), mode).numpy())
        np.testing.assert_array_equal(run(wrapped, x8), expected)
    assert models.unwrap(classifier) is classifier
    with pytest.raises(ValueError, match="Unknown preprocessing 'torch'"):
        models.Preprocess("torch")


def test_with_preprocessing_keeps_float32_input_under_mixed_precision(
        classifier: keras.Model) -> None:
    """The means are subtracted in float32 before the first conv casts: as in the pipeline."""
    try:
        models.set_precision("mixed")
        layer = models.Preprocess("imagenet-rgb")
        out = layer(tf.constant(np.full((1, 2, 2, 3), 200, np.uint8)))
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy()[0, 0, 0], 200 - np.asarray(
            models.protocol.IMAGENET_MEANS_RGB, np.float32), rtol=0, atol=0)
    finally:
        models.set_precision("float32")


def test_zero_init_residual_starts_every_block_as_its_shortcut(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    plain = models.build_classifier(3, "single", crop=CROP)
    keras.utils.set_random_seed(0)
    zero = models.build_classifier(3, "single", crop=CROP, zero_init_residual=True)
    gammas = {layer.name: keras.ops.convert_to_numpy(layer.gamma)
              for layer in zero.get_layer("resnet50").layers
              if isinstance(layer, keras.layers.BatchNormalization)}
    zeroed = sorted(name for name, g in gammas.items() if not np.any(g))
    assert len(zeroed) == 16 and all(name.endswith("_3_bn") for name in zeroed)
    assert all(np.all(g == 1) for name, g in gammas.items() if name not in zeroed)
    # Every other weight is the seeded Keras init, untouched.
    for a, b in zip(plain.weights, zero.weights, strict=True):
        if a.path.split("/")[-2] not in zeroed:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                          keras.ops.convert_to_numpy(b))
    # An identity block's branch adds 0: the block passes on its (already ReLU'd) input.
    backbone = zero.get_layer("resnet50")
    probe = keras.Model(backbone.input, [backbone.get_layer("conv3_block1_out").output,
                                         backbone.get_layer("conv3_block4_out").output])
    block_in, block_out = (keras.ops.convert_to_numpy(t) for t in probe(images(), training=False))
    np.testing.assert_allclose(block_out, block_in, rtol=1e-6, atol=1e-6)
    # Loaded weights replace it: a fine-tuning from a source starts from the source's gammas.
    path = models.save_notop_weights(plain, tmp_path / "plain.h5")
    loaded = models.build_classifier(3, "single", crop=CROP, zero_init_residual=True,
                                     backbone_weights=path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.get_layer("resnet50").get_layer("conv2_block1_3_bn").gamma),
        np.ones(256, "float32"))


def test_zero_init_residual_refuses_a_network_without_resnet50_names() -> None:
    other = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.BatchNormalization()],
                             name="not_resnet")
    with pytest.raises(ModelError, match=r"expected 16 .* found 0\. Received: 'not_resnet'"):
        models.zero_init_residual_gammas(other)
