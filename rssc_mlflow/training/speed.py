"""The training path's CPU speed work, in one place and behind one switch.

Six things make a demo or `reproduce` on a CPU several times faster without changing what is
trained; each has a plain fallback that trains the same model, only slower:

- Model reuse (the pool). Tracing a new Keras ResNet-50 train step costs more than a whole
  demo run trains. Inside `with enabled():` (or after `enable_for_process()`), `acquire` keeps
  one compiled classifier per (num_classes, task, crop, dtype policy, run_eagerly, distribution
  strategy, preprocessing, BN momentum) and hands it out again reset: every weight assigned
  (the backbone from the run's source; scratch and the head from the initial weights of a
  classifier built right after `keras.utils.set_random_seed(seed)`, what a fresh model gets),
  every optimizer variable back to its initial value, the epoch counter cleared. The rate of
  each step comes from `schedule.RunSchedule`, whose numbers live in a variable, so the traced
  step never depends on the run's schedule. A pooled run trains exactly like a fresh model
  with the same seed and source (tests/training/test_speed.py). Feature extraction shares
  one backbone per crop, dtype policy and preprocessing. Outside the block, `acquire` and
  `feature_extractor` build fresh models, as the standalone CLI always does.
- `FusedAdam`: Keras's Adam whose per-variable update is TensorFlow's fused
  `ResourceApplyAdam` kernel (the update of Keras 2's Adam) instead of ~15 separate ops.
- `fast_conv_gradients`: on CPU, conv input-gradients use TensorFlow's "eigen_tensor" kernel;
  the default one is much slower at the 1x1 and 2x2 feature maps of small crops.
- `prebuild`: builds the compiled metrics and the optimizer before the train step is traced;
  Keras would build them inside the first trace and TensorFlow would trace the step twice.
- `data_autotune`: on CPU, tf.data's autotuner is off for a run's pipelines. It gives each
  iterator a thread that re-plans at intervals growing to a minute, and dropping the
  iterator waits for that thread's next wake-up, so `fit` returned up to 60 s after its last
  epoch; a CPU-bound train step does not need the pipeline tuned. The batches are the same.
- `cpu_threads_per_worker`: worker processes that share a machine's cores split them
  (TensorFlow's intra- and inter-op pools), instead of each starting a pool per core: two
  workers on 2 cores would otherwise run 4+ busy threads on 2 cores and wait on each other.

The switch: `RSSC_SPEED=0` in the environment turns all six off (`active()`): Keras's
`Adam`, the default kernels, Keras's lazy build, fresh models, `keras.utils.set_random_seed`,
tf.data's autotuner and TensorFlow's default thread pools.
The pool is moreover scoped (`enabled`), since pooled models are process state.

Where no public API exists they use private ones: `graph._kernel_label_map`,
`Model._symbolic_build`, Keras's global seed state (`set_random_seed`), Adam's slot lists
(`FusedAdam`) and `Model._initial_epoch` (reset of a pooled model). Each is looked up at use,
falls back to the public path when missing, and has a test that fails when an upgrade changes
it (tests/training/test_speed.py).

Two other process tweaks stay with the data they serve, as memory bounds rather than speed
choices: TFDS's shuffle buffer bound while preparing (`data.prepare._tfds_memory_bound`, a
TFDS module constant) and glibc's mmap threshold for disk-cached datasets
(`data.pipeline._fix_malloc_mmap_threshold`, `mallopt`). Each falls back to the library's
default when it is missing and has a test that fails when it stops working
(tests/data/test_prepare.py, tests/data/test_pipeline.py).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rssc_mlflow import models

SPEED_ENV = "RSSC_SPEED"  # "0": every speed choice off, the plain public path
# Source weights kept in memory (each ~94 MB of float32 arrays): `RSSC_POOL_SOURCES`.
DEFAULT_MAX_SOURCES = 32
# The CPU kernel used for conv input-gradients inside traced train steps.
CPU_CONV_INPUT_GRAD_KERNEL = "eigen_tensor"
# TensorFlow's own thread settings: when the user sets one, workers keep TensorFlow's pools.
TF_THREAD_ENVS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")

_enabled = False
# Keras's own seeding function, captured at import (callers may wrap `keras.utils`'s).
_keras_set_random_seed = keras.utils.set_random_seed


@dataclasses.dataclass
class _Entry:
    model: keras.Model
    initial: dict[int, list[np.ndarray]]  # seed -> the model's weights right after building
    optimizer_initial: list[np.ndarray | None]  # None: all zeros
    reset: Any = None  # tf.function(weights): assigns every weight, zeroes the optimizer
    uses: int = 0


@dataclasses.dataclass
class _State:
    classifiers: dict[tuple, _Entry] = dataclasses.field(default_factory=dict)
    extractors: dict[tuple, tuple] = dataclasses.field(default_factory=dict)
    sources: collections.OrderedDict = dataclasses.field(default_factory=collections.OrderedDict)
    # Seeded initial backbones shared between keys when equal (they are, for one seed).
    backbones: list[list[np.ndarray]] = dataclasses.field(default_factory=list)


_state = _State()


# --- The switch ---------------------------------------------------------------------------------


def active() -> bool:
    """Whether the speed choices are on (unless `RSSC_SPEED=0`)."""
    return os.environ.get(SPEED_ENV, "1").strip() != "0"


def is_enabled() -> bool:
    """Whether `acquire` and `feature_extractor` reuse models now."""
    return _enabled and active()


@contextlib.contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Reuse compiled models inside the block; the pool is emptied when the outermost exits."""
    global _enabled
    previous = _enabled
    _enabled = on
    try:
        yield
    finally:
        _enabled = previous
        if not previous:
            clear()


