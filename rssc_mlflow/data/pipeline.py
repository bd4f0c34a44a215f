"""tf.data input pipelines: decode and resize once, then crop/flip/rotate and preprocess per epoch.

docs/PROTOCOL.md, "Training augmentation" and "Evaluation": resize to resize_for_crop(crop)
(292 for 256), then a random crop, random left-right and up-down flips and a rotation by k*90
degrees (k uniform in 0..3) for training; the central crop for evaluation.

Decoding and resizing is most of the cost of an epoch, so the resized uint8 images are cached
(in memory or in a file) and each epoch only does the cheap crop/flip/rot90 + preprocessing.
Rounding the resized image to uint8 for the cache changes pixels by at most 0.5 against the
authors' float pipeline; it halves nothing that matters and makes the cache 4x smaller.

With `preprocessing=None` the batches stay uint8 and the model preprocesses them
(`models.with_preprocessing`): on a GPU that is free, and it spares the input pipeline the
float32 conversion, which costs more than the whole augmentation, and the transfer 4x the
bytes. `commands` trains this way; the result is the same arithmetic, bit for bit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import keras
import tensorflow as tf

from rssc_mlflow import config
from rssc_mlflow.protocol import IMAGENET_MEANS_RGB, PREPROCESSING_MODES, SEED, resize_for_crop

CacheMode = Literal["auto", "memory", "disk", "none"]
CACHE_MODES: tuple[str, ...] = ("auto", "memory", "disk", "none")
AUTOTUNE = tf.data.AUTOTUNE


# --- Per-image operations --------------------------------------------------------------------


def check_preprocessing(mode: str) -> None:
    """ValueError naming the known modes unless `mode` is one of them."""
    if mode not in PREPROCESSING_MODES:
        raise ValueError(
            f"Unknown preprocessing {mode!r}. Choose one of: {', '.join(PREPROCESSING_MODES)}."
        )


def preprocess(images: tf.Tensor, mode: str) -> tf.Tensor:
    """uint8 or float images [..., 3] (RGB) -> float32 network input for `mode`.

    unit: x / 255. imagenet-rgb: x minus the ImageNet means in RGB order (the authors' code).
    imagenet-caffe: Keras's resnet50.preprocess_input itself: RGB -> BGR, then minus the BGR
    means. Keras has no mode for the other two ("tf" maps to [-1, 1], "torch" divides by
    the standard deviations).
    """
    check_preprocessing(mode)
    x = tf.cast(images, tf.float32)
    if mode == "unit":
        return x / 255.0
    if mode == "imagenet-rgb":
        return x - tf.constant(IMAGENET_MEANS_RGB, dtype=tf.float32)
    # data_format given: the global image_data_format setting must not flip the channel axis.
    return keras.applications.resnet50.preprocess_input(x, data_format="channels_last")


def decode_and_resize(encoded: tf.Tensor, resize: int) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 [resize, resize, 3].

    Bilinear without antialiasing, as the authors' tf.image.resize; then rounded to uint8.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, [resize, resize], method="bilinear", antialias=False)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(image, [resize, resize, 3])


def augment(image: tf.Tensor, crop: int, seed: tf.Tensor) -> tf.Tensor:
    """Random crop x crop, then one of the 8 flips/rotations of the square, uniformly.

    The protocol's random left-right flip, up-down flip and rot90 by k in 0..3 (16 equally
    likely combinations) give each of the 8 symmetries of the square with probability 1/8.
    So do an up-down flip, a left-right flip and a transpose, each with probability 1/2,
    with 1.5 copies of the image on average instead of 2.25 (~17 % more images/s here).
    `seed` is a [2] integer tensor; the same seed gives the same result (stateless ops).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    channels = image.shape[-1] if image.shape[-1] is not None else 3
    image = tf.image.stateless_random_crop(image, [crop, crop, channels], seed=seeds[0])
    flip_rows, flip_columns, transpose = tf.unstack(tf.random.stateless_uniform(
        [3], seed=seeds[1], minval=0, maxval=2, dtype=tf.int32) > 0)
    image = tf.cond(flip_rows, lambda: tf.reverse(image, [0]), lambda: image)
    image = tf.cond(flip_columns, lambda: tf.reverse(image, [1]), lambda: image)
    return tf.cond(transpose, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)


def center_crop(image: tf.Tensor, crop: int) -> tf.Tensor:
    """The central crop x crop of an [h, w, c] image (or an [n, h, w, c] batch), offsets
    (h - crop) // 2, (w - crop) // 2, dtype kept.

    tf.image.central_crop takes a fraction, not a size, and keras.layers.CenterCrop casts to
    the layer's compute dtype (and resizes images smaller than the crop): the uint8 cache
    would become floats.
    """
    shape = tf.shape(image)
    return tf.image.crop_to_bounding_box(
        image, (shape[-3] - crop) // 2, (shape[-2] - crop) // 2, crop, crop)


# --- Datasets --------------------------------------------------------------------------------


def filter_examples(examples: tf.data.Dataset, filenames: Sequence[str],
                    filename_key: str = "filename") -> tf.data.Dataset:
    """Keep the examples whose `filename` is in `filenames`, in the order of `examples`."""
    keys = list(dict.fromkeys(filenames))  # a hash table refuses duplicate keys
    if not keys:
        return examples.filter(lambda ex: tf.constant(False))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys, dtype=tf.string), tf.ones([len(keys)], dtype=tf.int32)
        ),
        default_value=0,
    )
    return examples.filter(lambda ex: table.lookup(ex[filename_key]) > 0)


