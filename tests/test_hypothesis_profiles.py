"""The Hypothesis profile follows CI / HYPOTHESIS_PROFILE (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import tests.conftest; from hypothesis import settings; "
         "print(settings.default.derandomize, settings.default.database is None)")


def _profile(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_ci_is_derandomized_and_random_profile_is_not() -> None:
    assert _profile(CI="true") == "True True"  # derandomize: no example database
    assert _profile(HYPOTHESIS_PROFILE="random") == "False True"
    assert _profile() == "False False"
