"""Done when: a dataset of one's own, in a layout of its own and with class names holding spaces,
capitals and non-ASCII letters, is added, prepared, used as a pre-training source, and gets its
whole transfer row from `rssc transfer` at smoke size; the row resumes by fingerprint, and
summarize's "Transfer to NAME" table and its intervals are checked against the runs' logged
metrics and per-image prediction artifacts (recomputed independently)."""

from __future__ import annotations

import json
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score
from typer.testing import CliRunner

from rssc_mlflow import commands, models
from rssc_mlflow.cli import app
from rssc_mlflow.data import catalog
from rssc_mlflow.data.synth import write_custom_tree
from rssc_mlflow.results import findings as fl
from rssc_mlflow.results import transfer_table as tt
from rssc_mlflow.tracking import predictions as predictions_lib
from rssc_mlflow.tracking import runs as tags

pytestmark = pytest.mark.slow
runner = CliRunner()
NAME = "my_tiles"
FOLDERS = ["Landschaft/Dense Forest", "Landschaft/Grünland", "Stadt/Urban Area"]


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def row(tmp_path_factory: pytest.TempPathFactory):
    """Everything the tests read: one prepared dataset of one's own, two backbones (an
    ImageNet stand-in and an HRRS one), the transfer row run twice, and the summary."""
    import keras

    root = tmp_path_factory.mktemp("transfer")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSSC_DATA_DIR", str(root / "data"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        tree = write_custom_tree(root / "Meine Kacheln", FOLDERS, images_per_class=5,
                                 image_size=32)
        _cli("datasets", "add", NAME, "--manual-dir", str(tree))
        _cli("prepare", NAME)
        # Backbones without pre-training runs (the row is what is tested): one random
        # ResNet-50 is the ImageNet stand-in and, registered, an HRRS backbone for UCM.
        backbone = keras.applications.ResNet50(weights=None, include_top=False,
                                               input_shape=(32, 32, 3), pooling="avg")
        weights = models.save_notop_weights(backbone, root / "imagenet_notop.h5")
        mp.setenv(models.IMAGENET_WEIGHTS_ENV, str(weights))
        backbone.save(root / "ucm_backbone.keras")
        _cli("weights", "import", str(root / "ucm_backbone.keras"), "--source", "ucm",
             "--profile", "smoke")
        # NAME as a pre-training source, from scratch and domain-adapted: registered as
        # rssc-resnet50-NAME and rssc-resnet50-imagenet-NAME, never in NAME's own row.
        own = commands.pretrain(NAME, profile="smoke")
        adapted = commands.adapt(NAME, profile="smoke")
        client = mlflow.MlflowClient()
        plan = _cli("transfer", NAME, "--profile", "smoke", "--plan")
        _cli("transfer", NAME, "--profile", "smoke", "--no-log-model-finetune",
             "--json", str(root / "first.json"))
        count = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
        _cli("transfer", NAME, "--profile", "smoke", "--json", str(root / "second.json"))
        after = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
        extracted = commands.extract("imagenet", NAME, profile="smoke")  # NAME as extract target
        from rssc_mlflow.results.summarize import summarize

        summary = summarize(None, root / "summary")
        yield {"root": root, "own": own, "adapted": adapted, "extracted": extracted,
               "plan": plan, "summary": summary,
               "first": json.loads((root / "first.json").read_text()),
               "second": json.loads((root / "second.json").read_text()),
               "runs_before": count, "runs_after": after, "client": client,
               "spec": catalog.get_spec(NAME), "env": dict(os.environ)}