def _count(examples: tf.data.Dataset) -> int:
    n = int(examples.cardinality())
    if n >= 0:
        return n
    # Unknown (e.g. after a filter): count by reading; cheap next to decoding the images.
    return int(examples.reduce(0, lambda acc, _: acc + 1))


def choose_cache(cache: str, cached_bytes: int) -> str:
    """'memory' if the cache fits config.cache_memory_mb() (auto), else 'disk'."""
    if cache not in CACHE_MODES:
        raise ValueError(f"Unknown cache mode {cache!r}. Choose one of: {', '.join(CACHE_MODES)}.")
    if cache != "auto":
        return cache
    return "memory" if cached_bytes <= config.cache_memory_mb() * 2**20 else "disk"


def shuffle_buffer_size(cache_mode: str, n: int, side: int) -> int:
    """Images the training shuffle holds: all `n` when they are cached in memory anyway; else
    a third of what `config.cache_memory_mb()` holds of `side`-px uint8 images, because
    buffered images cost ~1.8x their size in the allocator and decoding, batching and
    prefetching need room too (docs/PERFORMANCE.md, memory)."""
    if cache_mode == "memory":
        return max(1, n)
    return max(1, min(n, config.cache_memory_mb() * 2**20 // (3 * side * side * 3)))


def train_shuffle_buffer(n: int, crop: int, cache: str = "auto") -> int:
    """The shuffle buffer `make_dataset` gives `n` training images at `crop` (for the run's
    params): all of them, a full permutation each epoch, when their cache is in memory; else
    `shuffle_buffer_size`'s window over the disk cache's fixed order, not a full permutation:
    an image comes at most that many places earlier than in that order."""
    side = resize_for_crop(crop)
    return shuffle_buffer_size(choose_cache(cache, n * side * side * 3), n, side)


def _disk_cache_path(cache_path: Path | None, training: bool, side: int, n: int) -> str:
    if cache_path is None:
        # No identity given: a fresh folder, so a stale cache of other images is never read.
        folder = Path(tempfile.mkdtemp(prefix="pipeline-", dir=_mkdir(config.cache_dir())))
        cache_path = folder / "cache"
    Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
    # tf.data reuses a complete file cache without looking at its inputs: the name carries what
    # can tell caches apart here (training caches the resized image, evaluation the crop).
    prefix = f"{cache_path}-{'train' if training else 'eval'}-{side}px-n{n}"
    _remove_incomplete_cache(prefix)
    return prefix


def _remove_incomplete_cache(prefix: str) -> None:
    """Delete what a killed writer left of the file cache `prefix` (no `.index`: incomplete).

    tf.data refuses to write a cache whose lockfile exists ("concurrent caching iterator"), so
    a process killed in its first epoch would otherwise block its own `--resume`. Cache paths
    are per run (`commands`), so no live writer shares this prefix.
    """
    if Path(f"{prefix}.index").exists():
        return
    folder, name = Path(prefix).parent, Path(prefix).name
    for leftover in folder.glob(f"{name}_*"):
        if leftover.name.endswith(".lockfile") or ".tempstate" in leftover.name:
            leftover.unlink(missing_ok=True)


_MALLOC_MMAP_THRESHOLD = 200 * 1024
_malloc_fixed = False


def _fix_malloc_mmap_threshold() -> None:
    """Make glibc map blocks of 200 KiB and more on their own (disk-cached data only).

    glibc raises its mmap threshold each time a large block is freed, after which decode
    buffers (~1 MB per image) and the shuffle buffer's images (256 KiB at crop 256) come from
    per-thread arenas that keep their peak and fragment: a disk-cached dataset held about 2x
    the memory it used. A fixed threshold (which stops the raising) returns such blocks to
    the OS on free; crops (192 KiB) and smaller stay in the arenas, where they are fast. It
    costs ~25% of the pipeline's images/s on a CPU (docs/PERFORMANCE.md, memory), which is
    why in-memory datasets do not use it. Process-wide; Linux/glibc only.
    """
    global _malloc_fixed
    if _malloc_fixed or not sys.platform.startswith("linux"):
        return
    _malloc_fixed = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, _MALLOC_MMAP_THRESHOLD)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_dataset(
    examples: tf.data.Dataset,
    *,
    training: bool,
    crop: int,
    batch_size: int,
    preprocessing: str | None,
    seed: int = SEED,
    cache: CacheMode = "auto",
    cache_path: Path | None = None,
    num_examples: int | None = None,
    label_key: str = "label",
    drop_remainder: bool = False,
    shuffle_buffer: int | None = None,
    deterministic: bool | None = None,
    first_epoch: int = 0,
    epochs: int = 1,
    autotune: bool = True,
) -> tf.data.Dataset:
    """(float32 [b, crop, crop, 3], labels) batches from {image: encoded bytes, label_key: ...}.

    `preprocessing=None`: uint8 batches, for a model that preprocesses its input itself
    (`models.with_preprocessing`).

    Each image is decoded and resized once: the uint8 images are cached (`cache`), so an epoch
    does only crop/flips/rot90 (training) or nothing (evaluation: the central crop is cached)
    plus `preprocessing`.
    Training gives the batches of epochs `first_epoch` .. `first_epoch + epochs - 1` in a row
    (`fit` asks for the epochs it has left). Each epoch is shuffled after the cache with a seed
    drawn from (seed, epoch), and element i of epoch e is augmented with a stateless seed from
    (seed, e, i): the same seed reproduces a run exactly, and a resumed run continues it.
    `cache_path` names a disk cache, unique to the data and to one writer at a time (`commands`
    uses one per run; a killed writer's leftovers are removed); without it a fresh temporary
    folder is used. `deterministic` sets tf.data's
    deterministic option (None: tf.data's default, which is deterministic). `autotune=False`
    turns tf.data's autotuner off (`speed.data_autotune` says when); the batches are the same.
    """
    if preprocessing is not None:
        check_preprocessing(preprocessing)
    resize = resize_for_crop(crop)
    if crop > resize:
        raise ValueError(f"crop {crop} is larger than the resized image {resize}")
    n = num_examples if num_examples is not None else _count(examples)
    # Evaluation only ever uses the central crop: cache it, smaller than the resized image.
    side = resize if training else crop

    def decode(ex: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        image = decode_and_resize(ex["image"], resize)
        if not training:
            image = tf.ensure_shape(center_crop(image, crop), [crop, crop, 3])
        return image, ex[label_key]

    ds = examples.map(decode, num_parallel_calls=AUTOTUNE)
    # A known length lets Keras show progress and size epochs after a filter; a wrong
    # `num_examples` fails loudly at the end of the first pass instead of silently.
    ds = ds.apply(tf.data.experimental.assert_cardinality(n))
    mode = choose_cache(cache, n * side * side * 3)
    if mode == "memory":
        ds = ds.cache()
    elif mode == "disk":
        ds = ds.cache(_disk_cache_path(cache_path, training, side, n))
        _fix_malloc_mmap_threshold()

    if training:
        if shuffle_buffer is None:
            shuffle_buffer = shuffle_buffer_size(mode, n, side)
        shuffle_seed = _derive(seed, "shuffle")
        augment_seed = _derive(seed, "augment")
        batches_per_epoch = n // batch_size if drop_remainder else -(-n // batch_size)

        def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
            # Epoch e's order and augmentation are functions of (seed, e) alone, not of how
            # many epochs this process has iterated: a run resumed at epoch e sees exactly
            # the batches the uninterrupted run saw.
            order_seed = tf.random.stateless_uniform(
                [], seed=tf.stack([shuffle_seed, epoch]), minval=0, maxval=2**62, dtype=tf.int64)
            shuffled = ds.shuffle(max(1, shuffle_buffer), seed=order_seed,
                                  reshuffle_each_iteration=False).enumerate()

            def train_map(index: tf.Tensor, pair: tuple[tf.Tensor, tf.Tensor]):
                image, label = pair
                element_seed = tf.random.experimental.stateless_fold_in(
                    tf.stack([tf.constant(augment_seed, tf.int64), epoch]), index)
                return _maybe_preprocess(augment(image, crop, element_seed), preprocessing), label

            return (shuffled.map(train_map, num_parallel_calls=AUTOTUNE)
                    .batch(batch_size, drop_remainder=drop_remainder))

        ds = tf.data.Dataset.range(first_epoch, first_epoch + epochs).flat_map(epoch_batches)
        ds = ds.apply(tf.data.experimental.assert_cardinality(epochs * batches_per_epoch))
    else:
        if preprocessing is not None:
            ds = ds.map(lambda image, label: (preprocess(image, preprocessing), label),
                        num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    ds = ds.prefetch(AUTOTUNE)
    options = tf.data.Options()
    if not autotune:  # AUTOTUNE then stands for min(16, cores) parallel calls
        options.autotune.enabled = False
    if deterministic is not None:
        options.deterministic = deterministic
    return ds.with_options(options)


def _maybe_preprocess(image: tf.Tensor, mode: str | None) -> tf.Tensor:
    return image if mode is None else preprocess(image, mode)


def _derive(seed: int, purpose: str) -> int:
    """A 63-bit seed from (seed, purpose), stable on every machine (not Python's hash())."""
    digest = hashlib.sha256(f"{seed}\x1f{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
