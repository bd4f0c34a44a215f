"""The real MLRSNet label files (46 CSVs, 15 MB), from a copy in the repository.

`fixtures/mlrsnet_labels.tar.xz` (~320 KB) is the `labels/` folder of the MLRSNet release as
the project received it, so the tests that compare the catalog and the synthetic trees with the
real files run on every clone. It is unpacked once per test process into a temporary folder.
"""

from __future__ import annotations

import atexit
import shutil
import tarfile
import tempfile
from functools import cache
from pathlib import Path

ARCHIVE = Path(__file__).parent / "fixtures" / "mlrsnet_labels.tar.xz"
CATEGORIES = 46


@cache
def real_labels_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="rssc-mlrsnet-labels-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        tar.extractall(root, filter="data")  # refuses absolute paths and links out of root
    labels = root / "labels"
    found = len(list(labels.glob("*.csv")))
    if found != CATEGORIES:
        raise RuntimeError(f"{ARCHIVE} holds {found} label files, not {CATEGORIES}")
    return labels
