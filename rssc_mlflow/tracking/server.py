"""`rssc server`: a real `mlflow server` for a team, loopback-only unless told otherwise."""

from __future__ import annotations

import shutil
import sys


def server_command(*, host: str, port: int, backend_store_uri: str, artifacts_destination: str,
                   auth: bool = False) -> list[str]:
    """The `mlflow server` command line: SQL backend, proxied artifacts, optional basic auth.

    With `auth`, MLflow's basic-auth app reads its admin credentials from the environment
    (MLFLOW_AUTH_CONFIG_PATH / the auth config), never from this command line.
    """
    mlflow_bin = shutil.which("mlflow") or f"{sys.executable} -m mlflow"
    cmd = [*mlflow_bin.split(), "server", "--host", host, "--port", str(port),
           "--backend-store-uri", backend_store_uri,
           "--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd
