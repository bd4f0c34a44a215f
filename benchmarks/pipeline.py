"""Input pipeline: images/s from epoch 2 on, ours vs decoding every file every epoch.

Ours: `rssc_mlflow.data.pipeline.make_dataset` (training mode) over the prepared dataset: each
image is decoded and resized once into the cache, later epochs only crop, flip and rotate, and
the batches stay uint8, as runs use them: the model preprocesses them on the accelerator
(`models.with_preprocessing`). The same pipeline preprocessing to float32 itself is measured
too (a raw figure). Baseline: the authors' way (Keras ImageDataGenerator-like), as a tf.data map with
full parallelism: read the file, decode (JPEG: tf.io.decode_jpeg; TIFF, which TensorFlow cannot
decode: PIL, as Keras's `load_img`), resize to 292/256 of the crop in float, then the same
augmentation and preprocessing. Both read the same images, batch, and prefetch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import (
    PREPROCESSING,
    Options,
    Row,
    child,
    child_main,
    fmt,
    iterate_epochs,
    write_tree,
)

NAME = "pipeline"
# (label, catalog key): 256-px JPEG, 256-px TIFF, 600-px JPEG (AID-like); sizes scale with crop.
SOURCES = (("jpeg256", "resisc45"), ("tiff256", "ucm"), ("jpeg600", "aid"))
KEYS = tuple(key for _, key in SOURCES)
TARGET = 5.0


def setup(keys: list[str], images: dict[str, int], crop: int, work: str) -> dict[str, Any]:
    """Write the synthetic trees of `keys` and prepare them (RSSC_DATA_DIR is the work dir)."""
    from rssc_mlflow.data import prepare

    out = {}
    for key in keys:
        manual = write_tree(key, Path(work) / "src", images[key], crop)
        report = prepare.prepare(key, manual, force=True)
        out[key] = {"manual_dir": str(manual), "images": report.images}
    return out


def _baseline(files: list[str], labels: list[int], crop: int, batch: int, tiff: bool):
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from rssc_mlflow.data.pipeline import preprocess
    from rssc_mlflow.protocol import resize_for_crop

    resize = resize_for_crop(crop)

    def pil_decode(path: bytes) -> np.ndarray:
        with Image.open(path.decode()) as image:
            return np.asarray(image.convert("RGB"))

    def load(path: tf.Tensor, label: tf.Tensor):
        if tiff:
            image = tf.numpy_function(pil_decode, [path], tf.uint8)
            image.set_shape([None, None, 3])
        else:
            image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        image = tf.image.resize(image, [resize, resize])  # float32, bilinear
        image = tf.image.random_crop(image, [crop, crop, 3])
        image = tf.image.random_flip_left_right(tf.image.random_flip_up_down(image))
        image = tf.image.rot90(image, tf.random.uniform([], 0, 4, tf.int32))
        return preprocess(image, PREPROCESSING), label

    ds = tf.data.Dataset.from_tensor_slices((files, labels))
    ds = ds.shuffle(len(files), reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def measure(key: str, crop: int, batch: int, epochs: int) -> dict[str, Any]:
    """Images/s of ours and of the baseline over the prepared `key` and its source files."""
    from rssc_mlflow.data import pipeline, prepare

    prepared = prepare.load_prepared(key)
    records = prepared.records
    n = len(records)
    root = Path(prepared.metadata["source"])
    def ours_ds(preprocessing: str | None):
        return pipeline.make_dataset(prepared.examples(), training=True, crop=crop,
                                     batch_size=batch, preprocessing=preprocessing,
                                     num_examples=n, epochs=1 + epochs)

    base_ds = _baseline([str(root / r.filename) for r in records], [r.label for r in records],
                        crop, batch, tiff=key == "ucm")
    # All read files written moments ago (in the OS cache); the baseline goes first.
    base = iterate_epochs(base_ds, epochs)
    ours = iterate_epochs(ours_ds(None), epochs, batches_per_epoch=-(-n // batch))
    ours_f32 = iterate_epochs(ours_ds(PREPROCESSING), epochs, batches_per_epoch=-(-n // batch))
    return {"images": n, "ours": ours.rate(n), "baseline": base.rate(n),
            "ours_float32": ours_f32.rate(n),
            "ours_first_epoch_s": ours.times[1] - ours.times[0],
            "baseline_first_epoch_s": base.times[1] - base.times[0]}


def measure_all(crop: int, batch: int, epochs: int) -> dict[str, Any]:
    """`measure` for every source, one after the other (one TensorFlow start-up)."""
    return {key: measure(key, crop, batch, epochs) for _, key in SOURCES}


def run(opts: Options) -> list[Row]:
    rows = []
    results = child(opts, "pipeline", "measure_all", crop=opts.crop, batch=opts.batch,
                    epochs=opts.epochs)
    for label, key in SOURCES:
        r = results[key]
        ratio = r["ours"] / r["baseline"]
        rows.append(Row(
            f"input pipeline, {label}", r["ours"], r["baseline"], "img/s", ratio,
            f">= {TARGET:g}x", ratio >= TARGET,
            f"{r['images']} images, crop {opts.crop}, batch {opts.batch}; ours uint8 out "
            f"(preprocessed in the model); ours with float32 preprocessing in the pipeline "
            f"{fmt(r['ours_float32'])} img/s ({fmt(r['ours_float32'] / r['baseline'])}x); "
            f"first epoch (decode + cache) {fmt(r['ours_first_epoch_s'])} s vs "
            f"{fmt(r['baseline_first_epoch_s'])} s"))
    return rows


if __name__ == "__main__":
    child_main()
