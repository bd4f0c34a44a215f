"""Quiet by default: the console shows rssc's own lines and Keras's progress, not the notices
TensorFlow, absl, oneDNN and MLflow print around them.

`install()` runs first thing in `rssc_mlflow.cli` (the `rssc` command, the MLproject entry points,
`python -m rssc_mlflow.cli`), before TensorFlow is imported. It does nothing when
`RSSC_VERBOSE=1`, or when the user set `TF_CPP_MIN_LOG_LEVEL` themselves. Otherwise:

- `TF_CPP_MIN_LOG_LEVEL=3`: TensorFlow's C++ INFO, WARNING and ERROR notices, among them oneDNN's
  `E0000 ... oneDNN supports DT_UINT8 only on platforms with AVX-512` (a uint8 transpose falling
  back to Eigen, with the same result). Failures still raise Python exceptions with their text.
- While `tensorflow` is imported, what it writes to stderr (fd 2) is held back, and only the lines
  that are not its start-up notices are written out: absl's "All log messages before
  absl::InitializeLog()" and the two "oneDNN custom operations are on" lines are printed before
  TF_CPP_MIN_LOG_LEVEL is read.
- The Python loggers of TensorFlow and absl show errors only; MLflow's (`MLFLOW_LOGGING_LEVEL`,
  unless set) warnings and errors, not its INFO lines about system metrics and the store.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

VERBOSE_ENV = "RSSC_VERBOSE"

# Start-up notices of TensorFlow's import (they say nothing about a run).
_IMPORT_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called|oneDNN custom operations are on"
    r"|cpu_feature_guard|^To enable the following instructions|TF-TRT Warning"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered"
    r"|This TensorFlow binary is optimized")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def install() -> None:
    """Quiet TensorFlow, absl, oneDNN and MLflow for this process (see the module docstring)."""
    if verbose() or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    for name, level in (("tensorflow", logging.ERROR), ("absl", logging.ERROR),
                        ("mlflow", logging.WARNING)):
        logging.getLogger(name).setLevel(level)
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


@contextlib.contextmanager
def _stderr_without_import_notices() -> Iterator[None]:
    """Hold back what is written to fd 2 (C++ and Python alike); write out all but the notices."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines() if not _IMPORT_NOTICES.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first `import tensorflow` so its notices are filtered out."""

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: find the real spec with the other finders
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, inner: Any):
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with _stderr_without_import_notices():
            self._inner.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._inner, name)
