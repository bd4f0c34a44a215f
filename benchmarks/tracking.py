"""Tracking overhead: the same short training with and without MLflow logging.

One model and one pipeline in one child; a first untimed epoch traces the train step. Then,
alternating, `repeats` times each: `fit.fit` with a no-op logger, and `fit.fit` inside
`rssc_mlflow.tracking.runs.tracked_run` (start with tags and system metrics, `log_params`, one
`mlflow.log_metrics` call per epoch as commands.py does, end) on a SQLite store in the work
folder, created beforehand. The fastest of each is compared (the machine is shared: the minimum
is the least disturbed; one run in three to eight, tracked or plain alike, takes ~14 s longer,
cause not found, so 3 repeats left too few clean ones). Logging the model at the end is not
included: it is a copy of the weights, not an overhead of logging per epoch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks import (
    Options,
    Row,
    child,
    child_main,
    fmt,
    new_model,
    suite_examples,
    train_dataset,
)

NAME = "tracking"
TARGET = 2.0  # percent of wall time


def measure(crop: int, images: int, batch: int, epochs: int, repeats: int) -> dict[str, Any]:
    import mlflow

    from rssc_mlflow import config
    from rssc_mlflow.tracking import runs
    from rssc_mlflow.training import fit

    mlflow.set_experiment(runs.experiment_name())  # creates the store: not timed
    examples, n, classes = suite_examples(images)
    model, schedule = new_model(classes, crop, n, batch, 1 + repeats * 2 * epochs)
    # A disk cache outlives each `fit`'s pipeline: only the first one decodes the images.
    ds = train_dataset(examples, n, crop, batch, cache="disk",
                       cache_path=Path(config.cache_dir()) / "tracking")

    def train(log_epoch: Any) -> None:
        fit.fit(model, ds, None, epochs=epochs, steps_per_epoch=-(-n // batch),
                schedule=schedule, checkpoint_dir=None, log_epoch=log_epoch, verbose=0)

    train(lambda *_: None)  # traces and fills the cache
    plain, tracked, in_calls = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train(lambda *_: None)
        plain.append(time.perf_counter() - t0)

        spent = [0.0]

        def log_epoch(epoch: int, values: dict[str, float]) -> None:
            t = time.perf_counter()
            mlflow.log_metrics(values, step=epoch)
            spent[0] += time.perf_counter() - t  # noqa: B023 - called in this iteration

        t0 = time.perf_counter()
        with runs.tracked_run("pretrain", "resisc45", tags={runs.TAG_PROFILE: "bench"}):
            runs.log_params({"images": n, "crop": crop, "batch_size": batch, "epochs": epochs})
            t1 = time.perf_counter()
            train(log_epoch)
            fit_s = time.perf_counter() - t1
        tracked.append(time.perf_counter() - t0)
        in_calls.append((tracked[-1] - fit_s) + spent[0])  # run start/params/end + metrics
    return {"images": n, "plain_s": min(plain), "tracked_s": min(tracked),
            "all_plain_s": plain, "all_tracked_s": tracked, "in_mlflow_s": min(in_calls)}


def run(opts: Options) -> list[Row]:
    r = child(opts, "tracking", "measure", crop=opts.train_crop, images=opts.train_images,
              batch=opts.batch, epochs=opts.epochs, repeats=5)
    overhead = 100 * (r["tracked_s"] / r["plain_s"] - 1)
    return [Row("tracking overhead, MLflow run vs none", r["tracked_s"], r["plain_s"], "s",
                overhead, f"<= {TARGET:g} %", overhead <= TARGET,
                f"overhead in % of wall time; {opts.epochs} epochs of {r['images']} images, "
                f"crop {opts.train_crop}; time inside MLflow calls {fmt(r['in_mlflow_s'])} s "
                f"({fmt(100 * r['in_mlflow_s'] / r['plain_s'])} %); runs: "
                f"{', '.join(fmt(t) for t in r['all_tracked_s'])} s tracked, "
                f"{', '.join(fmt(t) for t in r['all_plain_s'])} s plain")]


if __name__ == "__main__":
    child_main()
