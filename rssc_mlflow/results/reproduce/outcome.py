"""What every backend shares: running one cell, recording how it ended, and the result file
through which a child process reports to its parent (never its console output).

The child (`rssc STAGE ...`, rssc_mlflow/cli.py) writes its outcome as JSON to the file named
by `RESULT_FILE_ENV` when that is set, atomically (a complete file or none). The parent reads
it after the child has exited: no file means the child died before it could report (killed,
out of memory, a crash of the interpreter), which fails the run with that reason.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rssc_mlflow.files import atomic_write_text
from rssc_mlflow.results.reproduce.planning import PlannedRun

Progress = Callable[[str], None]
Say = Callable[[PlannedRun, str], None]  # a line about one run of the plan
LOG_DIR = Path("rssc_outputs") / "reproduce" / "logs"  # logs and results of child processes
RESULT_FILE_ENV = "RSSC_RESULT_FILE"


def run_stage(stage: str, source: str, target: str, profile: str, seed: int,
              log_model_finetune: bool, resume: str = ""):
    """One grid cell through `commands` (what `rssc STAGE ...` runs), in this process;
    `resume`: the id of an interrupted run of it to continue."""
    from rssc_mlflow import commands

    params: dict[str, Any] = {"profile": profile, "seed": seed}
    if resume:
        params["resume"] = resume
    if stage == "pretrain":
        return commands.pretrain(source, **params)
    if stage == "adapt":
        return commands.adapt(source, **params)
    if stage == "finetune":
        return commands.finetune(source, target, log_model=log_model_finetune, **params)
    return commands.probe(source, target, **params)


def ran(run: PlannedRun, run_id: str, metrics: dict[str, float], seconds: float) -> None:
    run.status, run.run_id, run.metrics, run.seconds = "ran", run_id, dict(metrics), seconds


def failed(run: PlannedRun, reason: str, seconds: float) -> None:
    run.status, run.reason, run.seconds = "failed", reason, seconds


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("test_"))


def describe(run: PlannedRun) -> str:
    """The progress line's end for a run that has ended."""
    if run.status == "ran":
        metrics = format_metrics(run.metrics)
        return f"... {run.seconds:.1f} s{', ' + metrics if metrics else ''} (run {run.run_id})"
    return f"... FAILED after {run.seconds:.1f} s: {run.reason[:500]}"


def release_memory() -> None:
    """Free the previous run's graphs: a long in-process sequence would otherwise keep them."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


# --- The result file of a child process ---------------------------------------------------------


def report_to_parent(outcome: dict[str, Any]) -> None:
    """In a child: write `outcome` to the parent's result file, if the parent asked for one.

    `outcome` is {"status": "ran", "run_id", "metrics"} or {"status": "failed", "reason"}.
    Written atomically (`files.atomic_write_text`): the parent never reads half a file.
    """
    path = os.environ.get(RESULT_FILE_ENV)
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(outcome))


def read_result(path: Path) -> dict[str, Any] | None:
    """The outcome a child wrote to `path`, or None when it wrote none (or not one we can use)."""
    try:
        outcome = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(outcome, dict) and (
        (outcome.get("status") == "ran" and isinstance(outcome.get("run_id"), str)
         and isinstance(outcome.get("metrics", {}), dict))
        or (outcome.get("status") == "failed" and isinstance(outcome.get("reason"), str)))
    return outcome if ok else None


def exit_description(returncode: int) -> str:
    """'exit status 1', or 'killed by SIGKILL' for a child a signal ended."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def apply_child_result(run: PlannedRun, result: dict[str, Any] | None, returncode: int,
                       log: Path, started: float) -> None:
    """Record how a child process's run ended: from its result file, and its exit status."""
    seconds = time.monotonic() - started
    if result is not None and result["status"] == "ran" and returncode == 0:
        ran(run, result["run_id"], {k: float(v) for k, v in result.get("metrics", {}).items()},
            seconds)
    elif result is not None and result["status"] == "failed":
        failed(run, f"{result['reason']} ({exit_description(returncode)}, log {log})", seconds)
    elif result is not None:  # reported its run, then failed while exiting
        failed(run, f"{exit_description(returncode)} after run {result['run_id']} ended "
                    f"(log {log})", seconds)
    else:  # the log's last lines only to show the user why, e.g. a traceback's end
        text = log.read_text(errors="replace") if log.exists() else ""
        tail = " | ".join(text.strip().splitlines()[-3:])
        failed(run, f"{exit_description(returncode)} without reporting a result (log {log})"
                    + (f": {tail}" if tail else ""), seconds)
