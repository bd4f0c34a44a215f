"""Benchmarks of rssc_mlflow against baselines: `python -m benchmarks` (see docs/PERFORMANCE.md).

Each comparison is one module with `run(opts) -> list[Row]`, executed by the runner
(`__main__.py`). A module measures in child processes (`child`), so the peak RSS and the
TensorFlow state (dtype policy, traced functions, caches) of one measurement never leak into
another; a child is `python -m benchmarks.<module> FUNCTION JSON_KWARGS OUT_JSON`. What is
shared lives here: the options, a result row, the child protocol, peak RSS, an epoch clock, the
data and model of the ResNet-50 comparisons, and the synthetic image trees.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREPROCESSING = "imagenet-rgb"  # the authors' input preprocessing; any mode costs the same
SUITE_KEY = "resisc45"  # 45 classes, 256-px JPEG: the dataset of the model comparisons
SMOKE_ENV = "RSSC_BENCH_SMOKE"


@dataclasses.dataclass(frozen=True)
class Options:
    """Sizes of one run of the suite (the runner's command-line options)."""

    work: Path  # temporary folder: data, caches, stores, logs
    images: int  # images per pipeline source (and the data of the model comparisons)
    crop: int  # input-pipeline crop; sources are crop px (600/256 * crop for the AID-like one)
    epochs: int  # timed epochs after the first (which traces and fills the cache)
    train_crop: int  # crop of every ResNet-50 comparison
    train_images: int  # images per training epoch
    batch: int
    probe_rows: int  # training rows of the linear probe (plus a quarter of that to test)
    probe_epochs: int  # of the Adam probe: 100 (the authors'), fewer only in smoke runs
    prepare_images: int  # the larger prepare tree (a quarter-size one shows RSS flatness)
    memory_images: int  # images of the memory comparison's own dataset (cache > budget)
    runs: int  # runs in the store for summarize
    extract_images: int  # images of feature extraction (and the probe's real features)
    smoke: bool = False  # one-conv net for ResNet-50, children inline: tests, measures nothing

    def env(self) -> dict[str, str]:
        """Environment of every child: data, caches and tracking inside the work folder."""
        env = dict(os.environ)
        env.update({
            "RSSC_DATA_DIR": str(self.work / "data"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.work / 'mlflow.db'}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONWARNINGS": "ignore",
            SMOKE_ENV: "1" if self.smoke else "",
        })
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
                    "RSSC_CACHE_DIR", "RSSC_CACHE_MEMORY_MB"):
            env.pop(var, None)
        return env


@dataclasses.dataclass
class Row:
    """One line of the table: `ratio` is what `target` is about, `met` None means report-only."""

    comparison: str
    ours: float
    baseline: float
    unit: str  # of `ours` and `baseline`
    ratio: float
    target: str
    met: bool | None
    raw: str = ""


# --- Children ---------------------------------------------------------------------------------


def child(opts: Options, module: str, function: str, env: dict[str, str] | None = None,
          **kwargs: Any) -> dict[str, Any]:
    """Run `benchmarks.<module>.<function>(**kwargs)` in a fresh Python; return its dict.

    The child's output goes to `<work>/logs/<module>.<function>.log`; a failure raises with
    its last lines. In a smoke run the function runs in this process instead (`_inline`).
    """
    t0 = time.perf_counter()
    if opts.smoke:
        result = _inline(opts, module, function, env or {}, kwargs)
    else:
        logs = opts.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = logs / f"{module}.{function}.{time.monotonic_ns()}.json"
        log = logs / f"{module}.{function}.log"
        with open(log, "a") as stream:
            proc = subprocess.run(
                [sys.executable, "-m", f"benchmarks.{module}", function, json.dumps(kwargs),
                 str(out)],
                env={**opts.env(), **(env or {})}, stdout=stream, stderr=subprocess.STDOUT,
                cwd=opts.work)
        if proc.returncode != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
            raise RuntimeError(f"benchmarks.{module}.{function} failed ({proc.returncode}):\n"
                               f"{tail}")
        result = json.loads(out.read_text())
    print(f"[bench]   {module}.{function}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def _inline(opts: Options, module: str, function: str, env: dict[str, str],
            kwargs: dict[str, Any]) -> dict[str, Any]:
    """`child` without the process: one TensorFlow start-up for a whole smoke run.

    The child's environment is applied for the call and restored after it, the dtype policy is
    reset, and arguments and result go through JSON as they would between processes. Peak RSS
    and timings are then those of a shared process: meaningless, as a smoke run's are anyway.
    """
    saved = dict(os.environ)
    os.environ.update({**opts.env(), **env})
    try:
        fn = getattr(importlib.import_module(f"benchmarks.{module}"), function)
        result = fn(**json.loads(json.dumps(kwargs)))
        result.setdefault("peak_rss_mb", peak_rss_mb())
        return json.loads(json.dumps(result))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if "keras" in sys.modules:
            sys.modules["keras"].mixed_precision.set_global_policy("float32")


def child_main() -> None:
    """`python -m benchmarks.<module> FUNCTION JSON_KWARGS OUT`: the child side of `child`."""
    name, kwargs, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    result = getattr(sys.modules["__main__"], name)(**kwargs)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    out.write_text(json.dumps(result))


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class EpochClock:
    """`tick(epoch, logs)` at each epoch end (an rssc `log_epoch`); rate over all but the first."""

    def __init__(self) -> None:
        self.times: list[float] = [time.perf_counter()]

    def tick(self, epoch: int = 0, values: Any = None) -> None:
        self.times.append(time.perf_counter())

    def rate(self, images_per_epoch: int) -> float:
        """Images/s from the end of epoch 1 (tracing, cache filling) to the end of the last."""
        if len(self.times) < 3:
            raise ValueError("need at least two epochs")
        return images_per_epoch * (len(self.times) - 2) / (self.times[-1] - self.times[1])


