"""pretrain -> registry -> finetune / extract / probe -> weights download, on the local store.

Every run is read back from the tracking store: parameters, tags, lineage, per-epoch metrics,
inputs, artifacts and registered versions. Numbers that can be recomputed independently (the
lbfgs probe from the logged features) are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.entities import ViewType
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from rssc_mlflow import commands, models
from rssc_mlflow.data.catalog import get_spec
from rssc_mlflow.data.prepare import load_prepared
from rssc_mlflow.errors import ModelError, RsscError
from rssc_mlflow.tracking import registry, runs

pytestmark = pytest.mark.slow
SMOKE = {"profile": "smoke"}


@pytest.fixture()
def store(world, monkeypatch):
    world.activate(monkeypatch)
    return mlflow.MlflowClient()


@pytest.fixture(scope="module")
def pretrained(world):
    """One from-scratch model on synthetic RESISC45, shared by the transfer tests."""
    with pytest.MonkeyPatch.context() as mp:
        world.activate(mp)
        return commands.pretrain("resisc45", **SMOKE)


def _artifacts(client, run_id, path=""):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_pretrain_records_everything(pretrained, store):
    run = store.get_run(pretrained.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "pre resisc"  # short for the runs table (runs.ui_run_name)
    tags, params = run.data.tags, run.data.params
    assert tags[runs.TAG_STAGE] == "pretrain" and tags[runs.TAG_SOURCE] == "resisc45"
    assert tags[runs.TAG_SYNTHETIC] == "true"
    assert len(tags[runs.TAG_FINGERPRINT]) == 16
    assert tags[runs.TAG_DATASET_DIGEST] and tags[runs.TAG_SPLIT_DIGEST]
    assert tags[runs.TAG_GIT_COMMIT] and tags[runs.TAG_VERSION]
    assert tags[runs.TAG_PREPROCESSING] == "unit"
    assert params["epochs"] == "1" and params["batch_size"] == "8" and params["image_size"] == "32"
    assert params["lr"] == "0.003" and params["profile"] == "smoke"  # resolved: scratch rule
    assert params["preprocessing"] == "unit" and "target" not in params and "solver" not in params
    # The profile's init, as Keras builds it for smoke (the demo's departures are logged too).
    assert params["bn_momentum"] == "0.99" and params["zero_init_residual"] == "false"
    # The data handling: default prepare, and a small set shuffled in full each epoch.
    assert params["dataset_options"] == "default" and params["shuffle_full"] == "true"
    assert int(params["shuffle_buffer"]) >= 1  # = the training images (test_commands)
    # Per-epoch values (step = epoch) and the final evaluation.
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        history = store.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1], key
    lr = store.get_metric_history(run.info.run_id, "lr")[0].value
    assert lr == pytest.approx(3e-3, rel=1e-5)  # warm-up over the single epoch reached the peak
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    assert run.data.metrics["test_accuracy"] == pytest.approx(pretrained.metrics["test_accuracy"])
    # Inputs: the train and test parts of the split, identified by its digest.
    names = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert names == {"resisc45-source-train", "resisc45-source-test"}
    files = _artifacts(store, run.info.run_id)
    assert "evaluation/confusion_matrix.png" in files
    assert "evaluation/per_class_report.txt" in files
    split_file = "split/resisc45-source.json"
    assert split_file in files
    split = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=split_file)).read())
    assert split["digest"] == tags[runs.TAG_SPLIT_DIGEST]
    assert len(split["train"]) == 45 * 2 and len(split["test"]) == 45  # 3 per class: 2/1


def test_pretrain_registers_with_profile_alias_and_preprocessing(pretrained, store):
    mv = store.get_model_version_by_alias("rssc-resnet50-resisc45", "smoke")
    assert str(mv.version) == pretrained.model_version == "1"
    assert mv.run_id == pretrained.run_id
    assert mv.tags[registry.MV_PREPROCESSING] == "unit"
    assert mv.tags[registry.MV_LINEAGE] == "scratch"
    assert mv.tags[registry.MV_SYNTHETIC] == "true"
    resolved = registry.resolve_source("resisc45", profile="smoke")
    assert (resolved.model_name, resolved.version, resolved.note) == ("rssc-resnet50-resisc45", "1", "")
    assert resolved.describe() == "rssc-resnet50-resisc45 version 1 (@smoke), preprocessing unit"


def test_profiles_never_mix_silently(pretrained, store, capsys):
    with pytest.raises(ModelError) as caught:
        registry.resolve_source("resisc45", profile="paper")
    assert str(caught.value) == (
        "No version of 'rssc-resnet50-resisc45' has alias @paper, the profile of this run; its "
        "versions: 1 (@smoke). Profiles are never mixed silently: create the @paper version "
        "with `rssc pretrain --source resisc45 --profile paper`, run with --profile smoke to "
        "use @smoke, or pass --allow-any-version to use the newest (version 1).")
    experiments = [e.experiment_id for e in store.search_experiments()]
    before = len(store.search_runs(experiments))
    with pytest.raises(ModelError, match="has alias @demo"):
        commands.finetune("resisc45", "ucm", profile="demo", log_model=False)
    assert len(store.search_runs(experiments)) == before  # refused before any run

    capsys.readouterr()
    result = commands.finetune("resisc45", "ucm", profile="demo", allow_any_version=True,
                               epochs=1, log_model=False)
    out = capsys.readouterr().out
    note = ("no version of 'rssc-resnet50-resisc45' has alias @demo; --allow-any-version: "
            "using the newest, version 1 (@smoke)")
    assert "[rssc] source: rssc-resnet50-resisc45 version 1 (@smoke), preprocessing unit\n" in out
    assert f"[rssc] note: {note}\n" in out
    # UCM, 3 images per class, 20% for training: 21 images; demo: batches of 8; 1 epoch asked.
    assert ("[rssc] 21 image-steps (1 epoch x 21 images at 32 px, 3 steps of 8 per epoch)\n"
            in out)
    assert "s per step of" not in out  # 3 steps in all: nothing left to estimate
    assert "WARNING: profile paper" not in out  # only the paper profile warns without a GPU
    run = store.get_run(result.run_id)
    assert run.data.tags["rssc.lineage.note"] == note
    assert run.data.params["allow_any_version"] == "true" and run.data.params["profile"] == "demo"
    assert run.data.tags[runs.TAG_LINEAGE_VERSION] == "1"


def test_finetune_records_lineage(pretrained, store):
    result = commands.finetune("resisc45", "ucm", log_model=False, **SMOKE)
    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "ft resisc→ucm"
    tags = run.data.tags
    assert tags[runs.TAG_LINEAGE_NAME] == "rssc-resnet50-resisc45"
    assert tags[runs.TAG_LINEAGE_VERSION] == "1"
    assert tags[runs.TAG_LINEAGE_RUN] == pretrained.run_id
    # The upstream model's fingerprint is part of this run's: comparable only with equal lineage.
    assert tags[runs.TAG_FINGERPRINT] != store.get_run(pretrained.run_id).data.tags[runs.TAG_FINGERPRINT]
    assert "test_accuracy" in run.data.metrics
    lr = store.get_metric_history(run.info.run_id, "lr")[0].value
    assert lr == pytest.approx(3e-4, rel=1e-5)  # pre-trained start: peak 3e-4


def test_probe_reuses_features_and_lbfgs_matches_sklearn(pretrained, store):
    adam = commands.probe("resisc45", "ucm", **SMOKE)
    lbfgs = commands.probe("resisc45", "ucm", solver="lbfgs", **SMOKE)
    adam_run, lbfgs_run = store.get_run(adam.run_id), store.get_run(lbfgs.run_id)
    key = adam_run.data.tags[runs.TAG_FEATURE_KEY]
    assert lbfgs_run.data.tags[runs.TAG_FEATURE_KEY] == key
    assert lbfgs_run.data.tags["rssc.features_from_run"] == adam.run_id
    assert adam_run.data.tags[runs.TAG_FINGERPRINT] != lbfgs_run.data.tags[runs.TAG_FINGERPRINT]
    # The faithful probe logs one value per epoch (smoke: 2 epochs).
    assert [m.step for m in store.get_metric_history(adam.run_id, "loss")] == [1, 2]
    path = mlflow.artifacts.download_artifacts(run_id=adam.run_id,
                                               artifact_path=commands.FEATURES_ARTIFACT)
    with np.load(path) as f:
        train_x, train_y, test_x, test_y = f["train_x"], f["train_y"], f["test_x"], f["test_y"]
    assert train_x.shape == (21, 2048) and test_x.shape == (42, 2048)  # UCM 3/class: 1 train, 2 test
    expected = accuracy_score(test_y, LogisticRegression(max_iter=1000, random_state=42)
                              .fit(train_x, train_y).predict(test_x))
    assert lbfgs_run.data.metrics["test_accuracy"] == pytest.approx(expected)


def test_extract_writes_features_artifact(pretrained, store):
    result = commands.extract("resisc45", "aid", **SMOKE)
    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[runs.TAG_STAGE] == "extract"
    assert run.data.metrics["train_images"] == 30 and run.data.metrics["test_images"] == 60


def test_weights_download_gives_a_loadable_notop_file(pretrained, store, tmp_path):
    model_path, weights_path, meta = registry.download("resisc45", tmp_path, profile="smoke")
    assert json.loads(meta.read_text())["preprocessing"] == "unit"
    registered = models.load_model_file(model_path)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, pooling="avg",
                                           input_shape=(32, 32, 3))
    models.load_backbone_weights(backbone, weights_path)
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(backbone.predict(x, verbose=0),
                               models.backbone_of(registered).predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_multilabel_pretrain_logs_f1_and_map(world, store):
    result = commands.pretrain("mlrsnet_ml", **SMOKE)
    metrics = store.get_run(result.run_id).data.metrics
    for key in ("test_f1_micro", "test_f1_macro", "test_f1_weighted", "test_f1_samples", "test_map"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert "f1_micro" in metrics and "val_f1_micro" in metrics  # per-epoch keras F1
    assert get_spec("mlrsnet_ml").task == "multi"
    # The label-prior baseline, recomputed from the prepared records and the split manifest.
    records = {r.filename: r.labels for r in load_prepared("mlrsnet_ml").records}
    split = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="split/mlrsnet_ml-source.json")).read_text())
    train = np.array([records[f] for f in split["train"]])
    test = np.array([records[f] for f in split["test"]])
    prior = (train.mean(axis=0) > 0.5).astype(int)
    expected = skm.f1_score(test, np.tile(prior, (len(test), 1)), average="micro", zero_division=0)
    assert metrics["test_prior_f1_micro"] == pytest.approx(expected)


def _no_running_runs(client) -> None:
    running = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                 filter_string="attributes.status = 'RUNNING'")
    assert running == []


def _run_ids() -> set[str]:
    """Every run in the store, whatever its status or experiment (deleted ones too)."""
    return {r.info.run_id for r in mlflow.search_runs(
        search_all_experiments=True, output_format="list", run_view_type=ViewType.ALL)}


def test_unregistered_source_names_the_command_and_starts_no_run(world, store):
    before = _run_ids()
    with pytest.raises(RsscError, match=r"rssc pretrain --source aid --profile smoke"):
        commands.finetune("aid", "ucm", **SMOKE)
    with pytest.raises(RsscError, match=r"rssc adapt --source aid --profile smoke"):
        commands.probe("imagenet+aid", "ucm", **SMOKE)
    with pytest.raises(RsscError, match=r"Unknown source 'bogus'"):
        commands.finetune("bogus", "ucm", **SMOKE)
    with pytest.raises(RsscError, match=r"share their images"):
        commands.finetune("mlrsnet_sl", "mlrsnet_ml", **SMOKE)
    _no_running_runs(store)
    assert _run_ids() == before  # no run created at all, not only none left RUNNING


def test_imagenet_without_weights_says_which_file(world, store, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(RsscError, match=r"resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5"):
        commands.adapt("ucm", **SMOKE)
    _no_running_runs(store)


def test_nan_loss_marks_the_run_failed_with_the_epoch(world, store):
    with pytest.raises(RsscError, match=r"loss became nan in epoch 1"):
        commands.finetune("scratch", "ucm", lr=1e12, log_model=False, **SMOKE)
    failed = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string="attributes.status = 'FAILED'")
    assert [r.data.tags[runs.TAG_ERROR].split(":")[0] for r in failed] == ["NanLossError"]
    # The run's description in the UI says so too.
    assert failed[0].data.tags[runs.TAG_NOTE].split("  \n")[-1].startswith(
        "result: FAILED: NanLossError: Training diverged: the loss became nan in epoch 1.")
    _no_running_runs(store)


def test_weights_import_registers_a_checked_file(pretrained, store, tmp_path):
    model_path, _, _ = registry.download("resisc45", tmp_path, profile="smoke")
    with pytest.raises(ModelError, match="has 45 outputs, but ucm has 21 classes"):
        registry.import_model(model_path, source_key="ucm", init="imagenet", profile="smoke",
                              preprocessing=None)
    name, version = registry.import_model(model_path, source_key="resisc45", init="imagenet",
                                          profile="smoke", preprocessing=None)
    assert name == "rssc-resnet50-imagenet-resisc45"
    mv = store.get_model_version_by_alias(name, "smoke")
    assert str(mv.version) == version
    assert mv.tags[registry.MV_PREPROCESSING] == "imagenet-rgb"  # ImageNet lineage default
    assert mv.tags[registry.MV_LINEAGE] == "imagenet"
    small = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    small.save(tmp_path / "small.keras")
    with pytest.raises(RsscError):
        registry.import_model(tmp_path / "small.keras", source_key="ucm", init="scratch",
                              profile="smoke", preprocessing=None)
    _no_running_runs(store)


def test_server_command_binds_loopback_and_can_require_auth():
    from rssc_mlflow.tracking.server import server_command

    cmd = server_command(host="127.0.0.1", port=5005, backend_store_uri="sqlite:///x.db",
                         artifacts_destination="./a", auth=True)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--serve-artifacts" in cmd and cmd[cmd.index("--app-name") + 1] == "basic-auth"


def test_every_kind_of_model_reference_resolves(pretrained, store, tmp_path):
    """models:/ URIs and local files work as sources; preprocessing follows the lineage."""
    by_uri = commands.probe("models:/rssc-resnet50-resisc45/1", "ucm", solver="lbfgs", **SMOKE)
    run = store.get_run(by_uri.run_id)
    assert run.data.tags[runs.TAG_LINEAGE_URI] == "models:/rssc-resnet50-resisc45/1"
    assert run.data.tags[runs.TAG_LINEAGE_RUN] == pretrained.run_id
    model_path, _, _ = registry.download("resisc45", tmp_path, profile="smoke")
    by_file = commands.probe(str(model_path), "ucm", solver="lbfgs", precision="mixed", **SMOKE)
    file_run = store.get_run(by_file.run_id)
    assert file_run.data.tags[runs.TAG_LINEAGE_URI] == str(model_path.resolve())
    assert file_run.data.tags[runs.TAG_PREPROCESSING] == "unit"
    # Same weights, split and preprocessing: the file reference gives the same features, so
    # the same lbfgs accuracy (mixed precision changes the features only slightly).
    assert file_run.data.metrics["test_accuracy"] == pytest.approx(
        run.data.metrics["test_accuracy"], abs=0.1)


def test_adapt_from_imagenet_weights_records_imagenet_preprocessing(world, store, monkeypatch,
                                                                    tmp_path):
    """`adapt` starts from the Keras notop file; its lineage travels to later transfers."""
    stand_in = models.build_classifier(10, "single", crop=32)
    weights = models.save_notop_weights(stand_in, tmp_path / "imagenet_notop.h5")
    monkeypatch.setenv("RSSC_IMAGENET_WEIGHTS", str(weights))
    adapted = commands.adapt("ucm", preprocessing="imagenet-caffe", **SMOKE)
    mv = store.get_model_version_by_alias("rssc-resnet50-imagenet-ucm", "smoke")
    assert mv.run_id == adapted.run_id
    assert mv.tags[registry.MV_PREPROCESSING] == "imagenet-caffe"
    assert mv.tags[registry.MV_LINEAGE] == "imagenet"
    adapt_run = store.get_run(adapted.run_id)
    assert adapt_run.data.tags[runs.TAG_LINEAGE_NAME] == "imagenet"
    # The lineage says which file it was, and that it is not Keras's published one.
    origin = {registry.MV_IMAGENET_FILE: str(weights.resolve()),
              registry.MV_IMAGENET_SHA256: hashlib.sha256(weights.read_bytes()).hexdigest(),
              registry.MV_IMAGENET_ORIGIN: "other-file"}
    assert adapt_run.data.tags[runs.TAG_LINEAGE_URI] == weights.resolve().as_uri()
    assert {k: adapt_run.data.tags[f"rssc.lineage.{k}"] for k in origin} == origin
    assert {k: mv.tags[k] for k in origin} == origin  # on the registered version downstream
    assert store.get_metric_history(adapted.run_id, "lr")[0].value == pytest.approx(3e-4, rel=1e-5)
    probe = commands.probe("imagenet+ucm", "aid", solver="lbfgs", **SMOKE)
    probe_run = store.get_run(probe.run_id)
    assert probe_run.data.tags[runs.TAG_PREPROCESSING] == "imagenet-caffe"  # read back
    assert probe_run.data.tags[runs.TAG_LINEAGE_NAME] == "rssc-resnet50-imagenet-ucm"
    assert {k: probe_run.data.tags[f"rssc.lineage.{k}"] for k in origin} == origin  # and on
    plain = commands.probe("imagenet", "aid", solver="lbfgs", **SMOKE)
    assert store.get_run(plain.run_id).data.tags[runs.TAG_PREPROCESSING] == "imagenet-rgb"


def test_finetune_with_the_authors_schedule_steps(world, store):
    # UCM here: 3 images per class -> 21 target training images; batch 8 runs 3 batches per
    # epoch but train.py counts 21 // 8 = 2. Warm-up (1 epoch) w = 2 counted steps; the
    # decays of a 2-epoch run (epochs 1, 1, 2) come after counted steps 2, 2 and 4.
    result = commands.finetune("scratch", "ucm", log_model=False, epochs=2,
                               schedule_steps="authors", **SMOKE)
    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["schedule_steps"] == "authors"
    lr = [m.value for m in sorted(store.get_metric_history(run.info.run_id, "lr"),
                                  key=lambda m: m.step)]
    # Last batch of epoch 1 (step 2): ramp 3e-3 * (2 - 1) / 2. Last of epoch 2 (step 5): the
    # held 1.5e-3, divided by 5 three times.
    assert lr == pytest.approx([1.5e-3, 1.5e-3 * 0.2 ** 3], rel=1e-5)
    paper = commands.fingerprint_for("finetune", source="scratch", target="ucm", epochs=2,
                                     profile="smoke")
    authors = commands.fingerprint_for("finetune", source="scratch", target="ucm", epochs=2,
                                       profile="smoke", schedule_steps="authors")
    assert run.data.tags[runs.TAG_FINGERPRINT] == authors != paper


def test_a_training_run_logs_its_replicas_and_batch_split(world, store):
    result = commands.finetune("scratch", "ucm", log_model=False, epochs=1, **SMOKE)
    run = store.get_run(result.run_id)
    batch = run.data.params["batch_size"]
    assert {k: run.data.params[k] for k in ("replicas", "global_batch_size",
                                            "per_replica_batch_size")} == \
        {"replicas": "1", "global_batch_size": batch, "per_replica_batch_size": batch}
    # Float32 on one replica: the fingerprint it always had, which is also the pooled one.
    expected = commands.fingerprint_for("finetune", source="scratch", target="ucm", epochs=1,
                                        profile="smoke")
    assert run.data.tags[runs.TAG_FINGERPRINT] == expected
    assert run.data.tags[runs.TAG_FINGERPRINT_POOLED] == expected
    four = commands.fingerprint_for("finetune", source="scratch", target="ucm", epochs=1,
                                    profile="smoke", replicas=4)
    assert four != expected


def test_a_batch_that_does_not_split_over_the_replicas_starts_no_run(world, store, monkeypatch):
    class ThreeReplicas:  # what MirroredStrategy over 3 GPUs reports
        num_replicas_in_sync = 3

    monkeypatch.setattr(models, "make_strategy", lambda kind="auto": ThreeReplicas())
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    with pytest.raises(RsscError, match=r"batch size 8 does not split evenly over 3 replicas.*"
                                        r"Received: batch_size=8, replicas=3"):
        commands.finetune("scratch", "ucm", log_model=False, epochs=1, batch_size=8, **SMOKE)
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before


def test_registered_versions_carry_the_pooled_fingerprint(pretrained, store):
    mv = store.get_model_version(pretrained.model_name, pretrained.model_version)
    # Float32 on one replica: the pooled key is the fingerprint itself.
    assert mv.tags[registry.MV_FINGERPRINT_POOLED] == mv.tags[registry.MV_FINGERPRINT]
    source = registry.resolve_source("resisc45", profile="smoke")
    assert source.pooled_fingerprint == mv.tags[registry.MV_FINGERPRINT]
    # A version registered before the pooled key existed pools under its fingerprint.
    old = registry.ResolvedSource("x", "registered", "scratch", "unit", fingerprint="f-old")
    assert old.pooled_fingerprint == "f-old"
    mixed = registry.ResolvedSource("x", "registered", "scratch", "unit", fingerprint="f-mixed",
                                    pooled_fingerprint_tag="f-pooled")
    assert mixed.pooled_fingerprint == "f-pooled"
