"""Through a real `mlflow server`: pretrain -> registry -> finetune -> weights download.

With a PostgreSQL backend (`.ci/run` starts one and exports RSSC_TEST_POSTGRES_URI; in CI a
missing PostgreSQL is a failure, not a skip). Servers over SQLite are exercised by
test_recovery.py (a logged model through the proxy), test_faults.py and test_security.py.
"""

from __future__ import annotations

import os

import mlflow
import pytest

from rssc_mlflow import commands
from rssc_mlflow.tracking import registry, runs
from tests.tracking.conftest import start_mlflow_server

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


def test_unreachable_server_fails_fast_before_training(world, monkeypatch):
    from tests.tracking.conftest import free_port

    world.activate(monkeypatch, tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(commands.RsscError, match=r"does not answer.*Nothing was trained"):
        commands.finetune("scratch", "ucm", profile="smoke")
