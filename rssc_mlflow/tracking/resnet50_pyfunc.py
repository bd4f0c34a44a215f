"""The pyfunc side of every model rssc logs: decoded RGB uint8 images of any size in, class
names and probabilities out.

This file is copied into each logged model (its `code/` folder, as the module
`rssc_resnet50_pyfunc`), and `mlflow.pyfunc.load_model` imports it from there: it imports
nothing of rssc_mlflow, so a registered model loads and predicts where rssc is not installed.

Inside, an image goes through what the run's evaluation did (rssc_mlflow.data.pipeline):
bilinear resize to `resize` x `resize` without antialiasing, rounded to uint8; the central
`crop` x `crop`; the input mode of the model's lineage (`unit`: x / 255; `imagenet-rgb`: minus
the ImageNet means in RGB order; `imagenet-caffe`: RGB -> BGR, minus the means in BGR order);
then the Keras model, loaded through rssc's layered safety check (`rssc_mlflow/model_safety.py`,
copied next to this file as `rssc_model_safety`). The values come from the model's
`rssc_model.json`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "rssc_model.json"
KERAS_FILE = "model.keras"
SAFETY_MODULE = "rssc_model_safety"  # rssc_mlflow/model_safety.py, copied next to this file


def _load_pyfunc(data_path: str) -> ResNet50Classifier:
    """MLflow's entry point for `loader_module` flavors: `data_path` is the model's data/."""
    return ResNet50Classifier.load(Path(data_path))


class ResNet50Classifier:
    """A Keras classifier with rssc's evaluation preprocessing in front and class names behind."""

    def __init__(self, model: Any, config: dict[str, Any]):
        self.model = model
        self.config = config
        self.classes: list[str] = [str(c) for c in config.get("classes", [])]
        self.task: str = config["task"]
        self.crop, self.resize = int(config["crop"]), int(config["resize"])
        self.mode: str = config["preprocessing"]
        self.means_rgb = np.asarray(config["imagenet_means_rgb"], np.float32)
        self.threshold = float(config.get("threshold", 0.5))
        self.batch_size = int(config.get("batch_size", 32))

    @classmethod
    def load(cls, folder: Path) -> ResNet50Classifier:
        """The model in `folder` (a logged model's data/), through rssc's layered safety
        check (`model_safety.load_model`; ValueError naming a refused layer)."""
        if __package__:  # imported from the rssc package
            from rssc_mlflow import model_safety
        else:  # inside a logged model: the copy next to this file, in its code/ folder
            model_safety = importlib.import_module(SAFETY_MODULE)
        config = json.loads((folder / CONFIG_FILE).read_text())
        return cls(model_safety.load_model(folder / KERAS_FILE), config)

    def get_raw_model(self) -> ResNet50Classifier:
        """What `mlflow.pyfunc.load_model(...).get_raw_model()` gives: this object, whose
        `predict` also takes a list of images of different sizes (which a tensor signature
        cannot describe) and whose `.model` is the Keras model."""
        return self

    # --- Input --------------------------------------------------------------------------

    def _batches(self, data: Any) -> list[np.ndarray]:
        """A 4-D (n, h, w, 3) array, or a list of (h, w, 3) arrays of any sizes -> 4-D uint8
        batches, each of one size."""
        if isinstance(data, dict) and len(data) == 1:  # a named tensor input
            data = next(iter(data.values()))
        arrays = [np.asarray(a) for a in data] if isinstance(data, (list, tuple)) \
            else [np.asarray(data)]
        batches = [a[None] if a.ndim == 3 else a for a in arrays]
        for a in batches:
            if a.dtype != np.uint8:
                raise ValueError(
                    f"rssc model: images must be decoded RGB uint8 arrays (values 0-255), got "
                    f"dtype {a.dtype}. Pass the decoded pixels as np.uint8 without scaling them: "
                    "the model resizes, crops and normalises them itself.")
            if a.ndim != 4 or a.shape[-1] != 3:
                raise ValueError(
                    f"rssc model: expected RGB images of shape (n, height, width, 3) or a list of "
                    f"(height, width, 3) arrays, got shape {a.shape}.")
        return batches

    def prepare(self, images: Any) -> np.ndarray:
        """uint8 images of any size -> float32 (n, crop, crop, 3), exactly as the run's
        evaluation pipeline prepared its images."""
        import tensorflow as tf

        def one_size(batch: np.ndarray) -> Any:
            x = tf.image.resize(tf.convert_to_tensor(batch), [self.resize, self.resize],
                                method="bilinear", antialias=False)
            x = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
            offset = (self.resize - self.crop) // 2
            x = tf.image.crop_to_bounding_box(x, offset, offset, self.crop, self.crop)
            x = tf.cast(x, tf.float32)
            if self.mode == "unit":
                return x / 255.0
            if self.mode == "imagenet-rgb":
                return x - self.means_rgb
            if self.mode == "imagenet-caffe":
                import keras

                return keras.applications.resnet50.preprocess_input(
                    x, data_format="channels_last")
            raise ValueError(f"rssc model: unknown preprocessing {self.mode!r} in {CONFIG_FILE}.")

        parts = [one_size(batch).numpy() for batch in self._batches(images)]
        return np.concatenate(parts) if parts else np.zeros((0, self.crop, self.crop, 3),
                                                            np.float32)

    # --- Output -------------------------------------------------------------------------

    def predict_proba(self, images: Any) -> np.ndarray:
        """(n, classes) probabilities: softmax (single-label) or sigmoid (multi-label)."""
        x = self.prepare(images)
        if not len(x):
            return np.zeros((0, len(self.classes)), np.float32)
        return np.asarray(self.model.predict(x, batch_size=self.batch_size, verbose=0),
                          np.float32)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """A DataFrame: `class` (the most probable, single-label) or `labels` (those above the
        threshold, multi-label), then one probability column per class, named by the class.
        A backbone without a head (task "features") gives its pooled features, f0 .. f2047."""
        return self.table(self.predict_proba(data))

    def table(self, probs: np.ndarray) -> Any:
        """`predict`'s DataFrame for (n, outputs) probabilities or features."""
        import pandas as pd

        if self.task == "features":
            return pd.DataFrame(probs, columns=[f"f{i}" for i in range(probs.shape[1])])
        table = pd.DataFrame(probs, columns=self.classes)
        if self.task == "multi":
            names = np.asarray(self.classes, dtype=object)
            table.insert(0, "labels", [list(names[row > self.threshold]) for row in probs])
        else:
            table.insert(0, "class", [self.classes[i] for i in probs.argmax(axis=1)])
        return table
