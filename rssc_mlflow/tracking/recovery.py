"""What lets an interrupted training run continue: the run lock, resume and unlogged results.

A training run (pretrain, adapt, finetune) keeps its per-epoch backups in a checkpoint folder
named after the run. These pieces make `rssc STAGE --resume RUN_ID` continue that run rather
than start another:

- `training_lock`: one process trains a run at a time (an OS lock, released even on kill -9);
  `can_resume` tells `reproduce` whether a run can be continued on this machine.
- `settings_for_resume`: the settings the run was started with, read back from its parameters,
  refused before any run is opened when the stage differs or another process trains it.
- `check_resume_replicas`: a resumed run keeps its replica count (its fingerprint depends on it).
- `already_logged_epochs`: the epochs whose metrics the store already holds, logged once only.
- `note_on_interrupt`: on SIGTERM/SIGINT, what the checkpoint holds and how to continue.
- `server_gone_during_training` / `results_kept_if_server_gone`: when the tracking server stops
  answering, the error says where the work is kept; after training, the model and its test
  predictions are written under the checkpoint folder (`keep_unlogged`) and `--resume` logs
  them (`load_unlogged`) without training again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np

from rssc_mlflow import config
from rssc_mlflow.errors import RsscError
from rssc_mlflow.settings import TRAINING_STAGES, RunSettings, resolve_settings
from rssc_mlflow.tracking import predictions, runs

REPLICAS_PARAM = "replicas"
# Results of a trained run the tracking server could not take, under its checkpoint folder.
UNLOGGED = "unlogged"


def how_to_resume(stage: str, run_id: str) -> str:
    return f"rssc {stage} --resume {run_id}"


# --- The run lock -------------------------------------------------------------------------------


class RunLocked(RsscError):
    """Another process on this machine is training the run."""


@contextlib.contextmanager
def training_lock(folder: Path, run_id: str) -> Iterator[None]:
    """Hold the run's checkpoint folder for this process (released by the OS on kill -9)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"Run {run_id} is being trained by another process on this machine "
                            f"(its checkpoint folder {folder} is locked). Wait for it to end, "
                            "or stop it, before resuming.") from None
        yield


def can_resume(run: mlflow.entities.Run) -> bool:
    """Whether an interrupted (RUNNING, FAILED or KILLED) training run can be continued here: its
    checkpoint folder is on this machine and no process is training it."""
    folder = run.data.tags.get(runs.TAG_CHECKPOINT_DIR)
    if run.data.tags.get(runs.TAG_STAGE) not in TRAINING_STAGES or not folder:
        return False
    if not Path(folder).is_dir():
        return False
    try:
        with training_lock(Path(folder), run.info.run_id):
            return True
    except RunLocked:
        return False


# --- Resuming -----------------------------------------------------------------------------------


def settings_from_run(run_id: str) -> tuple[str, RunSettings]:
    """Rebuild the settings a run was started with (for --resume)."""
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001
        raise RsscError(f"Cannot resume run {run_id!r}: it is not in the tracking store at "
                        f"{mlflow.get_tracking_uri()}.") from None
    p = runs.effective_params(run.data.params)
    # Runs logged before parameters were resolved hold "default" for values left to the rule.
    opt = lambda k: None if p.get(k, "default") == "default" else p[k]  # noqa: E731
    settings = resolve_settings(
        p["stage"], source=p["source"], target=p.get("target", ""), profile=p["profile"],
        epochs=int(p["epochs"]), batch_size=int(p["batch_size"]),
        image_size=int(p["image_size"]), seed=int(p["seed"]),
        lr=float(opt("lr")) if opt("lr") else None, preprocessing=opt("preprocessing"),
        precision=p["precision"], strategy=p.get("strategy", "auto"), split_file=opt("split_file"),
        solver=p.get("solver", "adam"), standardize=p.get("standardize", "").lower() == "true",
        allow_any_version=p.get("allow_any_version", "").lower() == "true",
        schedule_steps=p.get("schedule_steps", "paper"),
    )
    return settings.stage, settings


def settings_for_resume(stage: str, run_id: str) -> RunSettings:
    """The settings of run `run_id`, which `rssc STAGE --resume` continues; refused (before any
    run is opened) when it is another stage's run or another process trains it."""
    stage_of_run, settings = settings_from_run(run_id)
    if stage_of_run != stage:
        raise RsscError(f"Run {run_id} is a {stage_of_run} run; resume it with "
                        f"`{how_to_resume(stage_of_run, run_id)}`.")
    # Before the run is opened: a refused resume must not mark FAILED the run that another
    # process is training (tests/tracking/test_recovery.py found it did).
    folder = config.checkpoint_dir() / run_id
    if folder.is_dir():
        with training_lock(folder, run_id):
            pass
    return settings


