"""Settings read from the environment: defaults, values, and a clear error for bad ones."""

from __future__ import annotations

import pytest

from rssc_mlflow import config
from rssc_mlflow.errors import RsscError


@pytest.mark.parametrize(("variable", "read", "default"), [
    ("RSSC_PREPARE_MEMORY_MB", config.prepare_memory_mb, 1000),
    ("RSSC_CACHE_MEMORY_MB", config.cache_memory_mb, 2048),
])
def test_megabyte_settings(monkeypatch: pytest.MonkeyPatch, variable, read, default) -> None:
    monkeypatch.delenv(variable, raising=False)
    assert read() == default
    monkeypatch.setenv(variable, " 64 ")
    assert read() == 64
    monkeypatch.setenv(variable, "0")
    assert read() == 0
    for bad in ("1.5GB", "-1", "lots"):
        monkeypatch.setenv(variable, bad)
        with pytest.raises(RsscError, match=f"{variable} must be a whole number of megabytes"
                                            f".*got '{bad}'"):
            read()
