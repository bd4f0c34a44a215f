"""What a user of the tracking server sees: registered models that stand on their own.

One real `mlflow server` (SQLite, proxied artifacts) and one smoke pretrain of synthetic UCM
through it, shared by the tests. A client process that cannot import rssc_mlflow at all loads
the registered version with `mlflow.pyfunc.load_model` and predicts the run's test images from
the raw synthetic tree; its accuracy must equal the run's own `test_accuracy`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pytest

from rssc_mlflow import commands, models
from rssc_mlflow.data import pipeline
from rssc_mlflow.data.catalog import get_spec
from rssc_mlflow.tracking import pyfunc_model, registry, resnet50_pyfunc
from tests.tracking.conftest import NO_RSSC, start_mlflow_server

pytestmark = pytest.mark.slow
NAME = "rssc-resnet50-ucm"


@pytest.fixture(scope="module")
def served(world, tmp_path_factory):
    """(server, pretrain result): `rssc pretrain --source ucm --profile smoke` via a server."""
    root = tmp_path_factory.mktemp("served")
    server = start_mlflow_server(root, f"sqlite:///{root / 'server.db'}",
                                 artifacts=root / "artifacts")
    try:
        with pytest.MonkeyPatch.context() as mp:
            world.activate(mp, tracking_uri=server.uri)
            mp.setenv("RSSC_CHECKPOINT_DIR", str(root / "checkpoints"))
            result = commands.pretrain("ucm", profile="smoke")
        yield server, result
    finally:
        server.stop()


# The client: no rssc_mlflow (imports of it fail, even through MLflow's plugin entry points),
# only MLflow, numpy and PIL to decode the files, as a user would.
CLIENT = NO_RSSC + textwrap.dedent("""
    import warnings
    warnings.simplefilter("ignore")  # MLflow warns that rssc's plugin cannot be loaded here
    import mlflow
    import numpy as np
    from PIL import Image

    uri, images_root, run_id, split_artifact = sys.argv[1:]

    def decode(path):  # what prepare does: 16-bit scaled to 8 bits, palettes through RGBA
        image = Image.open(path)
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            a = np.asarray(image, dtype=np.float64)
            a = a / 257.0 if a.max() > 255 else a
            image = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        if image.mode == "P":
            image = image.convert("RGBA")
        return np.asarray(image.convert("RGB"))

    split = json.load(open(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=split_artifact)))
    files = split["test"]
    images = [decode(f"{images_root}/{f}") for f in files]
    model = mlflow.pyfunc.load_model(uri)
    table = model.predict(np.stack(images))
    truth = [f.split("/")[0] for f in files]
    out = {"columns": list(table.columns), "rows": len(table),
           "accuracy": float(np.mean(table["class"].to_numpy() == np.asarray(truth))),
           "sizes": sorted({im.shape for im in images})}
    # Mixed sizes, through the model behind the pyfunc (a tensor signature has one shape).
    raw = model.get_raw_model()
    mixed = [im if i % 2 else np.ascontiguousarray(im[3:, 5:]) for i, im in enumerate(images)]
    out["mixed_rows"] = len(raw.predict(mixed))
    out["mixed_same_where_unchanged"] = bool(np.array_equal(
        raw.predict(mixed)["class"].to_numpy()[1::2], table["class"].to_numpy()[1::2]))
    try:
        model.predict(np.stack(images).astype(np.float32))
        out["float_refused"] = ""
    except Exception as exc:
        out["float_refused"] = type(exc).__name__ + ": " + str(exc)[-300:]
    # The Keras flavor of the same version: float32 (n, crop, crop, 3), preprocessed.
    keras_model = mlflow.keras.load_model(uri)
    out["keras_input"] = list(keras_model.input_shape)
    probs = keras_model.predict(raw.prepare(np.stack(images)), verbose=0)
    out["keras_matches"] = bool(np.allclose(probs, table.drop(columns="class").to_numpy(),
                                            atol=1e-6))
    # The input example stored with the version predicts too.
    local = mlflow.artifacts.download_artifacts(uri)
    example = mlflow.models.Model.load(local).load_input_example(local)
    out["example"] = [list(example.shape), str(example.dtype), len(model.predict(example))]
    out["rssc_imported"] = sorted(m for m in sys.modules if m.startswith("rssc_mlflow"))
    print("RESULT " + json.dumps(out))