def test_own_dataset_as_a_source_and_an_extract_target(row) -> None:
    assert row["own"].model_name == f"rssc-resnet50-{NAME}"
    assert row["adapted"].model_name == f"rssc-resnet50-imagenet-{NAME}"
    mv = row["client"].get_model_version_by_alias(f"rssc-resnet50-imagenet-{NAME}", "smoke")
    assert mv.tags["lineage"] == "imagenet" and mv.tags["source"] == NAME
    extract = row["client"].get_run(row["extracted"].run_id)
    probe = next(p for p in row["first"]["planned"]
                 if (p["stage"], p["source"]) == ("probe", "imagenet"))
    assert extract.data.tags["rssc.features_from_run"] == probe["run_id"]  # the same features
    assert extract.data.metrics["test_images"] == 12
    run = row["client"].get_run(row["own"].run_id)
    assert run.data.tags[commands.TAG_DATASET_SPEC] == row["spec"].spec_digest
    report = "".join(open(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="evaluation/per_class_report.txt",
        tracking_uri=row["env"]["MLFLOW_TRACKING_URI"])).read())
    assert "Grünland" in report and "Urban Area" in report


def test_the_row_ran_and_resumes(row) -> None:
    first = row["first"]
    assert first["ok"] and first["target"] == NAME
    assert [b["reference"] for b in first["backbones"]] == ["imagenet", "ucm"]
    cells = sorted((p["stage"], p["source"]) for p in first["planned"])
    assert cells == [("finetune", "imagenet"), ("finetune", "scratch"), ("finetune", "ucm"),
                     ("probe", "imagenet"), ("probe", "ucm")]
    assert {p["status"] for p in first["planned"]} == {"ran"}
    # Its own backbone (same images) is left out; the paper's sources are missing, with how.
    assert not any(NAME in p["source"] for p in first["planned"])
    missing = {b["reference"]: b["command"] for b in first["missing"]}
    assert missing["resisc45"] == "rssc pretrain --source resisc45 --profile smoke"
    assert missing["imagenet+aid"] == "rssc adapt --source aid --profile smoke"
    # Again: every run is found done by its fingerprint, nothing new is started.
    assert {p["status"] for p in row["second"]["planned"]} == {"done"}
    assert {p["run_id"] for p in row["second"]["planned"]} == {p["run_id"] for p in first["planned"]}
    assert row["runs_after"] == row["runs_before"]
    assert "missing backbones (11, not run):" in row["plan"]
    assert "todo" in row["plan"] and "rssc pretrain --source resisc45 --profile smoke" in row["plan"]


