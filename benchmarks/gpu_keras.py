"""ResNet-50 training images/s on one GPU with Keras 3 alone, on whatever backend it has.

    KERAS_BACKEND=jax python benchmarks/gpu_keras.py   # 2 min on an H200 (3 precisions)
    python benchmarks/gpu_keras.py --images 16 --crop 32 --batch 4 --configs float32  # try it

`gpu_check.sh` measures the real thing: rssc's TensorFlow pipeline and `fit`. This script is for
a GPU machine whose Python has Keras and a GPU backend (JAX, say) but no TensorFlow build for its
CUDA: it answers "how fast does the card train this model?" without our input pipeline. The
model and step are the ones runs train: `keras.applications.ResNet50` (random init) at crop 256,
global average pooling, a float32 softmax head for 45 classes, uint8 images made float32 inside
the step (caffe preprocessing, as `models.Preprocess`), sparse cross-entropy, Adam, batch 100.
Every step is XLA-compiled (`jit_compile=True`; JAX always compiles).

Per precision: `model.fit` on uint8 arrays in host memory, shuffled, images/s from epoch 2 on
(epoch 1 compiles); the batches are copied to the card every step, as from an input pipeline.
(A `train_on_batch` loop on one batch already on the card is no ceiling: each call waits for its
logs, so the card idles between steps. On an H200 it gave 2,848 images/s mixed_float16 against
fit's 4,523, and it compiles the step a second time.)
One JSON line per precision on stdout as it finishes, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

# Don't let JAX take 75% of the card up front; TensorFlow grows its memory anyway.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402 - after the environment above

IMAGENET_MEANS_BGR = (103.939, 116.779, 123.68)  # keras.applications.resnet50.preprocess_input
CONFIGS = ("float32", "mixed_float16", "mixed_bfloat16")


class CaffePreprocess(keras.layers.Layer):
    """uint8 RGB -> float32 BGR minus the ImageNet means, in float32 whatever the policy."""

    def __init__(self, **kwargs):
        super().__init__(dtype="float32", **kwargs)

    def call(self, images):
        x = keras.ops.flip(keras.ops.cast(images, "float32"), axis=-1)
        return x - keras.ops.convert_to_tensor(IMAGENET_MEANS_BGR, dtype="float32")


def build_model(crop: int, classes: int) -> keras.Model:
    inputs = keras.Input((crop, crop, 3), dtype="uint8", name="image_uint8")
    backbone = keras.applications.ResNet50(include_top=False, weights=None,
                                           input_shape=(crop, crop, 3), name="resnet50")
    features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(
        backbone(CaffePreprocess(name="preprocess")(inputs)))
    outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32",
                                 name="predictions")(features)
    return keras.Model(inputs, outputs, name="rssc_resnet50_uint8")


class EpochTimes(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_train_begin(self, logs=None) -> None:
        self.ends = [time.perf_counter()]

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.ends.append(time.perf_counter())


def accelerators() -> list[str]:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        return [f"{d.platform}:{d.device_kind}" for d in jax.devices() if d.platform != "cpu"]
    if backend == "tensorflow":
        import tensorflow as tf
        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if backend == "torch":
        import torch
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def measure(config: str, args: argparse.Namespace, images: np.ndarray, labels: np.ndarray) -> dict:
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(config)
    model = build_model(args.crop, args.classes)
    # Keras wraps Adam in a LossScaleOptimizer itself under mixed_float16.
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy",
                  jit_compile=True)
    clock = EpochTimes()
    history = model.fit(images, labels, batch_size=args.batch, epochs=1 + args.epochs,
                        shuffle=True, callbacks=[clock], verbose=0)
    timed = clock.ends[-1] - clock.ends[1]
    steps = -(-len(images) // args.batch)
    fit_rate = args.epochs * len(images) / timed
    return {"config": config, "backend": keras.backend.backend(),
            "policy": model.dtype_policy.name, "optimizer": type(model.optimizer).__name__,
            "images": len(images), "steps_per_epoch": steps, "timed_epochs": args.epochs,
            "first_epoch_s": round(clock.ends[1] - clock.ends[0], 1),
            "fit_images_per_s": round(fit_rate, 1),
            "last_epoch_loss": round(float(history.history["loss"][-1]), 4)}


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the first")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--classes", type=int, default=45)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.crop, args.crop, 3), dtype=np.uint8)
    labels = rng.integers(0, args.classes, args.images).astype("int32")
    machine = {"keras": keras.__version__, "backend": keras.backend.backend(),
               "accelerators": accelerators(), "nvidia_smi": gpu_name(),
               "cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps({"machine": machine}), flush=True)
    rows = []
    for config in args.configs:
        started = time.perf_counter()
        try:
            row = measure(config, args, images, labels)
        except Exception as error:  # noqa: BLE001 - report it and go on to the next precision
            row = {"config": config, "failed": f"{type(error).__name__}: {error}"[:500]}
        row["wall_s"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\nResNet-50, crop {args.crop}, batch {args.batch}, {args.images} images/epoch, "
          f"Keras {machine['keras']} on {machine['backend']}, "
          f"{', '.join(machine['accelerators']) or 'no accelerator'}")
    print("| precision | fit images/s | first epoch s (compiles) |\n|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['config']} | FAILED | {r['failed'][:80]} |")
        else:
            print(f"| {r['policy']} | {r['fit_images_per_s']:,.0f} | {r['first_epoch_s']:.0f} |")
    return 1 if any("failed" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
