"""The `rssc` command line: help everywhere, JSON output, and errors as one paragraph."""

from __future__ import annotations

import json

import mlflow
import pytest
from typer.testing import CliRunner

from rssc_mlflow.cli import app

runner = CliRunner()

COMMANDS = [
    [], ["datasets"], ["prepare"], ["synth"], ["splits"], ["splits", "make"],
    ["splits", "import"], ["pretrain"], ["adapt"], ["extract"], ["probe"], ["finetune"],
    ["weights"], ["weights", "list"], ["weights", "download"], ["weights", "import"], ["server"], ["summarize"], ["reproduce"],
    ["datasets", "add"], ["datasets", "remove"], ["transfer"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "rssc")
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RSSC_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_synth_prepare_and_datasets_json(tmp_path, data_dir):
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "synth"), "--datasets", "ucm",
                                 "--images-per-class", "3", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output

    result = runner.invoke(app, ["prepare", "ucm", "--manual-dir", str(tmp_path / "synth" / "ucm"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["key"] == "ucm" and report["images"] == 63 and report["synthetic"] is True
    assert report["per_class"] == {c: 3 for c in report["per_class"]} and len(report["per_class"]) == 21
    assert report["skipped"] == []

    again = json.loads(runner.invoke(app, ["prepare", "ucm", "--manual-dir",
                                           str(tmp_path / "synth" / "ucm"), "--json"]).stdout)
    assert again["already_prepared"] is True

    rows = {r["key"]: r for r in json.loads(runner.invoke(app, ["datasets", "--json"]).stdout)}
    assert rows["ucm"]["prepared"] is True and rows["ucm"]["images"] == 63
    assert rows["aid"]["prepared"] is False


def test_unknown_dataset_is_one_paragraph_and_exit_1(tmp_path, data_dir):
    result = runner.invoke(app, ["prepare", "ucmm", "--manual-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "Unknown dataset 'ucmm'" in result.stderr
    assert "Traceback" not in result.output


def test_prepare_switches_are_checked_before_any_work(tmp_path, data_dir):
    result = runner.invoke(app, ["prepare", "ucm", "--manual-dir", str(tmp_path),
                                 "--tiff-as-jpeg", "96"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "quality from 1 to 95. Received: 96." in result.stderr
    result = runner.invoke(app, ["prepare", "aid", "--manual-dir", str(tmp_path), "--with-val"])
    assert result.exit_code == 1 and "imagenet100 only. Received: aid." in result.stderr
    assert "--tiff-as-jpeg" in runner.invoke(app, ["prepare", "--help"]).output


def test_training_parameters_are_validated_before_anything_runs(data_dir):
    result = runner.invoke(app, ["finetune", "--source", "resisc45", "--target", "ucm",
                                 "--image-size", "100"])
    assert result.exit_code == 1
    assert "divisible by 32" in result.stderr
    result = runner.invoke(app, ["pretrain", "--source", "ucm", "--epochs", "0"])
    assert result.exit_code == 1 and "epochs=0" in result.stderr
    result = runner.invoke(app, ["pretrain", "--source", "ucm", "--batch-size", "-1"])
    assert result.exit_code == 1
    assert "Invalid parameter batch_size=-1: it must be a positive integer" in result.stderr
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    result = runner.invoke(app, ["probe", "--source", "resisc45", "--target", "ucm",
                                 "--preprocessing", "bgr"])
    assert result.exit_code == 1 and "Unknown preprocessing mode 'bgr'" in result.stderr


def test_target_not_prepared_names_the_command(data_dir):
    result = runner.invoke(app, ["finetune", "--source", "scratch", "--target", "aid",
                                 "--profile", "smoke"])
    assert result.exit_code == 1
    assert "rssc prepare aid --manual-dir" in result.stderr


def test_reproduce_gpus_per_run_refuses_too_many_gpus(data_dir, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    result = runner.invoke(app, ["reproduce", "--profile", "smoke", "--only", "table3",
                                 "--parallel", "2", "--gpus-per-run", "2"])
    assert result.exit_code == 1
    assert "needs 4 GPUs, but only 2 are available" in result.output
    assert "Received: parallel=2, gpus_per_run=2" in result.output


def test_summarize_pool_precision_reaches_summarize(monkeypatch, tmp_path):
    from rssc_mlflow.results import summarize as summarize_mod

    asked = []

    def fake(experiment, out, **kwargs):
        asked.append(kwargs["pool_precision"])
        return type("Result", (), {"console": "", "out": tmp_path, "run_id": "r"})()

    monkeypatch.setattr(summarize_mod, "summarize", fake)
    assert runner.invoke(app, ["summarize", "--pool-precision"]).exit_code == 0
    assert runner.invoke(app, ["summarize"]).exit_code == 0
    with pytest.raises(SystemExit) as done:  # the MLproject entry point: -P pool_precision=true
        app(["mlproject", "summarize", "--pool_precision", "true"], prog_name="rssc")
    assert done.value.code in (0, None)
    assert asked == [True, False, True]


def test_a_stage_reports_its_outcome_to_reproduce_in_the_result_file(monkeypatch, tmp_path):
    """`rssc reproduce` runs `rssc STAGE` as a child and reads this file, never the console."""
    from rssc_mlflow import commands
    from rssc_mlflow.errors import DatasetError
    from rssc_mlflow.results.reproduce import outcome

    result_file = tmp_path / "out" / "result.json"
    monkeypatch.setenv(outcome.RESULT_FILE_ENV, str(result_file))
    finished = type("Result", (), {"run_id": "abc123", "metrics": {"test_accuracy": 0.25},
                                   "synthetic": False, "model_name": ""})()
    monkeypatch.setattr(commands, "pretrain", lambda *a, **k: finished)
    done = runner.invoke(app, ["pretrain", "--source", "ucm", "--profile", "smoke"])
    assert done.exit_code == 0, done.output
    assert json.loads(result_file.read_text()) == {
        "status": "ran", "run_id": "abc123", "metrics": {"test_accuracy": 0.25}}
    assert outcome.read_result(result_file)["run_id"] == "abc123"

    def fail(*args, **kwargs):
        raise DatasetError("ucm is not prepared")

    monkeypatch.setattr(commands, "pretrain", fail)
    done = runner.invoke(app, ["pretrain", "--source", "ucm", "--profile", "smoke"])
    assert done.exit_code == 1
    assert json.loads(result_file.read_text()) == {
        "status": "failed", "reason": "DatasetError: ucm is not prepared"}
    assert not list(result_file.parent.glob("*.tmp"))  # written whole, then renamed


def test_reproduce_json_writes_the_report(data_dir, tmp_path):
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["reproduce", "--profile", "smoke", "--only", "table3", "--plan",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["plan_only"] is True and len(report["planned"]) == 6
    assert [p["stage"] for p in report["planned"]] == ["pretrain"] * 3 + ["probe"] * 3
