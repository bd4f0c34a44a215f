"""The user's command, `mlflow run . -e finetune -P source=mlrsnet_sl -P target=ucm`, for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from rssc_mlflow import commands
from rssc_mlflow.tracking import runs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _mlflow_run(entry_point: str, params: dict[str, str], env: dict[str, str]) -> str:
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point,
           "--env-manager", "local", "--experiment-name", "rssc"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_mlflow_run_entry_points(world, monkeypatch, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    world.activate(monkeypatch, tracking_uri=store)
    pre = commands.pretrain("mlrsnet_sl", profile="smoke")
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env = {**inherited, "MLFLOW_TRACKING_URI": store, "RSSC_DATA_DIR": str(world.data_dir),
           # `python` in the MLproject commands must be this environment's interpreter.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    _mlflow_run("finetune", {"source": "mlrsnet_sl", "target": "ucm", "profile": "smoke",
                             "log_model": "false"}, env)
    _mlflow_run("probe", {"source": "mlrsnet_sl", "target": "ucm", "profile": "smoke",
                          "solver": "lbfgs", "standardize": "true"}, env)

    found = {r.data.tags.get(runs.TAG_STAGE): r for r in mlflow.search_runs(
        experiment_names=["rssc"], output_format="list")}
    fine = found["finetune"]
    assert fine.info.status == "FINISHED"
    assert fine.data.tags["mlflow.project.entryPoint"] == "finetune"  # made by `mlflow run`
    assert fine.data.tags[runs.TAG_SOURCE] == "mlrsnet_sl" and fine.data.tags[runs.TAG_TARGET] == "ucm"
    assert fine.data.tags[runs.TAG_LINEAGE_RUN] == pre.run_id
    assert fine.data.params["profile"] == "smoke" and "test_accuracy" in fine.data.metrics
    # `mlflow run` logged "default"; the value the profile gave is recorded beside it.
    assert fine.data.params["epochs"] == "default" and fine.data.params["effective_epochs"] == "1"
    probe = found["probe"]
    assert probe.info.status == "FINISHED"
    assert probe.data.params["solver"] == "lbfgs" and probe.data.params["standardize"] == "true"
