"""The kubernetes backend: one MLflow Kubernetes job per run (`mlflow.projects.run`), and the
checks of its configuration before any job is submitted.

A job's run reports through the tracking store: the parent reads its metrics there. MLflow
raises when the job fails, which fails the run.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import tempfile
import time
from pathlib import Path

from rssc_mlflow.errors import RsscError
from rssc_mlflow.results.reproduce import outcome
from rssc_mlflow.results.reproduce.planning import PlannedRun
from rssc_mlflow.tracking import runs as tags

# The MLproject (kubernetes backend) lives at the repository root, beside the package.
PROJECT_ROOT = Path(__file__).resolve().parents[3]
# The kubernetes backend needs a docker_env project; the root MLproject keeps conda_env for
# `mlflow run .`, so the cluster runs the twin project in kubernetes/ (same entry points).
KUBERNETES_PROJECT = "kubernetes"
DEFAULT_BACKEND_CONFIG = Path("kubernetes") / "backend_config.json"


class Kubernetes:
    """One `mlflow.projects.run(..., backend="kubernetes", synchronous=True)` per run."""

    def __init__(self, profile: str, parallel: int, log_model_finetune: bool,
                 backend_config: Path) -> None:
        self.profile, self.parallel, self.log_model_finetune = profile, parallel, log_model_finetune
        self.backend_config = backend_config

    def close(self) -> None:
        """Remove the resolved copy of the backend config (`load_backend_config`)."""
        self.backend_config.unlink(missing_ok=True)

    def parameters(self, run: PlannedRun) -> dict[str, str]:
        params = {"source": run.source, "profile": self.profile, "seed": str(run.seed)}
        if run.target:
            params["target"] = run.target
        if run.stage == "finetune":
            params["log_model"] = str(self.log_model_finetune).lower()
        return params

    def _one(self, run: PlannedRun, say: outcome.Say) -> None:
        import mlflow.projects

        say(run, "... (kubernetes job)")
        started = time.monotonic()
        try:
            submitted = mlflow.projects.run(
                uri=str(PROJECT_ROOT / KUBERNETES_PROJECT), entry_point=run.stage,
                parameters=self.parameters(run),
                experiment_name=tags.experiment_name(), backend="kubernetes",
                backend_config=str(self.backend_config), synchronous=True, env_manager="local")
            run.run_id = submitted.run_id
            try:
                run.metrics = dict(mlflow.MlflowClient().get_run(run.run_id).data.metrics)
            except Exception:  # noqa: BLE001 - metrics are only shown; the run is what counts
                run.metrics = {}
            run.status, run.seconds = "ran", time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - ExecutionException, API errors, ...
            outcome.failed(run, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        say(run, outcome.describe(run))

    def run_wave(self, wave: list[PlannedRun], say: outcome.Say) -> None:
        if self.parallel <= 1:
            for run in wave:
                self._one(run, say)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.parallel) as pool:
            list(pool.map(lambda r: self._one(r, say), wave))


def load_backend_config(path: Path | None) -> Path:
    """Validate a Kubernetes backend config; return a copy whose template path is absolute.

    A relative `kube-job-template-path` is taken relative to the config file (MLflow itself would
    read it relative to the working directory, so the copy spells it out).
    """
    import yaml

    path = Path(path) if path is not None else PROJECT_ROOT / DEFAULT_BACKEND_CONFIG
    if not path.is_file():
        raise RsscError(f"Kubernetes backend config {path} does not exist. Pass --backend-config "
                        f"FILE.json (see {DEFAULT_BACKEND_CONFIG} in the repository).")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RsscError(f"Kubernetes backend config {path} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise RsscError(f"Kubernetes backend config {path} must be a JSON object.")
    for field in ("kube-job-template-path", "repository-uri"):
        if not config.get(field):
            raise RsscError(f"Kubernetes backend config {path} lacks {field!r} (MLflow needs "
                            "kube-job-template-path and repository-uri; kube-context is optional).")
    template = Path(config["kube-job-template-path"]).expanduser()
    if not template.is_absolute():
        template = (path.parent / template).resolve()
    if not template.is_file():
        raise RsscError(f"The job template {config['kube-job-template-path']!r} named in {path} "
                        f"does not exist (looked at {template}).")
    try:
        job = yaml.safe_load(template.read_text())
    except yaml.YAMLError as exc:
        raise RsscError(f"The job template {template} is not valid YAML: {exc}") from None
    if not isinstance(job, dict) or job.get("kind") != "Job" or \
            not (job.get("metadata") or {}).get("namespace"):
        raise RsscError(f"The job template {template} must be a batch/v1 Job with "
                        "metadata.namespace (MLflow creates the job in that namespace).")
    resolved = {**config, "kube-job-template-path": str(template)}
    fd, out = tempfile.mkstemp(prefix="rssc-backend-", suffix=".json")  # MLflow wants .json
    with os.fdopen(fd, "w") as fh:
        json.dump(resolved, fh)
    return Path(out)


def check_project() -> None:
    """MLflow's kubernetes backend builds an image from the MLproject's docker_env."""
    import yaml

    project = PROJECT_ROOT / KUBERNETES_PROJECT / "MLproject"
    if not project.is_file():
        raise RsscError(f"No MLproject at {project}: the kubernetes backend runs the "
                        "project from a checkout of the repository.")
    spec = yaml.safe_load(project.read_text()) or {}
    if not (spec.get("docker_env") or {}).get("image"):
        raise RsscError(f"{project} has no `docker_env: {{image: ...}}`: MLflow's kubernetes "
                        "backend builds the job's image on top of it. Add one (a TensorFlow GPU "
                        "image with the package installed).")
