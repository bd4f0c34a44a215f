"""Through a real `mlflow server`: pretrain -> registry -> finetune -> weights download.

With a PostgreSQL backend (`.ci/run` starts one and exports RSSC_TEST_POSTGRES_URI; in CI a
missing PostgreSQL is a failure, not a skip). Servers over SQLite are exercised by
test_recovery.py (a logged model through the proxy), test_faults.py and test_security.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import mlflow
import pytest

from rssc_mlflow import commands
from rssc_mlflow.tracking import registry, runs
from tests.tracking.conftest import (
    Server,
    closed_port,
    listening_addresses,
    start_mlflow_server,
    wait_healthy,
    wait_until_listening,
)

pytestmark = pytest.mark.slow


def _postgres_uri() -> str:
    uri = os.environ.get("RSSC_TEST_POSTGRES_URI")
    if not uri:
        if os.environ.get("CI"):
            pytest.fail("RSSC_TEST_POSTGRES_URI is not set: .ci/run must start PostgreSQL")
        pytest.skip("no PostgreSQL: set RSSC_TEST_POSTGRES_URI (see .ci/postgres.sh)")
    return uri


def _fresh_postgres_db(uri: str, name: str) -> str:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return uri.rsplit("/", 1)[0] + "/" + name


def _round_trip(world, monkeypatch, tmp_path, server_uri: str) -> None:
    world.activate(monkeypatch, tracking_uri=server_uri)
    pre = commands.pretrain("ucm", profile="smoke")
    fine = commands.finetune("ucm", "aid", profile="smoke", log_model=False)
    client = mlflow.MlflowClient()
    assert mlflow.get_tracking_uri() == server_uri
    assert client.get_run(pre.run_id).info.status == "FINISHED"
    fine_run = client.get_run(fine.run_id)
    assert fine_run.info.status == "FINISHED"
    assert fine_run.data.tags[runs.TAG_LINEAGE_RUN] == pre.run_id
    assert fine_run.data.tags[runs.TAG_LINEAGE_NAME] == "rssc-resnet50-ucm"
    assert "test_accuracy" in fine_run.data.metrics
    # Artifacts went through the server's proxy, not to a local folder.
    assert client.get_run(pre.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    files = registry.download("ucm", tmp_path / "weights", profile="smoke")
    assert all(path.stat().st_size > 0 for path in files)


def test_postgres_server_round_trip(world, monkeypatch, tmp_path):
    backend = _fresh_postgres_db(_postgres_uri(), "rssc_round_trip")
    server = start_mlflow_server(tmp_path, backend)
    try:
        _round_trip(world, monkeypatch, tmp_path, server.uri)
    finally:
        server.stop()


def test_unreachable_server_fails_fast_before_training(world, monkeypatch, tmp_path):
    """A closed port: refused within the health check's 10 s timeout (the bound
    docs/RELIABILITY.md states; a refused connection is far quicker), and before any training:
    no fit, no checkpoint folder, no cache."""
    world.activate(monkeypatch, tracking_uri=f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("RSSC_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("RSSC_CACHE_DIR", str(tmp_path / "cache"))
    trained = []
    monkeypatch.setattr(commands.fit_lib, "fit", lambda *a, **k: trained.append(1))
    started = time.monotonic()
    with pytest.raises(commands.RsscError, match=r"does not answer.*Nothing was trained"):
        commands.finetune("scratch", "ucm", profile="smoke")
    took = time.monotonic() - started
    assert took < 10.0, took  # the health check's timeout, the bound RELIABILITY.md states
    assert trained == []
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "cache").exists()


def test_rssc_server_without_host_listens_on_loopback_only(tmp_path):
    """`rssc server` itself (the CLI, as a user starts it), with no --host: the kernel's list
    of the sockets its process tree listens on holds loopback addresses only. `--port 0` lets
    the kernel pick a free port (5000, the default, may be taken on a shared machine)."""
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "rssc_mlflow.cli", "server", "--port", "0"],
                               cwd=tmp_path, env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    server = Server("", process, log)
    try:
        host, port = wait_until_listening(process, log)
        server.uri = f"http://{host}:{port}"
        wait_healthy(server.uri, process, log)
        listening = listening_addresses(process.pid)
        assert listening and {ip for ip, _ in listening} == {"127.0.0.1"}, listening
        assert ("127.0.0.1", port) in listening
        assert "--host 127.0.0.1" in log.read_text()  # the command it printed, then exec'd
    finally:
        server.stop()
