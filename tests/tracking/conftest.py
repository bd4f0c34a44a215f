"""A small synthetic world shared by the tracking tests: prepared datasets and a store.

Training ResNet-50 is the slow part, so the module-scoped `world` prepares the data once and
each test points RSSC_DATA_DIR / MLFLOW_TRACKING_URI at it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
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


def closed_port() -> int:
    """A loopback port with nothing listening on it, held bound (never listening) by this
    process for the whole session, so no other process can take it: connecting is refused."""
    global _CLOSED
    if _CLOSED is None:
        _CLOSED = socket.socket()
        _CLOSED.bind(("127.0.0.1", 0))
    return _CLOSED.getsockname()[1]


_CLOSED: socket.socket | None = None
LISTENING = re.compile(r"Uvicorn running on http://([0-9.]+):(\d+)")
IN_USE = "address already in use"


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses that process `pid` and its children listen on, as the kernel says."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    found = set()
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            found |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
    return found


def wait_until_listening(process: subprocess.Popen, log: Path,
                         timeout_s: float = 180) -> tuple[str, int]:
    """The (host, port) the server's uvicorn reports once it has bound its socket: the line it
    writes after binding, so it cannot be missed. Raises if the server exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_text(errors="replace"))
        if found:
            return found.group(1), int(found.group(2))
        if process.poll() is not None:
            raise ServerExited(log.read_text(errors="replace")[-3000:])
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not start: {log.read_text()[-3000:]}")


class ServerExited(RuntimeError):
    """The server process ended before it listened (e.g. its port was taken)."""


def wait_healthy(uri: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerExited(log.read_text(errors="replace")[-3000:])
        try:
            if requests.get(uri + "/health", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy: {log.read_text()[-3000:]}")


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
                        env: dict[str, str] | None = None, port: int = 0,
                        artifacts: Path | None = None, log_name: str = "") -> Server:
    """A real `mlflow server` process on loopback, with proxied artifacts (in `artifacts`,
    default a folder per server). With port 0 (the default) the server binds a port the kernel
    picks and the port is read from its log: no probe-then-release race. A given port (a restart
    on the port the clients know) is retried for a while if the server finds it taken."""
    tag = log_name or f"{time.monotonic_ns()}"
    artifacts = artifacts or root / f"artifacts-{tag}"
    for attempt in range(10):
        log = root / f"server-{tag}.log"
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(port), "--backend-store-uri", backend_store_uri,
               "--artifacts-destination", str(artifacts), "--serve-artifacts",
               "--workers", "1", *(extra or [])]
        # No MLflow job runner (7 huey processes per server, for GenAI jobs rssc never submits).
        server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
        process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                   env=server_env, cwd=root, start_new_session=True)
        server = Server("", process, log)
        try:
            host, bound = wait_until_listening(process, log)
            server.uri = f"http://{host}:{bound}"
            wait_healthy(server.uri, process, log)
            return server
        except ServerExited as exc:
            server.stop()
            if port == 0 or IN_USE not in str(exc).lower():
                raise
            log.rename(root / f"server-{tag}-in-use-{attempt}.log")
            time.sleep(3)  # the port we must have is taken for now: try again
        except BaseException:
            server.stop()
            raise
    raise RuntimeError(f"port {port} stayed in use")


# The start of a client script that must work without rssc_mlflow (a user's process, or a
# logged model's code/ folder): every import of rssc_mlflow fails, even through MLflow's plugin
# entry points.
NO_RSSC = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoRssc(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "rssc_mlflow":
                raise ImportError("this client must not use rssc_mlflow")
            return None

    sys.meta_path.insert(0, NoRssc())
""")
