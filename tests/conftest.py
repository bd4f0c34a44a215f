"""Every test gets its own data dir and tracking store: nothing leaks into the checkout."""

from __future__ import annotations

import os

import mlflow.tracking.fluent
import pytest
from hypothesis import settings

# CI replays the same examples every run (a red build is never a dice roll); locally the default
# profile keeps Hypothesis's database-backed search, and HYPOTHESIS_PROFILE=random draws afresh.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("random", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("rssc-env")
    monkeypatch.setenv("RSSC_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("RSSC_IMAGENET_WEIGHTS", raising=False)
    # `mlflow.set_experiment` remembers the experiment id in the process (a global and
    # MLFLOW_EXPERIMENT_ID), not the store: a later test's `start_run()` in another store then asks
    # for an id that store lacks. MLflow has no public way to forget the global; raising=True
    # makes an upgrade that renames it fail here, loudly.
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None, raising=True)
    monkeypatch.chdir(root)
    yield root


def pytest_collection_modifyitems(config, items):
    """Files with slow tests run first. With `-n 2 --dist loadfile` (make test), the long files
    then start at once and the quick ones fill the gaps, instead of two long files ending the
    run with a worker idle."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: order kept within each
