"""The life of one MLflow run: start (or resume), tags, parameters, inputs, artifacts, failure.

Everything a run records goes through here, so the tag names are defined once (`TAGS`) and
`results` can read them back without guessing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException

from rssc_mlflow import __version__, protocol
from rssc_mlflow.errors import Interrupted, RsscError
from rssc_mlflow.naming import run_name  # noqa: F401 - its home is naming (no MLflow there)
from rssc_mlflow.settings import STAGES, TRAINING_STAGES, Stage

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "rssc"
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default"
# Tag names, in one place: results/summarize.py reads exactly these.
TAG_STAGE = "rssc.stage"
TAG_SOURCE = "rssc.source"
TAG_TARGET = "rssc.target"
TAG_PROFILE = "rssc.profile"
TAG_SEED = "rssc.seed"
TAG_SYNTHETIC = "rssc.synthetic"
TAG_FINGERPRINT = "rssc.fingerprint"
# The fingerprint without precision and replica count (`summarize --pool-precision`).
TAG_FINGERPRINT_POOLED = "rssc.fingerprint_pooled"
TAG_DATASET_DIGEST = "rssc.dataset_digest"
TAG_SPLIT_DIGEST = "rssc.split_digest"
TAG_PREPROCESSING = "rssc.preprocessing"
TAG_LINEAGE_NAME = "rssc.lineage.model_name"
TAG_LINEAGE_VERSION = "rssc.lineage.model_version"
TAG_LINEAGE_RUN = "rssc.lineage.run_id"
TAG_LINEAGE_URI = "rssc.lineage.uri"
TAG_FEATURE_KEY = "rssc.feature_key"
TAG_GIT_COMMIT = "rssc.git_commit"
TAG_VERSION = "rssc.version"
TAG_ERROR = "rssc.error"
TAG_CHECKPOINT_DIR = "rssc.checkpoint_dir"
# What the UI shows: the run's description, and a short flag to add as a column at a glance.
TAG_NOTE = "mlflow.note.content"
TAG_SYNTHETIC_FLAG = "SYNTHETIC"  # "yes" on synthetic runs only

SYNTHETIC_BANNER = protocol.SYNTHETIC_BANNER
SYNTHETIC_WEIGHTS_BANNER = (
    "SYNTHETIC WEIGHTS: this run starts from weights trained on synthetic images (e.g. the "
    "demo's ImageNet stand-in); its numbers are NOT comparable to the paper."
)


def experiment_name() -> str:
    """Where every rssc run goes and what `rssc summarize` reads: MLFLOW_EXPERIMENT_NAME or rssc."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)


def experiment_id() -> str:
    """The id of `experiment_name()`, created when missing.

    Passed on explicitly rather than made active with `set_experiment`: when two processes
    create the experiment at once, the loser's `set_experiment` returns it without making it
    active, and its run would land in "Default" (seen with 4 runs on one server).
    """
    client = mlflow.MlflowClient()
    name = experiment_name()
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created by another process meanwhile
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise RsscError(
            f"The experiment {name!r} is deleted in the tracking store at "
            f"{mlflow.get_tracking_uri()}. Restore it (`mlflow experiments restore "
            f"--experiment-id {found.experiment_id}`), or set MLFLOW_EXPERIMENT_NAME to another "
            "name.")
    _mark_experiment_kind(found)
    return found.experiment_id


# MLflow 3's UI opens an experiment on its GenAI overview (traces, latency, tokens) unless this
# tag says it holds model training runs; then it opens on the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def _mark_experiment_kind(experiment: Any) -> None:
    if (experiment.tags or {}).get(EXPERIMENT_KIND_TAG) is None:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG,
                                                 EXPERIMENT_KIND)


def git_commit() -> str:
    """The commit of the package's checkout, or 'unknown' outside a git clone."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# The runs table of MLflow 3's UI gives run names 190 px (about 24 characters): there a run is
# named with short forms, e.g. 'ft mlrs→ucm', 'probe IN+mlrs-other→ucm'. The seed is a column
# of its own (parameter `seed`); tags and the run's description carry the full names.
UI_NAME_MAX = 24
_SHORT_KEYS = {"imagenet": "IN", "imagenet100": "in100", "mlrsnet_sl": "mlrs",
               "mlrsnet_ml": "mlrs-ml", "mlrsnet_ucm_same": "mlrs-same",
               "mlrsnet_ucm_other": "mlrs-other", "mlrsnet_half": "mlrs-half",
               "resisc45": "resisc", "patternnet": "pnet", "rsicb256": "rsicb"}


def _short(reference: str) -> str:
    return "+".join(_SHORT_KEYS.get(part, part) for part in reference.split("+"))


def ui_run_name(stage: str, source: str, target: str = "") -> str:
    """The run's name in the UI: short stage and dataset names."""
    name = f"{Stage(stage).short if stage in STAGES else stage} {_short(source)}"
    return f"{name}→{_short(target)}" if target else name


