"""The user's command, `mlflow run . -e finetune -P source=mlrsnet_sl -P target=ucm`, for real.

It lands in the experiment `rssc`, where `rssc summarize` reads (without `--experiment-name`,
through rssc's MLflow plugin), and logs the same parameters as the same run started by `rssc`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from rssc_mlflow import commands
from rssc_mlflow.results.summarize import summarize
from rssc_mlflow.tracking import runs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _mlflow_run(entry_point: str, params: dict[str, str], env: dict[str, str],
                *options: str) -> str:
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point,
           "--env-manager", "local", *options]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _cells(experiment: str, out: Path) -> set[str]:
    """The run ids behind the cells `rssc summarize --experiment EXPERIMENT` shows."""
    result = summarize(experiment, out)
    return {run_id for table in result.tables.values() for cell in table.cells.values()
            for run_id in cell.run_ids}


def test_mlflow_run_entry_points(world, monkeypatch, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    world.activate(monkeypatch, tracking_uri=store)
    pre = commands.pretrain("mlrsnet_sl", profile="smoke")
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env = {**inherited, "MLFLOW_TRACKING_URI": store, "RSSC_DATA_DIR": str(world.data_dir),
           # `python` in the MLproject commands must be this environment's interpreter.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    # As the README says it, with no experiment named: it must land in `rssc`.
    _mlflow_run("finetune", {"source": "mlrsnet_sl", "target": "ucm", "profile": "smoke",
                             "log_model": "false", "epochs": "1", "batch_size": "8"}, env)
    # An explicit experiment wins.
    _mlflow_run("probe", {"source": "mlrsnet_sl", "target": "ucm", "profile": "smoke",
                          "solver": "lbfgs", "standardize": "true"}, env,
                "--experiment-name", "mine")

    (fine,) = mlflow.search_runs(experiment_names=["rssc"], output_format="list",
                                 filter_string=f"tags.`{runs.TAG_STAGE}` = 'finetune'")
    assert fine.info.status == "FINISHED"
    assert fine.data.tags["mlflow.project.entryPoint"] == "finetune"  # made by `mlflow run`
    assert fine.data.tags[runs.TAG_SOURCE] == "mlrsnet_sl" and fine.data.tags[runs.TAG_TARGET] == "ucm"
    assert fine.data.tags[runs.TAG_LINEAGE_RUN] == pre.run_id
    assert "test_accuracy" in fine.data.metrics
    (probe,) = mlflow.search_runs(experiment_names=["mine"], output_format="list")
    assert probe.info.status == "FINISHED" and probe.data.tags[runs.TAG_STAGE] == "probe"
    assert probe.data.params["solver"] == "lbfgs" and probe.data.params["standardize"] == "true"
    assert "lr" not in probe.data.params  # lbfgs has no learning rate

    # `rssc summarize` (its default experiment) shows the finetune; `--experiment mine` the probe.
    assert fine.info.run_id in _cells("rssc", tmp_path / "summary")
    assert probe.info.run_id in _cells("mine", tmp_path / "summary-mine")

    # The same run started from the library (what `rssc finetune` calls) logs the same
    # parameters with the same values: the resolved ones, under their own names.
    same = commands.finetune("mlrsnet_sl", "ucm", profile="smoke", log_model=False)
    by_library = mlflow.MlflowClient().get_run(same.run_id).data.params
    assert fine.data.params == by_library
    assert by_library["epochs"] == "1" and by_library["lr"] == "0.0003"
    assert by_library["preprocessing"] == "unit" and by_library["log_model"] == "false"
    assert not {"solver", "standardize", "resume"} & set(by_library)  # probe's, not finetune's
    # No placeholder reached a parameter; dataset_options=default is prepare's own value (the
    # dataset was prepared without switches), logged since fb262ab.
    assert by_library["dataset_options"] == "default"
    assert "default" not in {k: v for k, v in by_library.items() if k != "dataset_options"}.values()
    assert not any(k.startswith("effective_") for k in by_library)
