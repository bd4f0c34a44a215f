"""CI's skip check catches a skip it was not told of, and lets a listed one through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parents[1] / ".ci" / "check_skips.py"

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.data.test_catalog" name="test_ok" time="0.1"/>
<testcase classname="tests.data.test_catalog" name="test_real_labels" time="0.0">
<skipped type="pytest.skip" message="real MLRSNet label files not found">x</skipped>
</testcase></testsuite></testsuites>"""


def _check(tmp_path: Path, expected: str) -> subprocess.CompletedProcess:
    (tmp_path / "junit.xml").write_text(JUNIT)
    (tmp_path / "expected").write_text(expected)
    return subprocess.run([sys.executable, str(CHECK), str(tmp_path / "junit.xml"),
                           str(tmp_path / "expected")], capture_output=True, text=True)


def test_an_unexpected_skip_fails_ci(tmp_path: Path) -> None:
    done = _check(tmp_path, "# none expected\n")
    assert done.returncode == 1
    assert ("[ci] unexpected skip: tests/data/test_catalog.py::test_real_labels: real MLRSNet "
            "label files not found") in done.stderr


@pytest.mark.parametrize("line", ["tests/data/test_catalog.py::test_real_labels  # why",
                                  "tests/data/test_catalog.py::test_real_labels"])
def test_a_listed_skip_passes(tmp_path: Path, line: str) -> None:
    done = _check(tmp_path, line + "\n")
    assert done.returncode == 0 and "no unexpected skips" in done.stdout
