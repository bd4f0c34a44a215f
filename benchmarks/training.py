"""Training: images/s of a real Keras fit through our pipeline vs fit on in-memory tensors.

Ours: `rssc_mlflow.training.fit.fit` (the package's loop: Adam on the run's schedule, per-epoch
logger) on `make_dataset`'s augmented, cached pipeline of uint8 batches, into the model that
preprocesses them (`models.with_preprocessing`), as `commands` trains. Ceiling: `model.fit` on
the same images already in memory as uint8 tensors (central crops, no augmentation), same
model and traced step, same callbacks, same batch. The first epoch (tracing, cache filling) is not timed. A second child
trains through our pipeline under the mixed policy (`models.set_precision("mixed")`:
mixed_bfloat16 on CPU, mixed_float16 on a GPU) to compare with float32.
"""

from __future__ import annotations

from typing import Any

from benchmarks import (
    EpochClock,
    Options,
    Row,
    child,
    child_main,
    fmt,
    in_memory,
    new_model,
    suite_examples,
    train_dataset,
)

NAME = "training"
TARGET = 0.9


def measure(precision: str, crop: int, images: int, batch: int, epochs: int,
            ceiling: bool) -> dict[str, Any]:
    from rssc_mlflow import models
    from rssc_mlflow.training import fit

    policy = models.set_precision(precision)
    examples, n, classes = suite_examples(images)
    model, schedule = new_model(classes, crop, n, batch, 1 + epochs)
    ours = EpochClock()
    fit.fit(model, train_dataset(examples, n, crop, batch), None, epochs=1 + epochs,
            steps_per_epoch=-(-n // batch), schedule=schedule, checkpoint_dir=None,
            log_epoch=ours.tick, verbose=0)
    result: dict[str, Any] = {"policy": policy, "images": n, "ours": ours.rate(n),
                              "first_epoch_s": ours.times[1] - ours.times[0]}
    if ceiling:
        x, y = in_memory(examples, n, crop)
        clock = EpochClock()
        model.fit(x, y, batch_size=batch, epochs=1 + epochs, verbose=0,
                  callbacks=[fit.EpochLogger(clock.tick, schedule)])
        result["ceiling"] = clock.rate(n)
    return result


def run(opts: Options) -> list[Row]:
    sizes = dict(crop=opts.train_crop, images=opts.train_images, batch=opts.batch,
                 epochs=opts.epochs)
    f32 = child(opts, "training", "measure", precision="float32", ceiling=True, **sizes)
    mixed = child(opts, "training", "measure", precision="mixed", ceiling=False, **sizes)
    where = (f"{f32['images']} images/epoch, crop {opts.train_crop}, batch {opts.batch}, "
             f"{opts.epochs} timed epochs")
    ratio = f32["ours"] / f32["ceiling"]
    return [
        Row("training fit, pipeline vs in-memory (float32)", f32["ours"], f32["ceiling"],
            "img/s", ratio, f">= {TARGET:g}", ratio >= TARGET,
            f"{where}; first epoch {fmt(f32['first_epoch_s'])} s"),
        Row(f"training fit, {mixed['policy']} vs float32 (pipeline)", mixed["ours"], f32["ours"],
            "img/s", mixed["ours"] / f32["ours"], "report", None,
            f"{where}; first epoch {fmt(mixed['first_epoch_s'])} s"),
    ]


if __name__ == "__main__":
    child_main()
