"""A small synthetic world shared by the tracking tests: prepared datasets and a store.

Training ResNet-50 is the slow part, so the module-scoped `world` prepares the data once and
each test points RSSC_DATA_DIR / MLFLOW_TRACKING_URI at it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from rssc_mlflow.data.prepare import prepare
from rssc_mlflow.data.synth import write_synthetic

WORLD_DATASETS = ("resisc45", "ucm", "aid", "mlrsnet_sl", "mlrsnet_ml")


@dataclasses.dataclass
class World:
    root: Path
    data_dir: Path
    tracking_uri: str

    def activate(self, monkeypatch, tracking_uri: str | None = None) -> None:
        monkeypatch.setenv("RSSC_DATA_DIR", str(self.data_dir))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri or self.tracking_uri)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("world")
    data_dir = root / "data"
    old = os.environ.get("RSSC_DATA_DIR")
    os.environ["RSSC_DATA_DIR"] = str(data_dir)
    try:
        manual = write_synthetic(root / "synth", keys=list(WORLD_DATASETS), images_per_class=3,
                                 image_size=32, seed=1)
        for key in WORLD_DATASETS:
            prepare(key, manual[key])
    finally:
        if old is None:
            os.environ.pop("RSSC_DATA_DIR", None)
        else:
            os.environ["RSSC_DATA_DIR"] = old
    return World(root, data_dir, f"sqlite:///{root / 'mlflow.db'}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    uri: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """Stop the server and everything it started (uvicorn, job runner, huey consumers)."""
        group = self.process.pid  # its own session: the group id is its pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)  # whatever did not stop: never left running
        self.process.wait()


def start_mlflow_server(root: Path, backend_store_uri: str, *, extra: list[str] | None = None,
                        env: dict[str, str] | None = None, port: int | None = None,
                        artifacts: Path | None = None, log_name: str = "") -> Server:
    """A real `mlflow server` process on a loopback port (free unless given), with proxied
    artifacts (in `artifacts`, default a folder per port)."""
    port = port or free_port()
    log = root / f"server-{log_name or port}.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend_store_uri,
           "--artifacts-destination", str(artifacts or root / f"artifacts-{port}"),
           "--serve-artifacts",
           "--workers", "1", *(extra or [])]
    # No MLflow job runner (7 huey processes per server, for GenAI jobs rssc never submits).
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               env=server_env, cwd=root,
                               start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-3000:]}")
        try:
            if requests.get(uri + "/health", timeout=2).ok:
                return Server(uri, process, log)
        except requests.RequestException:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError(f"mlflow server did not start: {log.read_text()[-3000:]}")