def enable_for_process() -> None:
    """Turn the pool on for the rest of this process (`reproduce`'s worker processes)."""
    global _enabled
    _enabled = True


def clear() -> None:
    """Drop every pooled model and cached weight array."""
    global _state
    _state = _State()


def stats() -> dict[str, Any]:
    """How many models the pool holds and how often each was handed out (for logs and tests)."""
    return {
        "classifiers": {_describe(k): e.uses for k, e in _state.classifiers.items()},
        "extractors": len(_state.extractors),
        "sources": len(_state.sources),
    }


def _describe(key: tuple) -> str:
    num_classes, task, crop, policy, eager, strategy, preprocessing, bn_momentum, zero = key
    return (f"{num_classes}-{task}-{crop}px-{policy}{'-eager' if eager else ''}-{strategy}"
            f"{'-uint8-' + preprocessing if preprocessing else ''}"
            f"{f'-bn{bn_momentum}' if bn_momentum is not None else ''}"
            f"{'-zero-init-residual' if zero else ''}")


# --- Threads of worker processes ----------------------------------------------------------------


def cpu_threads_per_worker(workers: int) -> int | None:
    """TensorFlow threads (intra- and inter-op) for each of `workers` processes sharing this
    machine's CPU cores; None: TensorFlow's default (one pool thread per core), which is kept
    when speed choices are off or TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS say."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1. Received: workers={workers}")
    if not active() or workers == 1 or any(os.environ.get(v) for v in TF_THREAD_ENVS):
        return None
    return max(1, _usable_cores() // workers)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what a scheduler's cgroup/affinity allows
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_cpu_threads(threads: int | None) -> None:
    """Size TensorFlow's thread pools, before TensorFlow runs its first op (None: no change)."""
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def cpu_threads() -> tuple[int, int]:
    """(intra-op, inter-op) threads this process set; 0: TensorFlow's default."""
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


# --- Seeds --------------------------------------------------------------------------------------


def _tf_global_seed() -> int | None:
    from tensorflow.python.eager import context

    return context.global_seed()