""")


def test_a_client_without_rssc_predicts_raw_images_like_the_run(served, world, tmp_path):
    server, result = served
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "TF_CPP_MIN_LOG_LEVEL": "3"}
    images_root = world.root / "synth" / "ucm" / "UCMerced_LandUse" / "Images"
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, f"models:/{NAME}@smoke", str(images_root), result.run_id,
         "split/ucm-source.json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    classes = list(get_spec("ucm").classes)
    assert out["rssc_imported"] == []
    assert out["columns"] == ["class", *classes]
    assert out["rows"] == 21  # UCM, 3 images per class, 20% held out: 1 per class
    run = mlflow.MlflowClient(server.uri).get_run(result.run_id)
    assert out["accuracy"] == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-12)
    assert out["mixed_rows"] == 21 and out["mixed_same_where_unchanged"]
    assert "uint8" in out["float_refused"] and "float32" in out["float_refused"]
    assert out["keras_input"] == [None, 32, 32, 3] and out["keras_matches"]
    assert out["example"] == [[1, 48, 64, 3], "uint8", 1]


def test_the_version_carries_its_model_card(served, monkeypatch):
    server, result = served
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    client = mlflow.MlflowClient(server.uri)
    mv = client.get_model_version_by_alias(NAME, "smoke")
    classes = list(get_spec("ucm").classes)
    assert json.loads(mv.tags[registry.MV_CLASSES]) == classes and mv.tags["task"] == "single"
    card = mv.description
    accuracy = 100 * client.get_run(result.run_id).data.metrics["test_accuracy"]
    for part in ("ResNet-50 pre-trained from scratch on UC Merced Land Use (`ucm`, "
                 "single-label, 21 classes) by rssc-mlflow, profile `smoke`.",
                 "**SYNTHETIC**",
                 "- source dataset: `ucm`; init: scratch; profile: smoke",
                 "- input: resized to 37 x 37 px, central crop 32 x 32 px; preprocessing "
                 "`unit`: pixels divided by 255",
                 f"- held-out result: test_accuracy {accuracy:.2f}% on the held-out 20% of ucm "
                 "(21 images)",
                 "- classes (21, in output order): " + ", ".join(classes),
                 f'mlflow.pyfunc.load_model("models:/{NAME}@smoke")'):
        assert part in card, part
    assert "One version per training run" in client.get_registered_model(NAME).description
    signature = mlflow.models.get_model_info(f"models:/{NAME}@smoke").signature
    assert signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {
        "dtype": "uint8", "shape": (-1, -1, -1, 3)}}]


def test_preprocessing_inside_the_model_is_the_pipelines(tmp_path):
    """The pyfunc's resize, crop and modes against the evaluation pipeline, bit for bit."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    encoded = pipeline.tf.io.encode_png(image)
    for mode in ("unit", "imagenet-rgb", "imagenet-caffe"):
        config = pyfunc_model.model_config(classes=["a"], task="single", crop=32,
                                           preprocessing=mode)
        ours = resnet50_pyfunc.ResNet50Classifier(None, config).prepare(image[None])
        resized = pipeline.decode_and_resize(encoded, config["resize"])
        theirs = pipeline.preprocess(pipeline.center_crop(resized, 32), mode).numpy()
        assert ours.shape == (1, 32, 32, 3) and np.array_equal(ours[0], theirs), mode


