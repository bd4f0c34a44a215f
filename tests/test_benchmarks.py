"""The benchmark suite runs end to end and prints every row with numbers (not its figures).

`python -m benchmarks --smoke` is the whole suite at tiny sizes, with a one-conv network in
place of ResNet-50 and every measurement in one process: about 40 s on a busy 2-core machine.
The child-process protocol of real runs is checked on its cheapest child.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks import Options, child, write_tree

ROOT = Path(__file__).resolve().parent.parent
ROWS = (
    "input pipeline, jpeg256", "input pipeline, tiff256", "input pipeline, jpeg600",
    "training fit, pipeline vs in-memory", "training fit, mixed_", "feature extraction",
    "linear probe time", "linear probe test accuracy", "tracking overhead", "prepare vs",
    "memory, peak RSS", "summarize over 20 runs",
)


def test_smoke_run_prints_every_comparison_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "perf"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    names = [r["comparison"] for r in rows]
    assert len(rows) == len(ROWS)
    for prefix, name in zip(ROWS, names):
        assert name.startswith(prefix), names
    for row in rows:
        assert all(math.isfinite(row[k]) for k in ("ours", "baseline", "ratio")), row
        assert row["target"] and row["raw"], row
    table = (out / "results.md").read_text()
    assert "SMOKE RUN" in table
    assert all(f"| {name} |" in table and f"| {name} |" in proc.stdout for name in names)


def test_a_measurement_runs_in_a_child_process(tmp_path: Path) -> None:
    manual = write_tree("resisc45", tmp_path / "src", 45, 32)
    opts = Options(work=tmp_path, images=45, crop=32, epochs=1, train_crop=32, train_images=8,
                   batch=8, probe_rows=45, probe_epochs=1, prepare_images=45, memory_images=8,
                   runs=1, extract_images=8)
    result = child(opts, "prepare", "baseline", manual_dir=str(manual))
    assert result["images"] == 45 and result["seconds"] > 0
    # A figure is reported (its size depends on what the child imports: 0.3-1.2 GB seen).
    assert 0 < result["peak_rss_mb"] < 16_000
    assert (tmp_path / "logs" / "prepare.baseline.log").is_file()


def test_gpu_check_script_runs_the_real_pipeline_and_fit_on_a_cpu() -> None:
    """benchmarks/gpu_check.sh at toy sizes, pipeline and float32 fit (the XLA configurations
    only differ by a flag and take minutes to compile on a CPU): every row has a rate."""
    import os

    env = {**os.environ, "PYTHON": sys.executable, "IMAGES": "16", "EPOCHS": "1", "CROP": "32",
           "BATCH": "8", "LIMIT": "240", "CONFIGS": "pipeline float32"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert "FAILED" not in proc.stdout, proc.stdout + proc.stderr[-3000:]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in lines[1:]}
    assert set(rows) == {"synthetic data + prepare (s)", "input pipeline ceiling (CPUs)",
                         "fit, float32, no XLA"}, lines
    assert all(float(rate.replace(",", "")) > 0 for rate in rows.values()), rows


def test_gpu_keras_preprocessing_and_model_are_those_runs_train() -> None:
    """benchmarks/gpu_keras.py (Keras alone, any backend) preprocesses as `models.Preprocess`
    does and builds the runs' ResNet-50 shape: uint8 in, 45 float32 probabilities out."""
    import keras
    import numpy as np

    from benchmarks import gpu_keras
    from rssc_mlflow.data import pipeline

    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    ours = keras.ops.convert_to_numpy(gpu_keras.CaffePreprocess()(images))
    np.testing.assert_allclose(ours, pipeline.preprocess(images, "imagenet-caffe").numpy(),
                               rtol=0, atol=1e-5)
    model = gpu_keras.build_model(32, 45)
    assert model.inputs[0].dtype == "uint8"
    assert model.get_layer("resnet50").count_params() == 23_587_712  # ResNet-50 notop
    probabilities = keras.ops.convert_to_numpy(model(images.repeat(4, 1).repeat(4, 2)))
    assert probabilities.shape == (2, 45) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_gpu_keras_reports_every_precision_with_a_rate(monkeypatch, capsys, request) -> None:
    """The measuring loop, JSON lines and table, on a one-conv model (ResNet-50 takes a minute
    to XLA-compile on a CPU); a precision that fails is reported and makes the exit code 1."""
    import keras

    from benchmarks import gpu_keras

    request.addfinalizer(lambda: keras.mixed_precision.set_global_policy("float32"))

    def tiny(crop: int, classes: int) -> keras.Model:
        inputs = keras.Input((crop, crop, 3), dtype="uint8")
        x = keras.layers.Conv2D(4, 3)(gpu_keras.CaffePreprocess()(inputs))
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(classes, "softmax", dtype="float32")(x))

    monkeypatch.setattr(gpu_keras, "build_model", tiny)
    code = gpu_keras.main(["--images", "16", "--crop", "16", "--batch", "4", "--epochs", "1",
                           "--configs", "float32", "mixed_bfloat16"])
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"config"')]
    assert code == 0, out
    assert [r["policy"] for r in rows] == ["float32", "mixed_bfloat16"]
    assert all(r["fit_images_per_s"] > 0 and r["steps_per_epoch"] == 4 for r in rows), rows
    assert "| float32 | " in out and "| mixed_bfloat16 | " in out

    def broken(crop: int, classes: int) -> keras.Model:
        raise RuntimeError("out of memory on the card")

    monkeypatch.setattr(gpu_keras, "build_model", broken)
    assert gpu_keras.main(["--images", "8", "--crop", "16", "--batch", "4", "--epochs", "1",
                           "--configs", "float32"]) == 1
    assert "| float32 | FAILED | RuntimeError: out of memory on the card |" in capsys.readouterr().out
