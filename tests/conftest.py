"""Every test gets its own data dir and tracking store: nothing leaks into the checkout."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("rssc-env")
    monkeypatch.setenv("RSSC_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("RSSC_IMAGENET_WEIGHTS", raising=False)
    monkeypatch.chdir(root)
    yield root


def pytest_collection_modifyitems(config, items):
    """Files with slow tests run first. With `-n 2 --dist loadfile` (make test), the long files
    then start at once and the quick ones fill the gaps, instead of two long files ending the
    run with a worker idle."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: order kept within each
