"""How rssc logs a trained classifier: one MLflow model with two flavors.

- `keras`: `data/model.keras`, the classifier exactly as trained, for `mlflow.keras.load_model`
  and for rssc itself (transfer runs, `rssc weights download`). Its input is float32
  (n, crop, crop, 3), already preprocessed with the lineage's mode.
- `python_function`: `mlflow.pyfunc.load_model` loads it through `code/rssc_resnet50_pyfunc.py`
  (a copy of `resnet50_pyfunc.py`, which imports nothing of rssc, next to a copy of
  `model_safety.py`, `code/rssc_model_safety.py`) with `data/rssc_model.json`:
  decoded uint8 RGB images of any size in, a DataFrame naming the classes out. The resize, the
  central crop and the preprocessing happen inside.

This module is also the "flavor" `mlflow.models.Model.log` is given (it calls `save_model`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.types.schema import Schema, TensorSpec

from rssc_mlflow import model_safety, protocol
from rssc_mlflow.tracking import resnet50_pyfunc

LOADER_SOURCE = Path(resnet50_pyfunc.__file__)
LOADER_MODULE = "rssc_resnet50_pyfunc"  # its name inside the model's code/ folder
SAFETY_SOURCE = Path(model_safety.__file__)  # what the loader loads the Keras model with
PREDICT_BATCH = 32


def copy_code(code: Path) -> None:
    """The model's code/ folder: the pyfunc loader and the safety check it imports, as
    top-level modules, so that they run where rssc is not installed."""
    code.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LOADER_SOURCE, code / f"{LOADER_MODULE}.py")
    shutil.copyfile(SAFETY_SOURCE, code / f"{resnet50_pyfunc.SAFETY_MODULE}.py")


def model_config(*, classes: list[str], task: str, crop: int, preprocessing: str,
                 batch_size: int = PREDICT_BATCH) -> dict[str, Any]:
    """What the pyfunc needs to prepare images and name its outputs (`rssc_model.json`)."""
    return {"classes": list(classes), "task": task, "crop": int(crop),
            "resize": protocol.resize_for_crop(int(crop)), "preprocessing": preprocessing,
            "imagenet_means_rgb": list(protocol.IMAGENET_MEANS_RGB),
            "threshold": protocol.MULTILABEL_THRESHOLD, "batch_size": int(batch_size)}


def example_images() -> np.ndarray:
    """The input example: one 48 x 64 uint8 RGB image (any size works; this one is small)."""
    rows, cols = np.mgrid[0:48, 0:64]
    image = np.stack([rows * 5, cols * 4, (rows + cols) * 2], axis=-1) % 256
    return image.astype(np.uint8)[None]


def signature_for(classifier: resnet50_pyfunc.ResNet50Classifier) -> ModelSignature:
    """uint8 (n, any height, any width, 3) in; the DataFrame `predict` gives out, made from
    one row of ones (every label above the threshold) rather than a prediction, which would
    trace the model's predict step again."""
    ones = np.ones((1, int(classifier.model.output_shape[-1])), np.float32)
    outputs = infer_signature(None, classifier.table(ones)).outputs
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          outputs=outputs)


def save_model(path: str, mlflow_model: Model | None = None, *, keras_model: Any,
               config: dict[str, Any], signature: ModelSignature | None = None,
               input_example: Any = None, pip_requirements: list[str] | None = None,
               **_: Any) -> None:
    """Write the model folder: the Keras flavor, then the pyfunc flavor over it."""
    from mlflow.pyfunc import add_to_model
    from mlflow.utils.environment import _CONDA_ENV_FILE_NAME, _PYTHON_ENV_FILE_NAME

    mlflow_model = mlflow_model or Model()
    Path(path).mkdir(parents=True, exist_ok=True)  # mlflow.keras writes the example first
    mlflow.keras.save_model(keras_model, path, mlflow_model=mlflow_model, signature=signature,
                            input_example=input_example, pip_requirements=pip_requirements)
    folder = Path(path)
    (folder / "data" / resnet50_pyfunc.CONFIG_FILE).write_text(json.dumps(config, indent=1))
    copy_code(folder / "code")
    # Replaces the python_function flavor mlflow.keras wrote (which takes preprocessed floats).
    add_to_model(mlflow_model, loader_module=LOADER_MODULE, data="data", code="code",
                 conda_env=_CONDA_ENV_FILE_NAME, python_env=_PYTHON_ENV_FILE_NAME)
    mlflow_model.save(str(folder / "MLmodel"))


def log_model(keras_model: Any, *, config: dict[str, Any], pip_requirements: list[str],
              registered_model_name: str | None = None):
    """Log the classifier as the active run's `model` (registered when a name is given)."""
    classifier = resnet50_pyfunc.ResNet50Classifier(keras_model, config)
    return Model.log(
        artifact_path=None, name="model", flavor=sys.modules[__name__], flavor_name="keras",
        registered_model_name=registered_model_name, keras_model=keras_model, config=config,
        signature=signature_for(classifier), input_example=example_images(),
        pip_requirements=pip_requirements,
        # MLflow would load the model again to try the example (seconds per model);
        # tests/tracking/test_registry_models.py loads and predicts instead.
        validate_serving_input=False)