def _fast_seed_state() -> tuple | None:
    """Keras's global seed state (private: `keras.src`), or None when this Keras lacks it."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils import rng_utils
    except ImportError:
        return None
    names = (getattr(rng_utils, "GLOBAL_RANDOM_SEED", None),
             getattr(seed_generator, "GLOBAL_SEED_GENERATOR", None))
    if None in names or not hasattr(global_state, "set_global_attribute"):
        return None
    return global_state, names


def set_random_seed(seed: int) -> None:
    """`keras.utils.set_random_seed(seed)`, without flushing TensorFlow's caches for nothing.

    `tf.random.set_seed` clears TensorFlow's kernel cache, which holds every instantiated
    graph: a pooled ResNet-50 would then be optimised again at its next step. With the pool
    enabled and TensorFlow's global seed already `seed`, only the Python, NumPy and Keras
    seeds are reset: the same random streams for everything rssc runs (Keras initialisers draw
    their seeds from Python's `random`; tf.data and augmentation ops have explicit seeds).
    """
    seed = int(seed)
    state = _fast_seed_state() if is_enabled() and _tf_global_seed() == seed else None
    if state is None:
        _keras_set_random_seed(seed)
        return
    global_state, (seed_name, generator_name) = state
    global_state.set_global_attribute(seed_name, seed)
    global_state.set_global_attribute(generator_name, None)
    random.seed(seed)
    np.random.seed(seed)


# --- Optimizer, kernels, build ------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="rssc_mlflow")
class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam whose per-variable update is TensorFlow's fused `ResourceApplyAdam` kernel.

    The same update as `keras.optimizers.Adam` (m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2),
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps), t = iterations + 1), in one op per
    variable. Falls back to Keras's update for anything the kernel does not cover (amsgrad,
    sparse gradients, distribution strategies, non-float32 variables) and when Keras's Adam
    no longer keeps its slots where this reads them (`_momentums`, `_velocities`).
    """

    def update_step(self, gradient, variable, learning_rate):
        if (self.amsgrad or isinstance(gradient, tf.IndexedSlices)
                or tf.distribute.has_strategy() or variable.dtype != tf.float32):
            return super().update_step(gradient, variable, learning_rate)
        try:
            index = self._get_variable_index(variable)
            handles = (variable.handle, self._momentums[index].handle,
                       self._velocities[index].handle)
        except (AttributeError, IndexError, KeyError):  # another Keras, or not resource vars
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=handles[0], m=handles[1], v=handles[2],
            beta1_power=tf.pow(beta_1, local_step), beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


def adam(learning_rate: Any) -> keras.optimizers.Adam:
    """The training optimizer: `FusedAdam`, or Keras's `Adam` with the speed choices off."""
    return FusedAdam(learning_rate=learning_rate) if active() else keras.optimizers.Adam(
        learning_rate=learning_rate)


def _gpu_visible() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def data_autotune() -> bool:
    """Whether a run's tf.data pipelines keep tf.data's autotuner: off on a CPU-only machine
    with the speed choices on (why: the module docstring)."""
    return not active() or _gpu_visible()


def fast_conv_gradients(model: keras.Model) -> None:
    """On CPU (no GPU visible, float32), trace the model's train step with the fast conv
    input-gradient kernel. A no-op elsewhere, with the speed choices off, in eager mode (the
    label only affects graphs) and when TensorFlow's graphs lack `_kernel_label_map`."""
    if not active() or getattr(model, "_rssc_fast_conv", False):
        return
    if _gpu_visible():
        return
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        return
    train_step = model.train_step

    def labelled_train_step(data):
        label_map = getattr(tf.compat.v1.get_default_graph(), "_kernel_label_map", None)
        if label_map is None:
            return train_step(data)
        with label_map({"Conv2DBackpropInput": CPU_CONV_INPUT_GRAD_KERNEL}):
            return train_step(data)

    model.train_step = labelled_train_step
    model._rssc_fast_conv = True


def prebuild(model: keras.Model, data: tf.data.Dataset) -> bool:
    """Build the compiled metrics and the optimizer before the train step is traced.

    Keras (without a distribution strategy) builds them inside the first trace, which makes
    TensorFlow trace the whole train step twice. Returns whether it built them; False (speed
    choices off, or `_symbolic_build` gone or failing) leaves it to Keras.
    """
    build = getattr(model, "_symbolic_build", None)
    if not active() or build is None:
        return False
    try:
        build(data_batch=data.element_spec)
    except Exception:  # noqa: BLE001 - private Keras API: without it, Keras builds lazily
        return False
    return True


# --- Keys and weights --------------------------------------------------------------------------


def _policy() -> str:
    return keras.mixed_precision.global_policy().name


def _strategy() -> str:
    strategy = tf.distribute.get_strategy()
    return f"{type(strategy).__name__}x{strategy.num_replicas_in_sync}"


def _backbone_layer(model: keras.Model) -> keras.Model:
    return models.unwrap(model).get_layer(models.BACKBONE_NAME)


def _snapshot(variables: list) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in variables]


def _assign(variables: list, values: list[np.ndarray]) -> None:
    if len(variables) != len(values):
        raise ValueError(f"pool: {len(values)} arrays for {len(variables)} variables")
    for variable, value in zip(variables, values):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(f"pool: shape {value.shape} for variable {variable.path} "
                             f"of shape {tuple(variable.shape)}")
        variable.assign(value)


def _share_backbone(weights: list[np.ndarray], n_backbone: int) -> list[np.ndarray]:
    """`weights` with its backbone arrays replaced by an equal cached list (saves ~94 MB)."""
    backbone = weights[:n_backbone]
    for known in _state.backbones:
        if len(known) == len(backbone) and all(
                a.shape == b.shape and np.array_equal(a, b) for a, b in zip(known, backbone)):
            return known + weights[n_backbone:]
    _state.backbones.append(backbone)
    return weights