def logged_replicas(run_id: str) -> int | None:
    """The replica count a run logged (None: logged before runs recorded it)."""
    value = mlflow.MlflowClient().get_run(run_id).data.params.get(REPLICAS_PARAM)
    return int(value) if value else None


def check_resume_replicas(resume: str | None, replicas: int) -> None:
    """A resumed run continues on as many replicas as it started with: its fingerprint (and
    its BatchNorm statistics) depend on it."""
    logged = logged_replicas(resume) if resume else None
    if logged is not None and logged != replicas:
        raise RsscError(
            f"Run {resume} trained on {logged} replica(s), but this process sees {replicas}. "
            f"Received: replicas={replicas}. Resume it where TensorFlow sees {logged} GPU(s) "
            f"(set CUDA_VISIBLE_DEVICES), so that it stays in its cell.")


def already_logged_epochs(run_id: str) -> set[int]:
    """The epochs whose metrics the store holds: a resumed run does not log them again."""
    history = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    return {m.step for m in history}


# --- Interruptions ------------------------------------------------------------------------------


def epochs_backed_up(checkpoint_dir: Path) -> int | None:
    """Epochs completed in the run's last backup (Keras BackupAndRestore's metadata), or None."""
    try:
        return int(json.loads((checkpoint_dir / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def note_on_interrupt(stage: str, run_id: str, checkpoint_dir: Path, epochs: int,
                      *, kept: bool) -> Iterator[None]:
    """On SIGTERM/SIGINT, tell what the checkpoint holds and how to continue the run."""
    try:
        yield
    except runs.Interrupted as exc:
        done = epochs_backed_up(checkpoint_dir) if kept else None
        if done:
            state = (f"Its checkpoint ({done} of {epochs} epochs done) is kept in "
                     f"{checkpoint_dir}. ")
        elif kept:
            state = "No epoch had finished, so it starts again from epoch 1. "
        else:
            state = "This profile keeps no per-epoch checkpoint, so it starts again from epoch 1. "
        exc.how_to_continue = (f"{state}Continue the same run with "
                               f"`{how_to_resume(stage, run_id)}`.")
        raise


# --- The tracking server going away -------------------------------------------------------------


@contextlib.contextmanager
def server_gone_during_training(stage: str, run_id: str, checkpoint_dir: Path,
                                *, backups: bool) -> Iterator[None]:
    """A tracking server that stops answering during training: say where the last epoch
    backup is and how to continue; any other error goes through unchanged."""
    try:
        yield
    except Exception as exc:
        if not runs.server_unreachable(exc):
            raise
        backup = ("its last epoch backup is in " + str(checkpoint_dir) if backups
                  else "this profile keeps no backups")
        raise runs.TrackingServerGone(
            f"The tracking server at {mlflow.get_tracking_uri()} stopped answering "
            f"during training of run {run_id}; {backup}. When the server is back, "
            f"`{how_to_resume(stage, run_id)}` continues the run.") from exc


@contextlib.contextmanager
def results_kept_if_server_gone(stage: str, run_id: str, folder: Path,
                                keep: Callable[[Path], None]) -> Iterator[None]:
    """A tracking server that stops answering while a trained run's results are logged: `keep`
    writes them under `folder` and the error says so; any other error goes through unchanged."""
    try:
        yield
    except Exception as exc:
        if not runs.server_unreachable(exc):
            raise
        keep(folder)
        raise runs.TrackingServerGone(
            f"The tracking server at {mlflow.get_tracking_uri()} stopped answering at the "
            f"end of run {run_id}. Nothing is lost: the trained model and its test "
            f"predictions are kept in {folder}. When the server is back, "
            f"`{how_to_resume(stage, run_id)}` logs them (no retraining) and finishes the "
            "run.") from exc


def has_unlogged(folder: Path) -> bool:
    """Whether `folder` holds a complete set of results `keep_unlogged` wrote."""
    return (folder / "complete").exists()


def keep_unlogged(folder: Path, model, probs: np.ndarray, y_true: np.ndarray, files: np.ndarray,
                  *, split_digest: str, dataset_digest: str) -> None:
    """Write the model's weights and test predictions (the artifact's own file, so `--resume`
    logs exactly what would have been logged); `complete` is written last."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "complete").unlink(missing_ok=True)
    model.save_weights(folder / "model.weights.h5")
    predictions.write_artifact(folder, probs, y_true, files, split_digest=split_digest,
                               dataset_digest=dataset_digest)
    (folder / "complete").write_text("model.weights.h5 predictions.npz\n")


def load_unlogged(folder: Path, model, run_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load what `keep_unlogged` wrote: the weights into `model`; (probs, y_true, files)."""
    runs.announce(f"run {run_id} finished training before the tracking server went "
                  f"away: logging the results kept in {folder}")
    model.load_weights(folder / "model.weights.h5")
    saved = predictions.read(folder / "predictions.npz", run_id)
    return saved.probs, saved.y_true, saved.files
