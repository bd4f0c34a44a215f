"""A shared tracking server is not open to anyone, and credentials never leak.

A real `mlflow server --app-name basic-auth`, started with the command line `rssc server --auth`
builds, takes its admin credentials from the environment only. Unauthenticated and wrongly
authenticated clients are refused (401); a client given MLFLOW_TRACKING_USERNAME/PASSWORD in
its environment logs a run through the rssc helpers. Then everything the server stored (the
backend store dumped as text, every artifact, the auth store, its log) and everything the client
printed is searched for the password and the user:password pair (plain and as the Basic header).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests

from rssc_mlflow.errors import RsscError
from rssc_mlflow.tracking import runs
from rssc_mlflow.tracking.server import server_command
from tests.tracking.conftest import wait_healthy, wait_until_listening

pytestmark = pytest.mark.slow

USER = f"rssc-admin-{secrets.token_hex(4)}"
PASSWORD = f"pw-{secrets.token_urlsafe(24)}"  # distinctive: a hit cannot be a coincidence
FLASK_KEY = f"key-{secrets.token_urlsafe(24)}"  # the CSRF secret the auth app needs: also secret
SECRETS = {
    "password": PASSWORD.encode(),
    "user:password": f"{USER}:{PASSWORD}".encode(),
    "Basic header": base64.b64encode(f"{USER}:{PASSWORD}".encode()),
    "flask secret key": FLASK_KEY.encode(),
}
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"

CLIENT = textwrap.dedent("""
    import pathlib, tempfile
    import mlflow
    from rssc_mlflow.tracking import runs

    with runs.tracked_run("pretrain", "ucm", tags={runs.TAG_PROFILE: "smoke"}) as run:
        runs.log_params({"epochs": 1, "batch_size": 8, "lr": "default"})
        mlflow.log_metrics({"loss": 0.5, "accuracy": 0.25}, step=1)
        runs.log_history(run.info.run_id, [{"val_loss": 0.7}, {"val_loss": 0.6}])
        mlflow.log_dict({"train": ["a.jpg"], "test": ["b.jpg"]}, "split/ucm-source.json")
        note = pathlib.Path(tempfile.mkdtemp()) / "per_class_report.txt"
        note.write_text("accuracy 0.25")
        mlflow.log_artifact(str(note), artifact_path="evaluation")
        runs.announce(f"logged run {run.info.run_id}")
    print("RUN_ID", run.info.run_id)