def _seeded_initial(num_classes: int, task: str, crop: int, seed: int,
                    zero_init_residual: bool) -> list[np.ndarray]:
    """The weights of a classifier built right after seeding (what a fresh run starts from)."""
    set_random_seed(seed)
    throwaway = models.build_classifier(num_classes, task, crop=crop,
                                        zero_init_residual=zero_init_residual)
    return _snapshot(throwaway.weights)


def _source_key(source) -> tuple | None:
    """An identity for the weights a source stands for, or None when it has none (scratch)."""
    if source.kind == "scratch":
        return None
    if source.kind in ("imagenet", "file") and source.local_file is not None:
        path = Path(source.local_file).resolve()
        stat = path.stat()
        return (source.kind, str(path), stat.st_mtime_ns, stat.st_size)
    import mlflow

    # models:/name/version never changes within one tracking store.
    return (source.kind, source.uri or source.download_uri, mlflow.get_tracking_uri())


def _max_sources() -> int:
    return max(0, int(os.environ.get("RSSC_POOL_SOURCES", DEFAULT_MAX_SOURCES)))


def _source_arrays(model: keras.Model, source) -> list[np.ndarray] | None:
    """The source's backbone weights (in `model`'s backbone variable order), None for scratch.

    Read once per source: the first time they are loaded into `model` itself and kept.
    """
    key = _source_key(source)
    if key is None:
        return None
    cached = _state.sources.get(key)
    if cached is not None:
        _state.sources.move_to_end(key)
        return cached
    source.backbone_into(models.unwrap(model))
    arrays = _snapshot(_backbone_layer(model).weights)
    if _max_sources():
        _state.sources[key] = arrays
        while len(_state.sources) > _max_sources():
            _state.sources.popitem(last=False)
    return arrays


def _assigner(variables: list) -> Any:
    """A graph assigning `values` to `variables` in one call (~10x faster than one by one)."""
    variables = list(variables)

    def assign(values):
        for variable, value in zip(variables, values):
            variable.assign(value)
        return tf.constant(True)

    return tf.function(assign, autograph=False)


def _load_source(model: keras.Model, source, assign: Any = None) -> None:
    """Put the source's backbone weights into `model` (a classifier built by `models`)."""
    key = _source_key(source)
    hit = key is not None and key in _state.sources
    arrays = _source_arrays(model, source)  # a miss loads them into the model
    if hit:
        if assign is None:
            _assign(_backbone_layer(model).weights, arrays)
        else:
            assign(arrays)


# --- Classifiers -------------------------------------------------------------------------------


def _wrap(model: keras.Model, preprocessing: str | None) -> keras.Model:
    return model if preprocessing is None else models.with_preprocessing(model, preprocessing)


def _compile(model: keras.Model, *, task: str, run_eagerly: bool) -> None:
    from rssc_mlflow.training import fit as fit_lib  # fit imports this module

    fit_lib.compile_model(model, task=task, run_eagerly=run_eagerly)


def _fresh(num_classes: int, task: str, *, crop: int, source, seed: int,
           run_eagerly: bool, preprocessing: str | None, bn_momentum: float | None,
           zero_init_residual: bool) -> keras.Model:
    set_random_seed(seed)
    model = models.build_classifier(num_classes, task, crop=crop, bn_momentum=bn_momentum,
                                    zero_init_residual=zero_init_residual)
    source.backbone_into(model)
    model = _wrap(model, preprocessing)
    _compile(model, task=task, run_eagerly=run_eagerly)
    return model


def _new_entry(key: tuple, num_classes: int, task: str, crop: int, seed: int,
               run_eagerly: bool, preprocessing: str | None, bn_momentum: float | None,
               zero_init_residual: bool) -> _Entry:
    set_random_seed(seed)
    classifier = models.build_classifier(num_classes, task, crop=crop, bn_momentum=bn_momentum,
                                         zero_init_residual=zero_init_residual)
    initial = _share_backbone(_snapshot(classifier.weights),
                              len(_backbone_layer(classifier).weights))
    model = _wrap(classifier, preprocessing)  # the same variables, in the same order
    if not all(a is b for a, b in zip(model.weights, classifier.weights)):
        raise ValueError("pool: the wrapper's weights are not the classifier's")
    _compile(model, task=task, run_eagerly=run_eagerly)
    model.optimizer.build(model.trainable_variables)
    optimizer_initial = [None if not np.any(a) else a
                         for a in _snapshot(model.optimizer.variables)]
    n_backbone = len(_backbone_layer(model).weights)
    if not all(a is b for a, b in zip(model.weights[:n_backbone], _backbone_layer(model).weights)):
        raise ValueError("pool: the classifier's weights do not start with its backbone's")
    entry = _Entry(model, {seed: initial}, optimizer_initial)
    _state.classifiers[key] = entry
    return entry


