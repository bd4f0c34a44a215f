"""Loading a whole Keras model file without running code it carries: one check, three layers.

Every path that deserialises a model goes through `load_model`: rssc's own
(`models.load_model_file`: registered sources, `rssc weights download`, `rssc import`) and the
pyfunc flavor of every logged model (`tracking/resnet50_pyfunc.py`). This module imports only
Keras, h5py and the standard library: it is copied into each logged model next to that loader
(as `rssc_model_safety`) and must work where rssc is not installed.

1. Before anything is deserialised, the file's config is read as JSON (a `.keras` archive, or
   the `model_config` of a legacy `.h5`), and the model and every layer in it, nested models
   included, must be built-in Keras classes: Lambda layers (they carry code) and classes from
   other modules are refused, naming the layer.
2. Keras loads the file with `safe_mode=True`, which refuses to deserialise a Python lambda
   that the scan missed.
3. The built model is walked with the same rule: what the scan missed and safe mode allows
   (a class registered as serializable) is still refused.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import keras

# Keras's own model containers; anything else that holds layers is not ours to trust.
CONTAINER_CLASSES = frozenset({"Functional", "Model", "Sequential"})
LAMBDA_CLASSES = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda"})  # the last two: Keras 2


class ModelFileError(ValueError):
    """A model file that is refused or cannot be read; the message names the cause."""


def refusal(class_name: str, module: str | None, name: str, source: str) -> str | None:
    """Why a layer of `class_name` (from `module`) is refused, or None when it is a built-in
    Keras layer or container. One rule for configs (layer 1) and built layers (layer 3)."""
    if class_name in LAMBDA_CLASSES:
        return (f"{source} contains a {class_name} layer {name!r}, which runs arbitrary code and "
                "is refused. Rebuild the model without it (do input preprocessing in the data "
                "pipeline) and save it again.")
    known = class_name in CONTAINER_CLASSES or hasattr(keras.layers, class_name)
    if not known or (module is not None and not str(module).startswith("keras")):
        return (f"{source} contains layer {name!r} of unknown class {class_name!r}"
                f"{f' from {module}' if module else ''}; only built-in Keras layers are loaded. "
                "Rebuild the model with Keras layers only and save it again.")
    return None


def _configs(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The model's config and every layer config inside it, descending into nested models."""
    yield config
    for layer in config.get("config", {}).get("layers", []):
        if layer.get("class_name") in CONTAINER_CLASSES:
            yield from _configs(layer)
        else:
            yield layer


def check_config(config: dict[str, Any], source: str) -> None:
    """Layer 1: ModelFileError naming the first refused layer of a model config."""
    for layer in _configs(config):
        reason = refusal(str(layer.get("class_name")), layer.get("module"),
                         layer.get("config", {}).get("name", layer.get("name", "?")), source)
        if reason:
            raise ModelFileError(reason)


def walk(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of a built model, descending into nested models."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from walk(layer)


def check_layers(model: keras.Model, source: str) -> None:
    """Layer 3: ModelFileError naming the first refused class in a built model."""
    for layer in (model, *walk(model)):
        cls = type(layer)
        reason = refusal(cls.__name__, cls.__module__, layer.name, source)
        if reason is None and isinstance(layer, keras.layers.Lambda):  # a renamed subclass
            reason = refusal("Lambda", None, layer.name, source)
        if reason:
            raise ModelFileError(reason)


def read_config(path: str | Path) -> dict[str, Any] | None:
    """The model config of a `.keras` archive or a legacy `.h5`, read as JSON without
    deserialising anything; None for an `.h5` without one (a weight file)."""
    path = Path(path)
    if path.suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{path} is not a valid .keras archive ({exc}). Save it again."
                                 ) from exc
    if path.suffix in (".h5", ".hdf5"):
        try:
            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
        except OSError as exc:
            raise ModelFileError(f"{path} is not a readable HDF5 file: {exc}.") from exc
        if raw is None:
            return None
        return json.loads(raw.decode("utf8") if isinstance(raw, bytes) else raw)
    raise ModelFileError(f"{path}: unsupported model file type {path.suffix!r}; whole models "
                         "are .keras (or legacy .h5) files.")


def load_model(path: str | Path, config: dict[str, Any] | None = None) -> keras.Model:
    """The model in a `.keras` or legacy `.h5` file, through the three layers, uncompiled.

    `config`: the file's config when the caller has read it already (`read_config`).
    """
    path = Path(path)
    config = read_config(path) if config is None else config
    if config is None:
        raise ModelFileError(f"{path} holds weights only, no model config: nothing to load as "
                             "a model.")
    check_config(config, str(path))
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError... for bad files
        raise ModelFileError(f"Could not load the model in {path}: {exc}") from exc
    if not isinstance(model, keras.Model):
        raise ModelFileError(f"{path} does not hold a Keras model.")
    check_layers(model, str(path))
    return model