""")


@dataclasses.dataclass
class AuthServer:
    uri: str
    root: Path  # everything the server wrote: stores, artifacts, its log
    process: subprocess.Popen
    run_id: str = ""
    client_output: str = ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    root = tmp_path_factory.mktemp("auth-server")
    ini = root / "basic_auth.ini"
    # No credentials in the file: the admin comes from MLFLOW_AUTH_ADMIN_* in the environment.
    # The credential cache spares a PBKDF2 check (seconds on a busy CPU) on every request.
    ini.write_text(textwrap.dedent(f"""\
        [mlflow]
        default_permission = NO_PERMISSIONS
        database_uri = sqlite:///{root / 'auth.db'}
        authorization_function = mlflow.server.auth:authenticate_request_basic_auth
        auth_cache_ttl_seconds = 300
        """))
    cmd = server_command(host="127.0.0.1", port=0,  # the kernel picks a free port
                         backend_store_uri=f"sqlite:///{root / 'server.db'}",
                         artifacts_destination=str(root / "artifacts"), auth=True)
    log = root / "server.log"
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": USER,
           "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": FLASK_KEY,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as `rssc server` runs it
    process = subprocess.Popen([*cmd, "--workers", "1"], stdout=log.open("w"),
                               stderr=subprocess.STDOUT, env=env, cwd=root,
                               start_new_session=True)  # its uvicorn child stops with it
    srv = AuthServer("", root, process)
    try:
        host, port = wait_until_listening(process, log)
        srv.uri = f"http://{host}:{port}"
        wait_healthy(srv.uri, process, log)
        # The authenticated client: a separate process, so all it prints is captured.
        client_env = {**os.environ, "MLFLOW_TRACKING_URI": srv.uri,
                      "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD,
                      "RSSC_DATA_DIR": str(root / "client-data"),
                      "MLFLOW_EXPERIMENT_NAME": "rssc-security"}
        done = subprocess.run([sys.executable, "-c", CLIENT], env=client_env, cwd=root,
                              capture_output=True, text=True, timeout=300)
        srv.client_output = done.stdout + done.stderr
        (root / "client.log").write_text(srv.client_output)
        assert done.returncode == 0, srv.client_output[-3000:]
        srv.run_id = done.stdout.split("RUN_ID")[-1].strip()
        yield srv
    finally:
        _signal_group(process, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # start_new_session: the group id is the server's pid


@pytest.fixture()
def as_admin(server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    return mlflow.MlflowClient(server.uri)


def test_unauthenticated_clients_are_refused(server: AuthServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    anonymous = requests.get(server.uri + SEARCH, timeout=30)
    assert anonymous.status_code == 401 and "You are not authenticated" in anonymous.text
    wrong = requests.get(server.uri + SEARCH, auth=(USER, PASSWORD + "x"), timeout=30)
    assert wrong.status_code == 401
    assert requests.get(server.uri + SEARCH, auth=(USER, PASSWORD), timeout=30).status_code == 200
    # The rssc helpers without credentials: refused before a run exists.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(RsscError, match=r"refused the request.*MLFLOW_TRACKING_USERNAME"):
        with runs.tracked_run("pretrain", "aid"):
            pytest.fail("a run was opened without credentials")
    mlflow.end_run()  # nothing is active; keeps later tests clean if that ever changes


def test_authenticated_client_logs_a_run(server: AuthServer,
                                         as_admin: mlflow.MlflowClient) -> None:
    run = as_admin.get_run(server.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "pre ucm"
    assert run.data.params == {"epochs": "1", "batch_size": "8", "lr": "default"}
    assert run.data.metrics["loss"] == 0.5 and run.data.metrics["accuracy"] == 0.25
    assert [m.value for m in as_admin.get_metric_history(server.run_id, "val_loss")] == [0.7, 0.6]
    assert run.data.tags[runs.TAG_STAGE] == "pretrain"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # through the server's proxy
    listed = {a.path for d in ("split", "evaluation")
              for a in as_admin.list_artifacts(server.run_id, d)}
    assert listed == {"split/ucm-source.json", "evaluation/per_class_report.txt"}
    runs_in_store = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.run_id for r in runs_in_store] == [server.run_id]  # none from refused clients


def test_server_command_line_holds_no_credentials(server: AuthServer) -> None:
    cmdline = Path(f"/proc/{server.process.pid}/cmdline")
    if not cmdline.exists():
        pytest.skip("no /proc on this system")
    text = cmdline.read_bytes()
    assert b"basic-auth" in text and b"127.0.0.1" in text
    for name, secret in SECRETS.items():
        assert secret not in text, name


def _store_as_text(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return "\n".join(conn.iterdump())


def test_credentials_never_stored_or_logged(server: AuthServer,
                                            as_admin: mlflow.MlflowClient) -> None:
    run = as_admin.get_run(server.run_id)
    recorded = " ".join([*run.data.params.values(), *run.data.tags.values(),
                         *run.data.params, *run.data.tags])
    dump = _store_as_text(server.root / "server.db")
    assert server.run_id in dump and "'val_loss'" in dump  # the dump holds the run
    files = [p for p in server.root.rglob("*") if p.is_file()]
    artifacts = [p for p in files if "artifacts" in p.parts]
    assert {p.name for p in artifacts} >= {"ucm-source.json", "per_class_report.txt"}
    assert server.client_output and "logged run" in server.client_output
    haystacks = {"params and tags": recorded.encode(), "backend store dump": dump.encode(),
                 "client output": server.client_output.encode(),
                 **{str(p.relative_to(server.root)): p.read_bytes() for p in files}}
    assert "server.log" in haystacks and "auth.db" in haystacks and "server.db" in haystacks
    leaks = [f"{name} in {where}" for where, data in haystacks.items()
             for name, secret in SECRETS.items() if secret in data]
    assert leaks == []


def test_rssc_training_against_the_auth_server(server: AuthServer, world,
                                               tmp_path: Path) -> None:
    """`rssc finetune` itself (smoke profile, its own process) against the basic-auth server:
    without credentials a one-paragraph error and no run; with them a FINISHED run."""
    admin = mlflow.MlflowClient(server.uri)

    def run_ids() -> set[str]:
        with _credentials():
            return {r.info.run_id for e in admin.search_experiments()
                    for r in admin.search_runs([e.experiment_id])}

    args = [sys.executable, "-m", "rssc_mlflow.cli", "finetune", "--source", "scratch",
            "--target", "ucm", "--profile", "smoke", "--epochs", "1", "--no-log-model"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env |= {"MLFLOW_TRACKING_URI": server.uri, "RSSC_DATA_DIR": str(world.data_dir),
            "RSSC_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
            "RSSC_CACHE_DIR": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    before = run_ids()
    refused = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode == 1, refused.stderr[-3000:]
    message = " ".join(refused.stderr.split())
    assert (f"error: The MLflow tracking server at {server.uri} refused the request (not "
            "authenticated or not allowed). Set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment. Nothing was "
            "trained.") in message, message[-3000:]
    assert "Traceback" not in refused.stderr and "Epoch 1/1" not in refused.stdout
    assert run_ids() == before  # no run at all

    env |= {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (new,) = run_ids() - before
    with _credentials():
        run = admin.get_run(new)
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    for name, secret in SECRETS.items():  # nor does the CLI print them
        assert secret.decode() not in done.stdout + done.stderr, name


@contextlib.contextmanager
def _credentials() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", USER)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        yield
