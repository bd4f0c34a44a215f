#!/usr/bin/env bash
# ResNet-50 training images/s on one NVIDIA GPU (H100/H200), through rssc's real pipeline.
#
#   bash benchmarks/gpu_check.sh            # ~5-7 min, including XLA compilation
#   IMAGES=8000 EPOCHS=4 bash benchmarks/gpu_check.sh
#
# Needs the package installed with the CUDA wheel (`pip install -e '.[gpu]'`) in the Python on
# PATH (or PYTHON=...). Writes a synthetic 256-px RESISC45 tree to a temporary folder, prepares
# it, then prints one table:
#   - the input pipeline's own ceiling on this machine's CPUs (make_dataset, training mode, crop
#     256, batch 100, images/s from epoch 2 on, nothing consuming it),
#   - `rssc_mlflow.training.fit.fit` through that pipeline at crop 256, batch 100: float32 without
#     XLA, float32 with XLA (Keras's "auto" on a GPU, i.e. what `rssc pretrain` gets), and
#     mixed_float16 + XLA (`models.set_precision("mixed")`, jit_compile=True). Target on one
#     H100: >= 2,500 images/s mixed + XLA.
# Without a TensorFlow that sees the GPU, `KERAS_BACKEND=jax python benchmarks/gpu_keras.py` measures
# the same model and step with Keras alone (not our pipeline); docs/PERFORMANCE.md has its H200 run.
# Each configuration runs in its own process (fresh dtype policy and GPU memory); the first
# epoch (tracing, XLA compilation, cache filling) is not timed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
IMAGES="${IMAGES:-5000}"   # per epoch; 5,000 at 2,500 img/s is 2 s per epoch
EPOCHS="${EPOCHS:-3}"      # timed epochs after the first
LIMIT="${LIMIT:-150}"      # seconds per configuration
CROP="${CROP:-256}" BATCH="${BATCH:-100}"  # smaller only to try the script on a CPU
CONFIGS="${CONFIGS:-pipeline float32 float32_xla mixed_xla}"  # fewer only to test the script
WORK="$(mktemp -d -t rssc-gpu-check-XXXX)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" RSSC_DATA_DIR="$WORK/data"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONWARNINGS=ignore
unset RSSC_CACHE_MEMORY_MB RSSC_CACHE_DIR

cat > "$WORK/check.py" <<'PY'
"""One configuration of gpu_check.sh; prints a JSON line."""
import json, sys, time
from pathlib import Path

config, images, epochs, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
CROP, BATCH = int(sys.argv[5]), int(sys.argv[6])
from benchmarks import EpochClock, PREPROCESSING, iterate_epochs, train_dataset, write_tree

if config == "setup":
    from rssc_mlflow.data import prepare
    t0 = time.perf_counter()
    report = prepare.prepare("resisc45", write_tree("resisc45", Path(work) / "src", images, CROP))
    print(json.dumps({"config": config, "images": report.images,
                      "seconds": time.perf_counter() - t0}))
    sys.exit()

import tensorflow as tf
from rssc_mlflow import models
from rssc_mlflow.data import prepare
from rssc_mlflow.training import fit

prepared = prepare.load_prepared("resisc45")
n = len(prepared.records)
steps = -(-n // BATCH)
# As runs train: uint8 batches of every epoch in one stream, preprocessed inside the model.
train = train_dataset(prepared.examples(), n, CROP, BATCH)
out = {"config": config, "images": n, "gpu": [d.name for d in tf.config.list_physical_devices("GPU")]}
if config == "pipeline":
    clock = iterate_epochs(train(first_epoch=0, epochs=1 + epochs), epochs, batches_per_epoch=steps)
else:
    precision, jit = {"float32": ("float32", False), "float32_xla": ("float32", True),
                      "mixed_xla": ("mixed", True)}[config]
    out["policy"] = models.set_precision(precision)
    model = models.with_preprocessing(models.build_classifier(45, "single", crop=CROP),
                                      PREPROCESSING)
    fit.compile_model(model, task="single")
    model.jit_compile = jit
    out["jit_compile"] = model.jit_compile
    schedule = fit.make_schedule(peak_lr=3e-4, steps_per_epoch=-(-n // BATCH),
                                 epochs=1 + epochs, warmup_epochs=0)
    clock = EpochClock()
    fit.fit(model, train, None, epochs=1 + epochs, steps_per_epoch=steps, schedule=schedule,
            checkpoint_dir=None, log_epoch=clock.tick, verbose=0)
out["images_per_s"] = clock.rate(n)
out["first_epoch_s"] = clock.times[1] - clock.times[0]
print(json.dumps(out))
PY

run() {  # run CONFIG: one JSON line into $WORK/results.jsonl, or a note that it failed
  local started=$SECONDS
  if timeout "$LIMIT" "$PYTHON" "$WORK/check.py" "$1" "$IMAGES" "$EPOCHS" "$WORK" "$CROP" "$BATCH" \
      > "$WORK/$1.out" 2> "$WORK/$1.log"; then
    tail -n 1 "$WORK/$1.out" >> "$WORK/results.jsonl"
  else
    echo "{\"config\": \"$1\", \"failed\": true}" >> "$WORK/results.jsonl"
    echo "[gpu_check] $1 failed or ran past ${LIMIT}s; its log:" >&2
    tail -n 20 "$WORK/$1.log" >&2
  fi
  echo "[gpu_check] $1: $((SECONDS - started)) s" >&2
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "[gpu_check] $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" >&2
run setup
for config in $CONFIGS; do run "$config"; done

"$PYTHON" - "$WORK/results.jsonl" "$CROP" "$BATCH" <<'PY'
import json, sys
crop, batch = sys.argv[2], sys.argv[3]
rows = [json.loads(line) for line in open(sys.argv[1])]
names = {"setup": "synthetic data + prepare (s)", "pipeline": "input pipeline ceiling (CPUs)",
         "float32": "fit, float32, no XLA", "float32_xla": "fit, float32 + XLA",
         "mixed_xla": "fit, mixed_float16 + XLA"}
print("| configuration | images/s | first epoch s | notes |\n|---|---|---|---|")
for r in rows:
    if r.get("failed"):
        print(f"| {names[r['config']]} | FAILED | | see the log above |")
    elif r["config"] == "setup":
        print(f"| {names['setup']} | {r['images'] / r['seconds']:,.0f} | | "
              f"{r['images']} images in {r['seconds']:.0f} s |")
    else:
        note = f"{r['images']} images/epoch, crop {crop}, batch {batch}"
        if r["config"] == "mixed_xla":
            note += "; target on one H100: >= 2,500 images/s"
        print(f"| {names[r['config']]} | {r['images_per_s']:,.0f} | {r['first_epoch_s']:.0f} | "
              f"{note}; GPU {','.join(r['gpu']) or 'NONE'} |")
PY
