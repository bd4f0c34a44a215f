"""Memory: training on a dataset whose decoded cache is larger than RSSC_CACHE_MEMORY_MB.

A PatternNet-like tree of `--memory-images` 256-px JPEGs (its own, prepared in a separate
child) is trained on at `--crop` (256): its decoded cache is N x 292^2 x 3 bytes (1 GB at the
default 4,000 images). The training child gets RSSC_CACHE_MEMORY_MB = a quarter of that, so
`make_dataset`'s "auto" cache goes to disk with a shuffle buffer of at most the budget. The
model is a one-conv network: the claim is about the data path, and a ResNet-50 cannot push
4,000 images of 256 px through a 2-core CPU in minutes; the model's own RSS is measured and
allowed for anyway. "Model": the peak RSS after two epochs of the same training over one batch
of the images, disk cache too (TensorFlow, TFDS and tf.data started, the traced step). Then
`fit.fit` trains on the whole dataset for two epochs (the first writes the disk cache, the
second reads it). Target: peak <= model + budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import Options, Row, child, child_main, fmt, new_model, peak_rss_mb, train_dataset

NAME = "memory"
KEY = "patternnet"  # 38 classes of 256-px JPEGs; no other comparison reads it


def measure(crop: int, batch: int) -> dict[str, Any]:
    from rssc_mlflow import config
    from rssc_mlflow.data import pipeline, prepare
    from rssc_mlflow.protocol import resize_for_crop
    from rssc_mlflow.training import fit

    prepared = prepare.load_prepared(KEY)
    n, classes = len(prepared.records), prepared.spec.num_classes
    cache_bytes = n * resize_for_crop(crop) ** 2 * 3
    examples = prepared.examples()
    model, schedule = new_model(classes, crop, n, batch, 4, small=True)
    warm = train_dataset(examples.take(batch), min(batch, n), crop, batch, cache="disk")
    fit.fit(model, warm, None, epochs=2, steps_per_epoch=1, schedule=schedule,
            checkpoint_dir=None, log_epoch=lambda *_: None, verbose=0)
    model_mb = peak_rss_mb()
    fit.fit(model, train_dataset(examples, n, crop, batch), None, epochs=2,
            steps_per_epoch=-(-n // batch), schedule=schedule, checkpoint_dir=None,
            log_epoch=lambda *_: None, verbose=0)
    disk = sum(p.stat().st_size for p in Path(config.cache_dir()).rglob("*") if p.is_file())
    return {"images": n, "cache_mb": cache_bytes / 2**20, "model_mb": model_mb,
            "budget_mb": config.cache_memory_mb(), "disk_cache_mb": disk / 2**20,
            "mode": pipeline.choose_cache("auto", cache_bytes)}


def run(opts: Options) -> list[Row]:
    from rssc_mlflow.protocol import resize_for_crop

    data = opts.work / "memory"
    env = {"RSSC_DATA_DIR": str(data / "data")}
    made = child(opts, "pipeline", "setup", env=env, keys=[KEY],
                 images={KEY: opts.memory_images}, crop=opts.crop, work=str(data))
    cache_mb = made[KEY]["images"] * resize_for_crop(opts.crop) ** 2 * 3 / 2**20
    env["RSSC_CACHE_MEMORY_MB"] = str(int(cache_mb // 4))
    r = child(opts, "memory", "measure", env=env, crop=opts.crop, batch=opts.batch)
    limit = r["model_mb"] + r["budget_mb"]
    ratio = r["peak_rss_mb"] / limit
    return [Row("memory, peak RSS vs model + cache budget", r["peak_rss_mb"], limit, "MB",
                ratio, "<= 1", ratio <= 1,
                f"{r['images']} images, crop {opts.crop}, one-conv model: decoded cache "
                f"{fmt(r['cache_mb'])} MB, budget {r['budget_mb']} MB -> {r['mode']} cache "
                f"({fmt(r['disk_cache_mb'])} MB on disk); model alone {fmt(r['model_mb'])} MB, "
                f"growth {fmt(r['peak_rss_mb'] - r['model_mb'])} MB")]


if __name__ == "__main__":
    child_main()
