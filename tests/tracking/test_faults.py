"""Tracking-store faults: concurrent runs, and a server that goes away in the middle of a run.

The clients are separate processes making exactly the tracking calls a training run makes
(`runs.tracked_run`, `runs.log_params`, one `mlflow.log_metrics` per epoch as `EpochLogger`
does, JSON artifacts, final metrics and a model-sized artifact), without TensorFlow: what is
under test is the tracking path, and a ResNet-50 per client would only make the test slow.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest

from rssc_mlflow.tracking import runs
from tests.tracking.conftest import Server, start_mlflow_server

pytestmark = pytest.mark.slow

CLIENT = textwrap.dedent("""
    import os, pathlib, sys, time
    import mlflow
    from rssc_mlflow.tracking import runs

    epochs, pause = int(os.environ["EPOCHS"]), float(os.environ["PAUSE_S"])
    name = os.environ["CLIENT_NAME"]
    with runs.tracked_run("pretrain", name, tags={runs.TAG_PROFILE: "smoke"}) as run:
        runs.log_params({"epochs": epochs, "batch_size": 8, "client": name})
        for epoch in range(1, epochs + 1):
            mlflow.log_metrics({"loss": 1.0 / epoch, "accuracy": epoch / epochs}, step=epoch)
            print(f"epoch {epoch}", flush=True)
            time.sleep(pause)
        mlflow.log_dict({"client": name}, "split/manifest.json")
        model = pathlib.Path(os.environ["WORK"]) / f"{name}-model.bin"
        model.write_bytes(os.urandom(2_000_000))  # stands in for the model file
        mlflow.log_artifact(str(model), artifact_path="model")
        mlflow.log_metrics({"test_accuracy": 0.5})
        print(f"run {run.info.run_id} FINISHED", flush=True)
""")


def _client(name: str, uri: str, work: Path, *, epochs: int, pause_s: float,
            extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "EPOCHS": str(epochs),
           "PAUSE_S": str(pause_s), "CLIENT_NAME": name, "WORK": str(work), **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-c", CLIENT], env=env, cwd=work, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _check_complete(uri: str, names: list[str], epochs: int) -> None:
    """Every client's run FINISHED with every epoch's metrics once, its artifacts and params."""
    client = mlflow.MlflowClient(uri)
    experiments = client.search_experiments()
    found = client.search_runs([e.experiment_id for e in experiments])
    by_name = {r.data.params.get("client"): r for r in found}
    where = {n: (r.info.experiment_id, r.info.status) for n, r in by_name.items()}
    assert sorted(by_name) == sorted(names) and len(found) == len(names), (
        where, [(e.experiment_id, e.name) for e in experiments])
    experiment = client.get_experiment_by_name(runs.experiment_name())
    assert {r.info.experiment_id for r in found} == {experiment.experiment_id}
    for name, run in by_name.items():
        assert run.info.status == "FINISHED", (name, run.data.tags.get(runs.TAG_ERROR))
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), name
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == \
            pytest.approx([1.0 / e for e in range(1, epochs + 1)])
        assert run.data.metrics["test_accuracy"] == 0.5
        listed = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        assert listed == {f"model/{name}-model.bin"}


def _run_together(uri: str, work: Path, names: list[str], *, epochs: int) -> list[str]:
    procs = [_client(n, uri, work, epochs=epochs, pause_s=0.05) for n in names]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for name, proc, out in zip(names, procs, outputs):
        assert proc.returncode == 0, f"{name}: {out[-3000:]}"
        assert "FINISHED" in out, f"{name}: {out[-3000:]}"
    return outputs


def test_four_concurrent_runs_on_a_postgres_server(tmp_path: Path) -> None:
    uri = os.environ.get("RSSC_TEST_POSTGRES_URI")
    if not uri:
        if os.environ.get("CI"):
            pytest.fail("RSSC_TEST_POSTGRES_URI is not set: .ci/run must start PostgreSQL")
        pytest.skip("no PostgreSQL: set RSSC_TEST_POSTGRES_URI (see .ci/postgres.sh)")
    # A fresh database per test run, so earlier runs in the shared one do not count.
    import sqlalchemy

    database = f"rssc_concurrency_{os.getpid()}"
    admin = sqlalchemy.create_engine(uri, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {database}"))
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
    server = start_mlflow_server(tmp_path, uri.rsplit("/", 1)[0] + "/" + database,
                                 extra=["--workers", "4"])
    try:
        names = ["ucm", "aid", "resisc45", "patternnet"]
        _run_together(server.uri, tmp_path, names, epochs=15)
        _check_complete(server.uri, names, epochs=15)
    finally:
        server.stop()
        admin.dispose()


def test_two_concurrent_runs_on_the_embedded_sqlite_store(tmp_path: Path) -> None:
    """On a brand-new store: the file does not exist yet, so creating the schema (MLflow does
    it on first use) and the `rssc` experiment are part of the race."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    assert not db.exists()
    names = ["ucm", "aid"]
    _run_together(uri, tmp_path, names, epochs=30)
    _check_complete(uri, names, epochs=30)
    with sqlite3.connect(db) as conn:  # never a corrupt store
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _serve(root: Path, store: str, port: int, name: str) -> Server:
    """`mlflow server` on a fixed store and artifact folder, on a port the kernel picks (0) or
    the one the first server got (so it can be restarted where the client looks)."""
    return start_mlflow_server(root, store, port=port, artifacts=root / "artifacts",
                               log_name=name)


def test_run_survives_a_server_restart(tmp_path: Path) -> None:
    """The server is down for 30 s while a run logs epochs: the run still FINISHES, complete.

    MLflow's client retries refused connections with exponential backoff; the environment
    below (documented in docs/RELIABILITY.md) gives it ~2 minutes of retries.
    """
    store, epochs = f"sqlite:///{tmp_path / 'server.db'}", 6
    first = _serve(tmp_path, store, 0, "first")
    port = int(first.uri.rsplit(":", 1)[1])
    second = None
    proc = _client("ucm", first.uri, tmp_path, epochs=epochs, pause_s=0.5,
                   extra_env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "8",
                              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                              "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
                              "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"})
    try:
        lines: list[str] = []
        while not any(line.startswith("epoch 3") for line in lines):
            line = proc.stdout.readline()
            assert line, "the client ended before epoch 3: " + "".join(lines)[-3000:]
            lines.append(line)
        first.stop()  # the server goes away mid-run...
        down_since = time.monotonic()
        time.sleep(30)
        second = _serve(tmp_path, store, port, "second")  # ...and is back 30 s later
        out = "".join(lines) + proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out[-3000:]
        assert "FINISHED" in out and time.monotonic() - down_since >= 30
        _check_complete(second.uri, ["ucm"], epochs=epochs)
    finally:
        proc.kill()
        if second is not None:
            second.stop()
