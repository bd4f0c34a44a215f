"""The layered model-safety check: each layer, alone, catches the fault it is there for."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest
import tensorflow as tf

from rssc_mlflow import model_safety
from rssc_mlflow.model_safety import ModelFileError


@keras.saving.register_keras_serializable(package="rssc_safety_tests")
class Tripler(keras.layers.Layer):
    """Registered, so Keras's safe mode deserialises it: only layers 1 and 3 refuse it."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * 3.0


def _lambda_model(nested: bool = False) -> keras.Model:
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="scale")(inputs)
    inner = keras.Model(inputs, x, name="inner")
    if not nested:
        return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    outer_in = keras.Input((4, 4, 3))
    return keras.Model(outer_in, keras.layers.Dense(2)(keras.layers.Flatten()(inner(outer_in))))


def _custom_model() -> keras.Model:
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(Tripler(name="tripler")(inputs)))


def _plain_model() -> keras.Model:
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))


def _no_deserialising(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("keras.saving.load_model must not be reached")
    monkeypatch.setattr(keras.saving, "load_model", refuse)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_layer_1_refuses_from_the_config_before_deserialising(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    for name, model in [("lambda", _lambda_model()), ("nested", _lambda_model(nested=True)),
                        ("custom", _custom_model())]:
        model.save(tmp_path / f"{name}{suffix}")
    _no_deserialising(monkeypatch)
    for name, match in [("lambda", "Lambda layer 'scale'"), ("nested", "Lambda layer 'scale'"),
                        ("custom", "'tripler' of unknown class '(rssc_safety_tests>)?Tripler'")]:
        path = tmp_path / f"{name}{suffix}"
        with pytest.raises(ModelFileError, match=match):
            model_safety.load_model(path)
        with pytest.raises(ModelFileError, match=match):
            model_safety.check_config(model_safety.read_config(path), str(path))


def test_layer_1_refuses_a_custom_model_class_and_foreign_modules() -> None:
    config = {"class_name": "MyModel", "module": "evil", "config": {"name": "m", "layers": []}}
    with pytest.raises(ModelFileError, match="'m' of unknown class 'MyModel' from evil"):
        model_safety.check_config(config, "f.keras")
    dense = {"class_name": "Dense", "module": "evil.layers", "config": {"name": "d"}}
    wrapped = {"class_name": "Functional", "module": "keras", "config": {"layers": [dense]}}
    with pytest.raises(ModelFileError, match="'d' of unknown class 'Dense' from evil.layers"):
        model_safety.check_config(wrapped, "f.keras")


def test_layer_2_safe_mode_refuses_a_lambda_the_scan_missed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _lambda_model().save(tmp_path / "lambda.keras")
    monkeypatch.setattr(model_safety, "check_config", lambda config, source: None)
    with pytest.raises(ModelFileError, match=r"Could not load the model .*deserialization of a "
                                             r"`Lambda` layer"):
        model_safety.load_model(tmp_path / "lambda.keras")


def test_layer_3_refuses_what_the_scan_missed_and_safe_mode_allowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _custom_model().save(tmp_path / "custom.keras")
    monkeypatch.setattr(model_safety, "check_config", lambda config, source: None)
    # Safe mode itself loads a registered class: the built-model walk is what refuses it.
    assert isinstance(keras.saving.load_model(tmp_path / "custom.keras", safe_mode=True),
                      keras.Model)
    with pytest.raises(ModelFileError, match="'tripler' of unknown class 'Tripler' from tests"):
        model_safety.load_model(tmp_path / "custom.keras")
    with pytest.raises(ModelFileError, match="Lambda layer 'scale'"):
        model_safety.check_layers(_lambda_model(nested=True), "memory")

    class Identity(keras.layers.Lambda):  # a Lambda dressed as a built-in Keras class
        pass
    Identity.__module__ = "keras.layers"
    inputs = keras.Input((3,))
    disguised = keras.Model(inputs, Identity(lambda t: t, name="quiet")(inputs))
    with pytest.raises(ModelFileError, match="Lambda layer 'quiet'"):
        model_safety.check_layers(disguised, "memory")


def test_keras_only_models_load_and_other_files_are_named(tmp_path: Path) -> None:
    model = _plain_model()
    model.save(tmp_path / "plain.keras")
    loaded = model_safety.load_model(tmp_path / "plain.keras")
    assert [x.name for x in loaded.layers] == [x.name for x in model.layers]
    model.save_weights(tmp_path / "w.weights.h5")
    with pytest.raises(ModelFileError, match="weights only"):
        model_safety.load_model(tmp_path / "w.weights.h5")
    assert model_safety.read_config(tmp_path / "w.weights.h5") is None
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="not a valid .keras archive"):
        model_safety.load_model(tmp_path / "broken.keras")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(ModelFileError, match="not a readable HDF5 file"):
        model_safety.load_model(tmp_path / "broken.h5")
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match="unsupported model file type '.onnx'"):
        model_safety.load_model(tmp_path / "m.onnx")