def test_runs_record_the_spec_digest_in_their_fingerprint(row) -> None:
    from rssc_mlflow.settings import resolve_settings

    digest = row["spec"].spec_digest
    for planned in row["first"]["planned"]:
        run = row["client"].get_run(planned["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags[tags.TAG_TARGET] == NAME
        assert run.data.tags[commands.TAG_DATASET_SPEC] == digest
    # The fingerprint changes with the spec digest: a re-registered dataset is another cell.
    settings = resolve_settings("finetune", source="scratch", target=NAME, profile="smoke")
    from rssc_mlflow.settings import protocol_fingerprint

    kw = dict(preprocessing="unit", peak_lr=3e-3, synthetic=True, warmup_epochs=1)
    scratch = next(p for p in row["first"]["planned"] if p["source"] == "scratch")
    logged = row["client"].get_run(scratch["run_id"]).data.tags[tags.TAG_FINGERPRINT]
    assert logged == protocol_fingerprint(settings, dataset_spec=digest, **kw)
    assert logged != protocol_fingerprint(settings, **kw)


def _table(row) -> tt.TransferTable:
    (table,) = row["summary"].transfers
    return table


def test_the_table_against_the_runs(row) -> None:
    table, client = _table(row), row["client"]
    assert table.target == NAME
    assert {r.source for r in table.rows} == {"scratch", "imagenet", "ucm"}
    by = {r.source: r for r in table.rows}
    for planned in row["first"]["planned"]:
        cell = by[planned["source"]].cells[planned["stage"]]
        logged = client.get_run(planned["run_id"]).data.metrics["test_accuracy"]
        assert cell.run_ids == [planned["run_id"]] and cell.mean == pytest.approx(100 * logged)
        assert cell.quick and cell.text.endswith("†")
    ranks = sorted((r.ranks["finetune"], -r.cells["finetune"].mean) for r in table.rows)
    assert [k for k, _ in ranks] == [1, 2, 3] and ranks == sorted(ranks, key=lambda t: t[1])

    # One interval, recomputed from the two runs' prediction artifacts.
    gain = by["imagenet"].gains[("finetune", "scratch")]
    a_id = by["imagenet"].cells["finetune"].run_ids[0]
    b_id = by["scratch"].cells["finetune"].run_ids[0]
    a, b = (predictions_lib.load_predictions(i, client) for i in (a_id, b_id))
    assert len(a.files) == len(b.files) == 12  # 3 classes x 4 of 5 images (20/80)
    acc = [accuracy_score(p.y_true, p.probs.argmax(axis=1)) for p in (a, b)]
    assert gain.outcome.difference == pytest.approx(100 * (acc[0] - acc[1]), abs=1e-9)
    metrics = [client.get_run(i).data.metrics["test_accuracy"] for i in (a_id, b_id)]
    assert acc == pytest.approx(metrics, abs=1e-6)
    again = fl.paired_bootstrap([(a, b)], "accuracy", resamples=fl.DEFAULT_RESAMPLES,
                                seed=tt.bootstrap_seed(fl.BOOTSTRAP_SEED, gain.label))
    assert (gain.outcome.low, gain.outcome.high) == (again.low, again.high)
    assert gain.outcome.low <= gain.outcome.difference <= gain.outcome.high
    # Independently of the package: the same paired resampling drawn with numpy.
    right = [(p.probs.argmax(axis=1) == p.y_true).astype(float) for p in (a, b)]
    order = {f: i for i, f in enumerate(b.files)}
    diff = right[0] - right[1][[order[f] for f in a.files]]
    rng = np.random.default_rng(1)
    reps = 100 * diff[rng.integers(0, len(diff), (20_000, len(diff)))].mean(axis=1)
    low, high = np.quantile(reps, [0.025, 0.975])
    assert gain.outcome.low == pytest.approx(low, abs=100 / len(diff) + 1e-9)
    assert gain.outcome.high == pytest.approx(high, abs=100 / len(diff) + 1e-9)
    # Smoke is a quick profile: shown, never answering.
    assert table.pays_off == tt.NOT_ANSWERED and gain.outcome.quick
    assert "not answered: every run comes from the quick profile smoke" in table.answer


def test_every_format_and_the_summary_page(row) -> None:
    out = row["summary"].out
    frame = pd.read_csv(out / f"transfer_{NAME}.csv")
    assert len(frame) == 6 and set(frame["source"]) == {"scratch", "imagenet", "ucm"}
    for name in (f"transfer_{NAME}.md", f"transfer_{NAME}.tex"):
        assert (out / name).stat().st_size > 0
    assert (out / f"transfer_{NAME}.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "summary.html").read_text(encoding="utf-8")
    assert f"<a href='#transfer-{NAME}'>Transfer to {NAME}</a>" in page
    assert f"<h2 id='transfer-{NAME}'>" in page
    assert f"## Transfer to {NAME}" in (out / "summary.md").read_text(encoding="utf-8")
    assert f"Transfer to {NAME}:" in row["summary"].console


def test_a_removed_dataset_keeps_its_table(row) -> None:
    from rssc_mlflow.results.summarize import summarize

    with pytest.MonkeyPatch.context() as mp:
        for key in ("RSSC_DATA_DIR", "MLFLOW_TRACKING_URI"):
            mp.setenv(key, row["env"][key])
        _cli("datasets", "remove", NAME)
        with pytest.raises(Exception, match="Unknown dataset"):
            catalog.get_spec(NAME)
        (table,) = summarize(None, row["root"] / "summary-after").transfers
    assert {r.source for r in table.rows} == {"scratch", "imagenet", "ucm"}
    assert table.metric == "test_accuracy"