def iterate_epochs(ds: Any, epochs: int, batches_per_epoch: int | None = None) -> EpochClock:
    """Read 1 + `epochs` epochs of `ds`, every element materialised, timing each epoch.

    Without `batches_per_epoch`, `ds` is one epoch, read 1 + `epochs` times; with it, `ds` holds
    all the epochs in a row (our training pipeline) and a tick comes every that many batches.
    """
    clock = EpochClock()
    if batches_per_epoch is None:
        for _ in range(1 + epochs):
            for _batch in ds:
                pass
            clock.tick()
        return clock
    for i, _batch in enumerate(ds, start=1):
        if i % batches_per_epoch == 0:
            clock.tick()
    return clock


# --- The data and model of the ResNet-50 comparisons (in children) ------------------------------


def suite_examples(images: int) -> tuple[Any, int, int]:
    """(examples of the first `images` prepared SUITE_KEY images, their count, classes)."""
    from rssc_mlflow.data import prepare

    prepared = prepare.load_prepared(SUITE_KEY)
    n = min(images, len(prepared.records))
    return prepared.examples().take(n), n, prepared.spec.num_classes


def train_dataset(examples: Any, n: int, crop: int, batch: int, **kwargs: Any) -> Any:
    """Our training pipeline (augmented, cached, uint8 batches) over `examples`, as `commands`
    gives it to `fit`: the model preprocesses (`new_model`)."""
    import functools

    from rssc_mlflow.data import pipeline

    return functools.partial(pipeline.make_dataset, examples, training=True, crop=crop,
                             batch_size=batch, preprocessing=None, num_examples=n, **kwargs)


def in_memory(examples: Any, n: int, crop: int) -> tuple[Any, Any]:
    """The same images as uint8 tensors [n, crop, crop, 3] (central crops) and labels: what
    `new_model`'s models take, so both sides run the same traced step."""
    import tensorflow as tf

    from rssc_mlflow.data import pipeline

    ds = pipeline.make_dataset(examples, training=False, crop=crop, batch_size=64,
                               preprocessing=None, num_examples=n, cache="none")
    xs, ys = zip(*[(x, y) for x, y in ds])
    return tf.concat(xs, 0), tf.concat(ys, 0)


def new_model(classes: int, crop: int, n: int, batch: int, epochs: int,
              small: bool = False) -> tuple[Any, Any]:
    """A compiled ResNet-50 classifier (random init) for uint8 input, as `commands` trains it
    (`models.with_preprocessing`; `models.unwrap` gives the classifier), and its schedule.

    `small` (and every model of a smoke run) is a one-conv network with the same input,
    "avg_pool" and "predictions" layers instead: cheap, for what does not measure the model.
    """
    from rssc_mlflow import models
    from rssc_mlflow.training import fit

    if small or os.environ.get(SMOKE_ENV):
        import keras

        inputs = keras.Input((crop, crop, 3), name="image")
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name=models.POOL_NAME)(x)
        outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32",
                                     name=models.HEAD_NAME)(x)
        model = keras.Model(inputs, outputs, name="smoke")
    else:
        model = models.build_classifier(classes, "single", crop=crop)
    model = models.with_preprocessing(model, PREPROCESSING)
    fit.compile_model(model, task="single")
    schedule = fit.make_schedule(peak_lr=3e-4, steps_per_epoch=-(-n // batch), epochs=epochs,
                                 warmup_epochs=0)
    return model, schedule


# --- Synthetic image trees --------------------------------------------------------------------


def write_tree(key: str, out: Path, images: int, crop: int, seeds_per_class: int = 2) -> Path:
    """A synthetic tree of `key` in its official layout with about `images` images of `crop`
    px (AID's: 600/256 of that, as `write_synthetic` makes them).

    `rssc_mlflow.data.synth` renders `seeds_per_class` images per class (slow at 600 px); the
    rest are cheap variants of them (roll, flips, rot90, +-6 noise), saved in the seed's format
    (JPEG quality 90, or uncompressed TIFF), so every file decodes to different pixels.
    Returns the manual dir to pass to `prepare`.
    """
    import numpy as np
    from PIL import Image

    from rssc_mlflow.data import catalog, synth

    classes = catalog.get_spec(key).num_classes
    per_class = max(1, math.ceil(images / classes))
    seeds = min(seeds_per_class, per_class)
    manual = synth.write_synthetic(out, [key], images_per_class=seeds, image_size=crop,
                                   quirks=False)[key]
    rng = np.random.default_rng(0)
    suffix = ".tif" if key == "ucm" else ".jpg"
    for folder in sorted({p.parent for p in manual.rglob(f"*{suffix}")}):
        originals = sorted(folder.glob(f"*{suffix}"))
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in originals]
        for i in range(per_class - len(originals)):
            a = arrays[i % len(arrays)]
            a = np.roll(a, tuple(rng.integers(0, a.shape[0], 2)), axis=(0, 1))
            a = np.rot90(a[:, ::-1] if i % 2 else a, k=i % 4)
            noise = rng.integers(-6, 7, a.shape, dtype=np.int16)
            a = np.clip(a.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            path = folder / f"{originals[0].stem}_v{i}{suffix}"
            if suffix == ".tif":
                Image.fromarray(a).save(path, "TIFF")
            else:
                Image.fromarray(a).save(path, "JPEG", quality=90)
    return manual


def fmt(value: float) -> str:
    """A number in 4 significant figures, without exponent for the usual ranges."""
    if value != value:  # NaN
        return "nan"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"
