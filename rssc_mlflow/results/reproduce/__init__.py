"""`reproduce`: plan, then run (resumably) every MLflow run that the paper's tables and figures need.

The CLI is `rssc reproduce` (rssc_mlflow/cli.py). The parts, each in its module:
  planning    the runs from the paper's layouts and the datasets' sizes (no MLflow, no
              TensorFlow): `plan`, `PlannedRun`, `ReproduceReport`
  store       what the tracking store already holds: FINISHED and interrupted runs
  runner      `reproduce` and `run_planned`: waves, skipping, resuming, blocking
  local       the local backend: in this process, or one `rssc STAGE` child per run
  workers     the local backend with `--reuse-models`: long-lived worker processes
  kubernetes  the kubernetes backend (MLflow Projects) and its configuration checks
  outcome     what the backends share, and the result file a child reports through

The names below are importable from this package as before the split; they are loaded when
first used, so that importing the plan does not import MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> (module, name there).
_EXPORTS: dict[str, tuple[str, str]] = {
    **{name: ("planning", name) for name in (
        "SELECTIONS", "PlannedRun", "ReproduceReport", "RunKey", "Status",
        "plan", "planned_run", "selected_layouts", "split_list", "upstream_of")},
    **{name: ("store", name) for name in (
        "finished_runs", "interrupted_runs", "find_done", "find_interrupted")},
    **{name: ("outcome", name) for name in ("LOG_DIR", "Progress", "RESULT_FILE_ENV")},
    **{name: ("runner", name) for name in (
        "Backend", "reproduce", "run_planned", "gpu_slots", "expected_replicas")},
    **{name: ("kubernetes", name) for name in (
        "DEFAULT_BACKEND_CONFIG", "KUBERNETES_PROJECT", "PROJECT_ROOT", "load_backend_config")},
    # The backends under their names from before the split (tests and callers use them).
    "_Local": ("local", "Local"),
    "_Workers": ("workers", "Workers"),
    "_Kubernetes": ("kubernetes", "Kubernetes"),
}

__all__ = [name for name in _EXPORTS if not name.startswith("_")]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value  # later look-ups (and monkeypatching) see a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
