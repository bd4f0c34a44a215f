"""Quiet by default: rssc prints its own lines and Keras's progress, nothing else.

A real smoke `rssc finetune` is checked in test_recovery.py (the run that `--resume` finishes,
whose console must hold only `ALLOWED` lines). Here the check itself is shown to catch the
noise: with RSSC_VERBOSE=1 TensorFlow's start-up and the uint8 transpose of the augmentation
print the notices that are filtered out by default.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

# What the package prints, and Keras's per-epoch progress (verbose=2).
ALLOWED = re.compile(r"\[rssc\] .*|Epoch \d+/\d+|\d+/\d+ - \d+s - .*|"
                     r"SYNTHETIC DATA: not comparable to the paper\.|"
                     r"run [0-9a-f]{32} FINISHED .*|registered models:/.*")
NOISE = re.compile(r"oneDNN|absl|I0000|W0000|E0000|cpu_feature_guard|Warning|WARNING|INFO")


def clean_env(env: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`env` (default: this process's) without anything that changes how quiet rssc is: the
    test process itself set some of these when it imported rssc_mlflow.cli."""
    kept = {k: v for k, v in (os.environ if env is None else env).items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "RSSC_VERBOSE", "MLFLOW_LOGGING_LEVEL",
                         "PYTHONWARNINGS")}
    return {**kept, **extra}


# TensorFlow's import and the uint8 transpose of the training augmentation (oneDNN's E0000).
START_UP = textwrap.dedent("""
    import rssc_mlflow.cli  # what every entry point imports first
    import numpy as np
    import tensorflow as tf
    images = tf.data.Dataset.from_tensor_slices(np.zeros((2, 8, 8, 3), np.uint8))
    list(images.map(lambda x: tf.transpose(x, [1, 0, 2])))
    import mlflow
    print("done")
""")


@pytest.mark.parametrize("verbose", [False, True])
def test_the_notices_are_there_unless_quieted(verbose, tmp_path):
    env = clean_env(**({"RSSC_VERBOSE": "1"} if verbose else {}))
    done = subprocess.run([sys.executable, "-c", START_UP], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-3000:]
    noise = [line for line in done.stderr.splitlines() if NOISE.search(line)]
    if verbose:
        # TensorFlow prints its CPU-feature notice everywhere; the oneDNN ones only where it
        # turns oneDNN on by default (not on CPUs without AVX-512, e.g. some AMD EPYC).
        assert any("cpu_feature_guard" in line for line in noise), done.stderr
        if any("oneDNN custom operations are on" in line for line in noise):
            assert any("oneDNN supports DT_UINT8" in line for line in noise), done.stderr
    else:
        assert noise == [] and done.stderr.strip() == ""