def test_multi_label_output_names_the_labels_above_the_threshold():
    spec = get_spec("mlrsnet_ml")
    config = pyfunc_model.model_config(classes=list(spec.classes), task="multi", crop=32,
                                       preprocessing="unit")
    classifier = resnet50_pyfunc.ResNet50Classifier(
        models.build_classifier(spec.num_classes, "multi", crop=32), config)
    images = np.random.default_rng(4).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    table = classifier.predict(images)
    probs = table[list(spec.classes)].to_numpy()
    assert list(table.columns) == ["labels", *spec.classes]
    for row, labels in zip(probs, table["labels"]):
        assert labels == [c for c, p in zip(spec.classes, row) if p > 0.5]
    with pytest.raises(ValueError, match="uint8 arrays .* got dtype float64"):
        classifier.predict(images / 255.0)


def test_the_signature_is_what_a_prediction_gives_without_running_the_model():
    """`signature_for` builds the outputs from a row of ones; a real prediction's table must
    give the same schema (the multi-label threshold lowered so that every row names labels)."""
    from mlflow.models import infer_signature

    model = models.build_classifier(5, "single", crop=32)
    cases = [(model, "single", {}), (model, "multi", {"threshold": -1.0}),
             (models.backbone_of(model), "features", {})]
    for keras_model, task, extra in cases:
        config = {**pyfunc_model.model_config(classes=list("abcde"), task=task, crop=32,
                                              preprocessing="unit"), **extra}
        classifier = resnet50_pyfunc.ResNet50Classifier(keras_model, config)
        predicted = classifier.predict(pyfunc_model.example_images())
        assert (pyfunc_model.signature_for(classifier).outputs
                == infer_signature(None, predicted).outputs), task


# --- The UI reads well (item 3): what the MLflow 3 UI gets, read back through the REST API ---


def _rest(server, path: str, **params: str) -> dict:
    import requests

    response = requests.get(f"{server.uri}/api/2.0/mlflow/{path}", params=params, timeout=30)
    response.raise_for_status()
    return response.json()


def test_the_ui_opens_on_the_runs_and_each_run_describes_itself(served):
    import io

    import requests
    from PIL import Image

    from rssc_mlflow.results import reproduce
    from rssc_mlflow.tracking import runs

    server, result = served
    experiment = _rest(server, "experiments/get-by-name", experiment_name="rssc")["experiment"]
    kinds = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert kinds["mlflow.experimentKind"] == "custom_model_development"  # not GenAI's overview

    run = _rest(server, "runs/get", run_id=result.run_id)["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert run["info"]["run_name"] == "pre ucm"
    assert tags["SYNTHETIC"] == "yes" and tags[runs.TAG_SYNTHETIC] == "true"
    accuracy = next(m["value"] for m in run["data"]["metrics"] if m["key"] == "test_accuracy")
    assert tags["mlflow.note.content"].split("  \n") == [
        "**pretrain** ucm · profile smoke, seed 42 · **SYNTHETIC**: not comparable to the paper",
        "lineage: random initialisation (scratch), preprocessing unit",
        f"result: test_accuracy={100 * accuracy:.2f}%"]

    png = requests.get(f"{server.uri}/get-artifact", timeout=30, params={
        "path": "evaluation/confusion_matrix.png", "run_uuid": result.run_id})
    png.raise_for_status()
    with Image.open(io.BytesIO(png.content)) as figure:
        assert figure.text["Title"] == (
            f"pretrain ucm (profile smoke, seed 42): test accuracy {100 * accuracy:.2f}%, 21 "
            "images / SYNTHETIC DATA: not comparable to the paper")

    # Every run of the paper's grid gets a name that fits the runs table, one per cell.
    names = {runs.ui_run_name(r.stage, r.source, r.target) for r in reproduce.plan("paper")}
    assert len(names) == 153
    assert max(len(n) for n in names) <= runs.UI_NAME_MAX, max(names, key=len)