def _make_reset(entry: _Entry) -> Any:
    """One graph that assigns every model weight and resets every optimizer variable.

    One call instead of ~750 separate eager assignments; traced once per entry.
    """
    weights = list(entry.model.weights)
    optimizer_variables = list(entry.model.optimizer.variables)
    initial = entry.optimizer_initial

    def reset(values):
        for variable, value in zip(weights, values):
            variable.assign(value)
        for variable, value in zip(optimizer_variables, initial):
            variable.assign(tf.zeros(variable.shape, variable.dtype) if value is None
                            else tf.constant(value, variable.dtype))
        return tf.constant(True)

    return tf.function(reset, autograph=False)


def acquire(num_classes: int, task: str, *, crop: int, source, seed: int,
            run_eagerly: bool = False, preprocessing: str | None = None,
            bn_momentum: float | None = None, zero_init_residual: bool = False
            ) -> keras.Model:
    """A compiled classifier whose weights are those of a fresh one for `seed` and `source`.

    `source` is a `registry.ResolvedSource`. With the pool enabled the model is a pooled one,
    reset (weights, optimizer state, epoch counters); else a new model is built. Either way
    the model is compiled with `fit.compile_model` and trains with `fit.fit`; call it inside
    the distribution strategy's scope and after `models.set_precision`. With `preprocessing`
    the compiled model is `models.with_preprocessing(classifier, preprocessing)`, for uint8
    batches; `models.unwrap` gives the classifier (to save or log).
    """
    if not is_enabled():
        return _fresh(num_classes, task, crop=crop, source=source, seed=seed,
                      run_eagerly=run_eagerly, preprocessing=preprocessing,
                      bn_momentum=bn_momentum, zero_init_residual=zero_init_residual)
    zero_init_residual = bool(zero_init_residual)
    # The momentum is a constant of the traced step, so it is part of the key; the initial
    # weights (`entry.initial`) depend on `zero_init_residual`.
    key = (int(num_classes), task, int(crop), _policy(), bool(run_eagerly), _strategy(),
           preprocessing, bn_momentum, zero_init_residual)
    entry = _state.classifiers.get(key)
    if entry is None:  # a new model holds the seeded initial weights already
        entry = _new_entry(key, num_classes, task, crop, seed, run_eagerly, preprocessing,
                           bn_momentum, zero_init_residual)
        model = entry.model
        _load_source(model, source)
    else:
        model = entry.model
        if not hasattr(model, "_initial_epoch"):
            # Keras keeps a resumed run's epoch there and never clears it: without a way to
            # clear it, a reused model could skip epochs, so this Keras gets fresh models.
            return _fresh(num_classes, task, crop=crop, source=source, seed=seed,
                          run_eagerly=run_eagerly, preprocessing=preprocessing,
                          bn_momentum=bn_momentum, zero_init_residual=zero_init_residual)
        if seed not in entry.initial:
            entry.initial[seed] = _share_backbone(
                _seeded_initial(num_classes, task, crop, seed, zero_init_residual),
                len(_backbone_layer(model).weights))
        values = list(entry.initial[seed])
        backbone = _source_arrays(model, source)
        if backbone is not None:
            values[:len(backbone)] = backbone
        if entry.reset is None:
            entry.reset = _make_reset(entry)
        entry.reset(values)
    model.stop_training = False
    if hasattr(model, "_initial_epoch"):
        model._initial_epoch = None  # set by BackupAndRestore when a run resumed
    entry.uses += 1
    return model


# --- Feature extraction ------------------------------------------------------------------------


def feature_extractor(*, crop: int, source, num_classes: int = 1, task: str = "single",
                      preprocessing: str | None = None) -> keras.Model:
    """input -> 2048-d pooled features of `source`'s backbone (`models.backbone_of`).

    Pooled: one backbone per (crop, dtype policy, preprocessing), so predict is traced once.
    Disabled: a fresh classifier for (num_classes, task) with the source's backbone, as a run
    builds it. With `preprocessing` the input is uint8 (`models.with_preprocessing`).
    """
    if not is_enabled():
        model = models.build_classifier(num_classes, task, crop=crop)
        source.backbone_into(model)
        return _wrap(models.backbone_of(model), preprocessing)
    key = (int(crop), _policy(), _strategy(), preprocessing)
    if key not in _state.extractors:
        model = models.build_classifier(1, "single", crop=crop)
        _state.extractors[key] = (model, _wrap(models.backbone_of(model), preprocessing),
                                  _assigner(_backbone_layer(model).weights))
    model, backbone, assign = _state.extractors[key]
    _load_source(model, source, assign)
    return backbone