def run_note(*, stage: str, source: str, target: str, profile: str, seed: int,
             lineage: str, synthetic: bool, result: str) -> str:
    """The run's description (markdown, three lines): what ran, from what, with what result."""
    head = f"**{stage}** {source}" + (f" → {target}" if target else "")
    head += f" · profile {profile}, seed {seed}"
    if synthetic:
        head += " · **SYNTHETIC**: not comparable to the paper"
    return "  \n".join([head, f"lineage: {lineage}", f"result: {result}"])


def _note_result(run_id: str, result: str) -> None:
    """Replace the result line of a run's description (failed, interrupted)."""
    client = mlflow.MlflowClient()
    note = client.get_run(run_id).data.tags.get(TAG_NOTE, "")
    lines = note.split("  \n")
    if lines and lines[-1].startswith("result: "):
        client.set_tag(run_id, TAG_NOTE, "  \n".join([*lines[:-1], f"result: {result}"]))


def _create_sqlite_store_once(uri: str) -> None:
    """Open the SQLite store with an exclusive lock held, so only one process creates its schema.

    MLflow creates the tables and runs its migrations on first use; two processes doing it at
    once on a new file fail (alembic: "expected to match one row when updating ... in
    'alembic_version'; 0 found"; tests/tracking/test_faults.py found it). The lock is a file
    beside the database; MLflow keeps the opened store for the process, so later calls reuse it.
    """
    import fcntl

    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not db.parent.is_dir():
        return  # MLflow reports the missing folder itself
    with open(db.with_name(db.name + ".rssc-init.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or by the OS if killed
        client = mlflow.MlflowClient(uri)
        client.search_experiments(max_results=1)  # the tracking tables
        client.search_registered_models(max_results=1)  # the registry's, if it is this file


def check_tracking_reachable(timeout_s: float = 10.0) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        _create_sqlite_store_once(uri)
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as exc:
        raise RsscError(
            f"The MLflow tracking server at {uri} does not answer ({type(exc).__name__}). Start "
            "it (`rssc server`), fix MLFLOW_TRACKING_URI, or unset it to use the local SQLite "
            "store. Nothing was trained."
        ) from None
    # /health needs no login; one cheap call that does, so a missing password fails here too.
    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except MlflowException as exc:
        status = exc.get_http_status_code()
        if status in (401, 403) or re.search(r"\b40[13]\b", str(exc)):
            raise RsscError(
                f"The MLflow tracking server at {uri} refused the request (not authenticated "
                "or not allowed). Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "(or MLFLOW_TRACKING_TOKEN) in the environment. Nothing was trained."
            ) from None
        raise


class TrackingServerGone(RsscError):
    """The tracking server stopped answering after training; the results are kept locally."""


INTERRUPTING_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _signals_raise_interrupted() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Interrupted` in the main thread until the block ends.

    Without this SIGTERM ends the process at once and leaves the run RUNNING. After the first
    signal both are ignored, so a second one cannot cut short the marking of the run.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum: int, frame: Any) -> None:
        for sig in INTERRUPTING_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    saved = {sig: signal.getsignal(sig) for sig in INTERRUPTING_SIGNALS}
    for sig in INTERRUPTING_SIGNALS:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def server_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) means the tracking server does not answer."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, ConnectionError)):
            return True
        text = str(seen)
        if isinstance(seen, MlflowException) and any(
                s in text for s in ("Max retries exceeded", "Connection refused",
                                    "Failed to establish a new connection")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def _no_http_retries() -> Iterator[None]:
    """MLflow's client without retries, for calls that are expected to fail fast."""
    saved = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = saved


@contextlib.contextmanager
def tracked_run(
    stage: str,
    source: str,
    target: str = "",
    *,
    resume_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start, attach to (`mlflow run` sets MLFLOW_RUN_ID) or resume a run; FAILED on error.

    Whatever is raised inside is recorded on the run (tag `rssc.error`) before the run is marked
    FAILED and the exception goes on, so no run is ever left RUNNING by an error, except when
    the server itself is gone (`TrackingServerGone`: the error says how to finish the run).
    SIGTERM or SIGINT inside marks the run KILLED with the signal as its `rssc.error` and raises
    `Interrupted`, which carries the run id and (training stages) the `--resume` command.
    """
    check_tracking_reachable()
    if resume_run_id:
        try:
            mlflow.MlflowClient().get_run(resume_run_id)
        except Exception:  # noqa: BLE001 - MLflow raises several types for a missing run
            raise RsscError(
                f"Cannot resume run {resume_run_id!r}: no such run in the tracking store at "
                f"{mlflow.get_tracking_uri()}. Check the run id (the UI shows it) and "
                "MLFLOW_TRACKING_URI."
            ) from None
        run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=True)
        previous = mlflow.MlflowClient().get_run(resume_run_id).data.tags.get(TAG_ERROR)
        if previous:  # kept for the record, but the run is no longer failing
            mlflow.set_tag("rssc.previous_error", previous)
            mlflow.MlflowClient().delete_tag(resume_run_id, TAG_ERROR)
    else:
        # Under `mlflow run` the run exists already (MLFLOW_RUN_ID), in the experiment that
        # `mlflow run` chose (`--experiment-name`, or `rssc` through rssc's MLflow plugin).
        attached = bool(os.environ.get("MLFLOW_RUN_ID"))
        name = ui_run_name(stage, source, target)
        run = mlflow.start_run(run_name=name,
                               experiment_id=None if attached else experiment_id(),
                               log_system_metrics=True)
        if attached:
            _mark_experiment_kind(mlflow.MlflowClient().get_experiment(run.info.experiment_id))
        if attached and run.info.experiment_id == DEFAULT_EXPERIMENT_ID:
            announce(f"note: this run is in MLflow's experiment 'Default', which `rssc "
                     f"summarize` does not read; pass `--experiment-name {experiment_name()}` "
                     "to `mlflow run`.")
        mlflow.set_tags({
            "mlflow.runName": name,
            TAG_STAGE: stage, TAG_SOURCE: source, TAG_TARGET: target,
            TAG_GIT_COMMIT: git_commit(), TAG_VERSION: __version__,
            **(tags or {}),
        })
    # Signal handlers stay ours until the run is marked, so a second signal cannot cut it short.
    with _signals_raise_interrupted():
        try:
            yield run
        except Interrupted as exc:
            exc.run_id = run.info.run_id
            if not exc.how_to_continue:
                exc.how_to_continue = (
                    f"Continue the same run with `rssc {stage} --resume {exc.run_id}`."
                    if stage in TRAINING_STAGES else "Run the same command again.")
            # One quick attempt each: a pre-empted node has seconds left, not minutes of retries.
            with _no_http_retries():
                with contextlib.suppress(Exception):
                    mlflow.set_tag(TAG_ERROR, f"Interrupted: {exc.signal.name} "
                                              f"(signal {int(exc.signal)}). {exc.how_to_continue}")
                with contextlib.suppress(Exception):
                    _note_result(exc.run_id, f"KILLED by {exc.signal.name}. "
                                             f"{exc.how_to_continue}")
                with contextlib.suppress(Exception):
                    mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise
        except TrackingServerGone:
            # The server is gone: the run stays RUNNING there until `--resume` finishes it (the
            # error says how). One quick attempt to end it, no minutes of retries.
            with _no_http_retries(), contextlib.suppress(Exception):
                mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            raise
        except BaseException as exc:
            message = str(exc) or type(exc).__name__
            with contextlib.suppress(Exception):
                mlflow.set_tag(TAG_ERROR, f"{type(exc).__name__}: {message}"[:5000])
            with contextlib.suppress(Exception):
                _note_result(run.info.run_id, f"FAILED: {type(exc).__name__}: {message}"[:2000])
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            raise
        else:
            mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


EFFECTIVE_PREFIX = "effective_"


def log_params(params: Mapping[str, Any]) -> None:
    """Log the effective parameters in one call.

    MLflow parameters cannot change. Under `mlflow run` the parameters the user passed are
    already logged as typed (`lr=1e-3`): a value equal to ours, also as a number, is left as
    it is; one that differs (a run logged before values were resolved) gets ours under
    `effective_<name>`. On resume, values already logged are left alone.
    """
    run = mlflow.active_run()
    existing = mlflow.MlflowClient().get_run(run.info.run_id).data.params if run else {}
    fresh = {}
    for key, value in params.items():
        if key not in existing:
            fresh[key] = value
        elif not _same_value(existing[key], str(value)) and EFFECTIVE_PREFIX + key not in existing:
            fresh[EFFECTIVE_PREFIX + key] = value
    if fresh:
        mlflow.log_params(fresh)


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def effective_params(params: Mapping[str, str]) -> dict[str, str]:
    """A run's parameters with `effective_<name>` values taking precedence."""
    out = dict(params)
    out.update({k[len(EFFECTIVE_PREFIX):]: v for k, v in params.items()
                if k.startswith(EFFECTIVE_PREFIX)})
    return out


def log_history(run_id: str, rows: list[Mapping[str, float]]) -> None:
    """Per-epoch values (epoch = position + 1) in one batched call instead of one per epoch."""
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, epoch)
             for epoch, row in enumerate(rows, start=1) for key, value in row.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=batch)


def log_dataset_input(name: str, path: Path, digest: str, context: str,
                      tags: Mapping[str, str] | None = None) -> None:
    """Record a dataset (or one split of it) as a run input, identified by its digest."""
    # Said to be local, not guessed: resolving a path warns that two registered sources match.
    source = get_dataset_source_from_json(json.dumps({"uri": str(path)}), source_type="local")
    mlflow.log_input(MetaDataset(source, name=name, digest=digest[:36]), context=context,
                     tags=dict(tags or {}))


def announce(message: str) -> None:
    """Console progress for long runs (typer echo without importing typer here)."""
    print(f"[rssc] {message}", flush=True)
