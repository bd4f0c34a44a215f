"""The pyfunc loader of every logged model loads its Keras model through the safety check,
inside rssc and, from the model's code/ folder, where rssc cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from rssc_mlflow import model_safety
from rssc_mlflow.tracking import pyfunc_model, resnet50_pyfunc
from tests.tracking.conftest import NO_RSSC


def _folder(root: Path, model: keras.Model) -> Path:
    """A logged model's data/ folder: its config and its Keras model."""
    data = root / "data"
    data.mkdir(parents=True)
    config = pyfunc_model.model_config(classes=["a", "b"], task="single", crop=32,
                                       preprocessing="unit")
    (data / resnet50_pyfunc.CONFIG_FILE).write_text(json.dumps(config))
    model.save(data / resnet50_pyfunc.KERAS_FILE)
    return data


def _models(tmp_path: Path) -> tuple[Path, Path]:
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    scaled = keras.layers.Lambda(lambda t: t * 2.0, name="scale")(inputs)
    unsafe = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(scaled)))
    return _folder(tmp_path / "plain", plain), _folder(tmp_path / "unsafe", unsafe)


def test_load_refuses_a_lambda_and_loads_keras_layers(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    plain, unsafe = _models(tmp_path)
    with pytest.raises(model_safety.ModelFileError, match="Lambda layer 'scale'"):
        resnet50_pyfunc.ResNet50Classifier.load(unsafe)
    classifier = resnet50_pyfunc.ResNet50Classifier.load(plain)
    table = classifier.predict(np.zeros((1, 40, 40, 3), np.uint8))
    assert list(table.columns) == ["class", "a", "b"]
    # Through the shared check itself, not a copy of it.
    seen = []
    monkeypatch.setattr(model_safety, "load_model", lambda path: seen.append(path) or "model")
    assert resnet50_pyfunc.ResNet50Classifier.load(plain).model == "model"
    assert seen == [plain / resnet50_pyfunc.KERAS_FILE]


# A process that cannot import rssc_mlflow: only the model's code/ folder, as MLflow sets it up.
CLIENT = NO_RSSC + textwrap.dedent("""
    code, plain, unsafe = sys.argv[1:]
    sys.path.insert(0, code)
    import numpy as np
    import rssc_resnet50_pyfunc

    out = {}
    model = rssc_resnet50_pyfunc._load_pyfunc(plain)
    out["rows"] = len(model.predict(np.zeros((2, 40, 40, 3), np.uint8)))
    try:
        rssc_resnet50_pyfunc._load_pyfunc(unsafe)
        out["refused"] = ""
    except ValueError as exc:
        out["refused"] = type(exc).__module__ + "." + type(exc).__name__ + ": " + str(exc)
    out["rssc_imported"] = sorted(m for m in sys.modules if m.startswith("rssc_mlflow"))
    out["safety_from"] = sys.modules["rssc_model_safety"].__file__
    print("RESULT " + json.dumps(out))
""")


def test_the_copied_loader_refuses_unsafe_models_without_rssc(tmp_path: Path) -> None:
    plain, unsafe = _models(tmp_path)
    code = tmp_path / "code"
    pyfunc_model.copy_code(code)
    assert (code / f"{resnet50_pyfunc.SAFETY_MODULE}.py").read_bytes() == \
        Path(model_safety.__file__).read_bytes()
    done = subprocess.run([sys.executable, "-c", CLIENT, str(code), str(plain), str(unsafe)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert out["rows"] == 2
    assert out["refused"].startswith("rssc_model_safety.ModelFileError: ")
    assert "Lambda layer 'scale'" in out["refused"]
    assert out["rssc_imported"] == []
    assert Path(out["safety_from"]) == code / f"{resnet50_pyfunc.SAFETY_MODULE}.py"
