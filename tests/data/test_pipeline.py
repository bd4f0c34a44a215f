"""tf.data pipeline: decoding, resizing, augmentation, preprocessing, caching, determinism."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from rssc_mlflow.data import pipeline
from rssc_mlflow.protocol import IMAGENET_MEANS_RGB, PREPROCESSING_MODES, resize_for_crop

CROP = 16
RESIZE = resize_for_crop(CROP)  # 18


def _images(n: int, seed: int = 0, size: tuple[int, int] = (23, 27)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n)]


def _examples(images: list[np.ndarray], fmt: str = "png", multilabel: bool = False
              ) -> tf.data.Dataset:
    encode = tf.io.encode_png if fmt == "png" else (lambda x: tf.io.encode_jpeg(x, quality=95))
    data: dict[str, list] = {
        "filename": [f"c{i % 3}/img{i:03d}.{fmt}" for i in range(len(images))],
        "image": [encode(tf.constant(im)).numpy() for im in images],
        "label": [i % 3 for i in range(len(images))],
    }
    if multilabel:
        data["labels"] = [[i % 2, 1, 0] for i in range(len(images))]
    return tf.data.Dataset.from_tensor_slices(data)


def _collect(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


# --- preprocess --------------------------------------------------------------------------


def test_preprocess_constant_image_per_mode() -> None:
    image = tf.fill([2, 4, 4, 3], tf.constant(128, tf.uint8))
    np.testing.assert_allclose(pipeline.preprocess(image, "unit").numpy(), 128 / 255, rtol=1e-6)
    rgb = pipeline.preprocess(image, "imagenet-rgb").numpy()
    np.testing.assert_allclose(rgb[0, 0, 0], 128 - np.array(IMAGENET_MEANS_RGB), rtol=1e-6)
    caffe = pipeline.preprocess(image, "imagenet-caffe").numpy()
    np.testing.assert_allclose(caffe[0, 0, 0], 128 - np.array(IMAGENET_MEANS_RGB)[::-1],
                               rtol=1e-6)
    for mode in PREPROCESSING_MODES:
        assert pipeline.preprocess(image, mode).dtype == tf.float32


def test_preprocess_caffe_equals_keras_resnet50() -> None:
    image = np.random.default_rng(1).integers(0, 256, (3, 8, 9, 3)).astype(np.float32)
    ours = pipeline.preprocess(tf.constant(image, tf.uint8), "imagenet-caffe").numpy()
    theirs = keras.applications.resnet50.preprocess_input(image.copy())
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=0, atol=1e-4)
    # the authors' mode keeps RGB order: differs from Keras's as soon as R != B
    assert not np.allclose(pipeline.preprocess(tf.constant(image), "imagenet-rgb"), theirs)


def _caffe_by_hand(image: np.ndarray) -> np.ndarray:
    """RGB -> BGR, minus the ImageNet means in BGR order, in float32 (what the package did by
    hand before it called Keras's preprocess_input)."""
    means_bgr = np.asarray(IMAGENET_MEANS_RGB, np.float32)[::-1]
    return image.astype(np.float32)[..., ::-1] - means_bgr


@pytest.mark.parametrize("shape", [(5, 7, 3), (2, 6, 9, 3)])
def test_preprocess_caffe_is_the_hand_computation_eager_and_in_graphs(
        shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    image.flat[:3] = [0, 255, 17]  # the extremes, and R != B
    expected = _caffe_by_hand(image)
    eager = pipeline.preprocess(tf.constant(image), "imagenet-caffe").numpy()
    assert eager.dtype == np.float32 and eager.shape == shape
    # Bit for bit the former implementation, and the means to 1e-5 by hand in float64.
    np.testing.assert_array_equal(eager, expected)
    means64 = np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(eager, image[..., ::-1].astype(np.float64) - means64,
                               rtol=0, atol=1e-5)
    assert eager.flat[0] == np.float32(image.flat[2]) - np.float32(103.939)  # B first
    graph = tf.function(lambda x: pipeline.preprocess(x, "imagenet-caffe"))(tf.constant(image))
    np.testing.assert_array_equal(graph.numpy(), expected)
    mapped = next(iter(tf.data.Dataset.from_tensors(image).map(
        lambda x: pipeline.preprocess(x, "imagenet-caffe"))))
    np.testing.assert_array_equal(mapped.numpy(), expected)
    # Keras's global image_data_format does not move the channel axis.
    keras.config.set_image_data_format("channels_first")
    try:
        np.testing.assert_array_equal(
            pipeline.preprocess(tf.constant(image), "imagenet-caffe").numpy(), expected)
    finally:
        keras.config.set_image_data_format("channels_last")


def test_preprocess_unknown_mode_lists_modes() -> None:
    with pytest.raises(ValueError, match="unit, imagenet-rgb, imagenet-caffe"):
        pipeline.preprocess(tf.zeros([1, 1, 3]), "torch")


# --- decode, resize, crops ----------------------------------------------------------------


def test_decode_png_exact_and_jpeg_close() -> None:
    image = _images(1, size=(RESIZE, RESIZE))[0]
    png = pipeline.decode_and_resize(tf.io.encode_png(image), RESIZE)
    assert png.dtype == tf.uint8 and png.shape == (RESIZE, RESIZE, 3)
    np.testing.assert_array_equal(png.numpy(), image)  # same size: bilinear is the identity
    smooth = np.repeat(np.linspace(0, 255, RESIZE, dtype=np.uint8)[None, :, None], RESIZE, 0)
    smooth = np.repeat(smooth, 3, axis=2)
    jpeg = pipeline.decode_and_resize(tf.io.encode_jpeg(smooth, quality=95), RESIZE).numpy()
    assert jpeg.dtype == np.uint8 and jpeg.shape == (RESIZE, RESIZE, 3)
    assert np.abs(jpeg.astype(int) - smooth).mean() < 3


def test_decode_resizes_to_any_size_and_grey_to_rgb() -> None:
    grey = np.random.default_rng(2).integers(0, 256, (30, 41, 1), dtype=np.uint8)
    out = pipeline.decode_and_resize(tf.io.encode_png(grey), 37).numpy()
    assert out.shape == (37, 37, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_resize_follows_resize_for_crop() -> None:
    assert resize_for_crop(256) == 292
    images = _images(4)
    ds = pipeline.make_dataset(_examples(images), training=False, crop=CROP, batch_size=4,
                               preprocessing="unit", cache="none")
    x, _ = _collect(ds)
    off = (RESIZE - CROP) // 2
    for i, im in enumerate(images):
        resized = pipeline.decode_and_resize(tf.io.encode_png(im), RESIZE).numpy()
        expected = resized[off:off + CROP, off:off + CROP] / 255
        np.testing.assert_allclose(x[i], expected, atol=1e-6)


@pytest.mark.parametrize("shape,crop", [((18, 18, 3), 16), ((19, 25, 3), 16), ((7, 7, 3), 4),
                                        ((8, 9, 3), 3), ((9, 8, 1), 4), ((5, 5, 3), 5)])
def test_center_crop_is_the_numpy_slice(shape: tuple[int, int, int], crop: int) -> None:
    image = np.arange(np.prod(shape)).reshape(shape)
    top, left = (shape[0] - crop) // 2, (shape[1] - crop) // 2
    np.testing.assert_array_equal(pipeline.center_crop(tf.constant(image), crop).numpy(),
                                  image[top:top + crop, left:left + crop])


def test_center_crop_keeps_uint8_batches_and_unknown_shapes() -> None:
    images = np.random.default_rng(6).integers(0, 256, (2, 11, 14, 3), dtype=np.uint8)
    expected = images[:, 3:8, 4:9]  # offsets (11 - 5) // 2 and (14 - 5) // 2
    batch = pipeline.center_crop(tf.constant(images), 5)
    assert batch.dtype == tf.uint8
    np.testing.assert_array_equal(batch.numpy(), expected)
    # Inside a graph whose image sizes are unknown until run time, as in the tf.data map.
    traced = tf.function(lambda x: pipeline.center_crop(x, 5),
                         input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    for image, want in zip(images, expected):
        out = traced(tf.constant(image))
        assert out.dtype == tf.uint8 and out.shape == (5, 5, 3)
        np.testing.assert_array_equal(out.numpy(), want)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        pipeline.center_crop(tf.constant(images[0]), 12)  # larger than the image: no silent cut


def _dihedral(image: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(f, k) for f in (image, image[:, ::-1]) for k in range(4)]


def test_augment_is_a_crop_up_to_flips_and_rotations() -> None:
    image = _images(1, size=(RESIZE, RESIZE))[0]
    seen = set()
    for s in range(24):
        out = pipeline.augment(tf.constant(image), CROP, tf.constant([s, 7])).numpy()
        assert out.shape == (CROP, CROP, 3) and out.dtype == np.uint8
        matches = [
            (top, left, j)
            for top, left in itertools.product(range(RESIZE - CROP + 1), repeat=2)
            for j, t in enumerate(_dihedral(image[top:top + CROP, left:left + CROP]))
            if np.array_equal(t, out)
        ]
        assert matches, "the output is not a flipped/rotated crop of the input"
        crop = image[matches[0][0]:matches[0][0] + CROP, matches[0][1]:matches[0][1] + CROP]
        # flips and rot90 only permute pixels
        np.testing.assert_array_equal(np.sort(out.reshape(-1, 3), axis=0),
                                      np.sort(crop.reshape(-1, 3), axis=0))
        seen.add(matches[0][2])
    assert len(seen) >= 5  # the eight flips/rotations are all reachable


def test_augment_same_seed_same_output() -> None:
    image = tf.constant(_images(1, size=(RESIZE, RESIZE))[0])
    a = pipeline.augment(image, CROP, tf.constant([3, 4])).numpy()
    b = pipeline.augment(image, CROP, tf.constant([3, 4])).numpy()
    np.testing.assert_array_equal(a, b)
    others = [pipeline.augment(image, CROP, tf.constant([s, 4])).numpy() for s in range(5, 9)]
    assert any(not np.array_equal(a, o) for o in others)


# --- make_dataset ------------------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [None, False])
@pytest.mark.parametrize("training", [True, False])
def test_autotune_false_turns_tf_datas_autotuner_off_and_keeps_the_batches(
        training: bool, deterministic: bool | None) -> None:
    def batches(autotune: bool) -> tuple[tf.data.Dataset, list]:
        ds = pipeline.make_dataset(_examples(_images(5)), training=training, crop=CROP,
                                   batch_size=2, preprocessing=None, cache="memory",
                                   deterministic=deterministic, autotune=autotune)
        return ds, [(x.numpy(), y.numpy()) for x, y in ds]

    off, off_batches = batches(False)
    on, on_batches = batches(True)
    assert off.options().autotune.enabled is False
    assert off.map(lambda x, y: x).options().autotune.enabled is False  # what predict is given
    assert on.options().autotune.enabled is None  # tf.data's default: on
    assert off.options().deterministic is deterministic
    if deterministic is None:
        assert len(off_batches) == len(on_batches) == 3
        for (x_off, y_off), (x_on, y_on) in zip(off_batches, on_batches, strict=True):
            np.testing.assert_array_equal(x_off, x_on)
            np.testing.assert_array_equal(y_off, y_on)


@pytest.mark.parametrize("training", [True, False])
def test_make_dataset_shapes_and_dtypes(training: bool) -> None:
    ds = pipeline.make_dataset(_examples(_images(7)), training=training, crop=CROP, batch_size=3,
                               preprocessing="imagenet-rgb", cache="memory")
    batches = [(x.numpy(), y.numpy()) for x, y in ds]
    assert [b[0].shape for b in batches] == [(3, CROP, CROP, 3)] * 2 + [(1, CROP, CROP, 3)]
    assert all(b[0].dtype == np.float32 and b[1].dtype == np.int32 for b in batches)
    assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == sorted(
        [i % 3 for i in range(7)])
    dropped = pipeline.make_dataset(_examples(_images(7)), training=training, crop=CROP,
                                    batch_size=3, preprocessing="unit", cache="none",
                                    drop_remainder=True)
    assert dropped.element_spec[0].shape == (3, CROP, CROP, 3)
    assert sum(1 for _ in dropped) == 2


def test_make_dataset_multilabel_key() -> None:
    ds = pipeline.make_dataset(_examples(_images(4), multilabel=True), training=True, crop=CROP,
                               batch_size=4, preprocessing="unit", label_key="labels")
    _, y = _collect(ds)
    assert y.shape == (4, 3)


def _epochs(examples: tf.data.Dataset, seed: int, *, first_epoch: int = 0, epochs: int = 2,
            batch_size: int = 8, **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    """The training stream's epochs, one (images, labels) pair each (8 images, batch 8)."""
    ds = pipeline.make_dataset(examples, training=True, crop=CROP, batch_size=batch_size,
                               preprocessing="unit", seed=seed, first_epoch=first_epoch,
                               epochs=epochs, deterministic=True, **kwargs)
    assert int(ds.cardinality()) == epochs * -(-8 // batch_size)
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_training_is_seeded_reshuffled_and_reproducible() -> None:
    examples = _examples(_images(8))
    (a1, ya1), (a2, ya2) = _epochs(examples, 5, cache="memory")
    (b1, yb1), (b2, yb2) = _epochs(examples, 5, cache="memory")
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    np.testing.assert_array_equal(ya1, yb1)
    np.testing.assert_array_equal(ya2, yb2)
    assert not np.array_equal(a1, a2)  # each epoch is shuffled and augmented anew
    assert ya1.tolist() != ya2.tolist() and sorted(ya1) == sorted(ya2)  # a new order, same images
    (c1, _), _ = _epochs(examples, 6, cache="memory")
    assert not np.array_equal(a1, c1)


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_an_epoch_depends_on_its_number_not_on_what_was_read_before(cache: str,
                                                                    tmp_path: Path) -> None:
    """What a resumed run relies on: epoch 3 read alone equals epoch 3 of the whole stream."""
    examples = _examples(_images(8))
    stream = _epochs(examples, 5, epochs=4, batch_size=3, cache=cache,
                     cache_path=tmp_path / "whole")
    alone = _epochs(examples, 5, first_epoch=2, epochs=2, batch_size=3, cache=cache,
                    cache_path=tmp_path / "resumed")
    assert len(stream) == 4 * 3 and len(alone) == 2 * 3  # batches of 3, 3 and 2 per epoch
    for (x, y), (xr, yr) in zip(stream[6:], alone):
        np.testing.assert_array_equal(x, xr)
        np.testing.assert_array_equal(y, yr)
    assert not np.array_equal(stream[0][0], alone[0][0])


def test_a_killed_writers_disk_cache_is_rebuilt(tmp_path: Path) -> None:
    """tf.data refuses a cache whose lockfile exists; a kill -9 in epoch 1 leaves one."""
    examples = _examples(_images(8))
    prefix = tmp_path / f"cache-train-{RESIZE}px-n8"
    Path(f"{prefix}_0.lockfile").write_text("Created at: 0")
    Path(f"{prefix}_0.data-00000-of-00001.tempstate123").write_bytes(b"partial")
    expected = _epochs(examples, 5, cache="none")
    got = _epochs(examples, 5, cache="disk", cache_path=tmp_path / "cache")
    for (x, y), (xr, yr) in zip(got, expected):
        np.testing.assert_array_equal(x, xr)
        np.testing.assert_array_equal(y, yr)
    assert Path(f"{prefix}.index").exists() and not Path(f"{prefix}_0.lockfile").exists()
    # a complete cache is read, not rebuilt (even if the source is gone)
    again = _epochs(examples.take(0), 5, cache="disk", cache_path=tmp_path / "cache",
                    num_examples=8)
    np.testing.assert_array_equal(again[1][0], expected[1][0])


# A writer of the training disk cache that stops (blocks) after its 3rd image, mid-epoch 1,
# and says so on its stdout: the test then kill -9s it there, lockfile and partial file in place.
BLOCKED_WRITER = textwrap.dedent("""
    import sys, time
    import tensorflow as tf
    from pathlib import Path
    from rssc_mlflow.data import pipeline
    from tests.data.test_pipeline import CROP, _examples, _images

    whole = list(_examples(_images(8)).as_numpy_iterator())

    def source():
        for i, example in enumerate(whole):
            if i == 3:
                print("blocked after 3 images", flush=True)
                time.sleep(600)  # until killed
            yield example

    spec = {"filename": tf.TensorSpec((), tf.string), "image": tf.TensorSpec((), tf.string),
            "label": tf.TensorSpec((), tf.int64)}
    examples = tf.data.Dataset.from_generator(source, output_signature=spec)
    ds = pipeline.make_dataset(examples, training=True, crop=CROP, batch_size=2,
                               preprocessing="unit", seed=5, epochs=2, deterministic=True,
                               cache="disk", cache_path=Path(sys.argv[1]), num_examples=8)
    for _ in ds:
        pass
""")


@pytest.mark.slow
def test_a_disk_cache_writer_killed_for_real_is_rebuilt(tmp_path: Path) -> None:
    """kill -9 of a real process while it writes the disk cache in epoch 1; the next reader
    of that cache removes what it left, rebuilds it and reads the same epochs as no cache."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_WRITER, str(tmp_path / "cache")],
                            cwd=root, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    prefix = tmp_path / f"cache-train-{RESIZE}px-n8"
    lockfile = Path(f"{prefix}_0.lockfile")
    try:
        out = []
        for line in proc.stdout:  # a pipe line: cannot be missed
            out.append(line)
            if line.startswith("blocked"):
                break
        assert proc.poll() is None, "".join(out)[-3000:]
        # The writer is blocked, so the lockfile it takes with its first image stays put.
        deadline = time.monotonic() + 60
        while not lockfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lockfile.exists(), sorted(p.name for p in tmp_path.iterdir())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not Path(f"{prefix}.index").exists()  # it died mid-write
    examples = _examples(_images(8))
    expected = _epochs(examples, 5, cache="none")
    got = _epochs(examples, 5, cache="disk", cache_path=tmp_path / "cache")
    for (x, y), (xr, yr) in zip(got, expected):
        np.testing.assert_array_equal(x, xr)
        np.testing.assert_array_equal(y, yr)
    assert Path(f"{prefix}.index").exists() and not lockfile.exists()


def test_eval_is_deterministic_and_ordered() -> None:
    examples = _examples(_images(5))
    ds = pipeline.make_dataset(examples, training=False, crop=CROP, batch_size=2,
                               preprocessing="unit", cache="memory")
    (x1, y1), (x2, y2) = _collect(ds), _collect(ds)
    np.testing.assert_array_equal(x1, x2)
    assert y1.tolist() == [0, 1, 2, 0, 1] == y2.tolist()


def test_cache_modes_give_identical_eval_outputs(tmp_path: Path) -> None:
    examples = _examples(_images(5, seed=3), fmt="jpeg")
    outputs = {}
    for mode in ("none", "memory", "disk"):
        ds = pipeline.make_dataset(examples, training=False, crop=CROP, batch_size=2,
                                   preprocessing="imagenet-caffe", cache=mode,
                                   cache_path=tmp_path / "eval")
        outputs[mode] = [_collect(ds) for _ in range(2)]  # 2nd pass reads the cache
    assert any(p.name.startswith("eval-") for p in tmp_path.iterdir())
    for mode in ("memory", "disk"):
        for (x, y), (xr, yr) in zip(outputs[mode], outputs["none"]):
            np.testing.assert_array_equal(x, xr)
            np.testing.assert_array_equal(y, yr)


def test_disk_cache_without_path_uses_a_fresh_folder(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSSC_CACHE_DIR", str(tmp_path / "cache"))
    ds = pipeline.make_dataset(_examples(_images(3)), training=True, crop=CROP, batch_size=3,
                               preprocessing="unit", cache="disk")
    assert _collect(ds)[0].shape == (3, CROP, CROP, 3)
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_auto_cache_follows_the_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSSC_CACHE_MEMORY_MB", "1")
    assert pipeline.choose_cache("auto", 2**20) == "memory"
    assert pipeline.choose_cache("auto", 2**20 + 1) == "disk"
    assert pipeline.choose_cache("none", 10) == "none"
    with pytest.raises(ValueError, match="auto, memory, disk, none"):
        pipeline.choose_cache("ram", 1)


def test_filter_examples_keeps_listed_in_order() -> None:
    examples = _examples(_images(6))
    kept = pipeline.filter_examples(examples, ["c2/img005.png", "c0/img000.png",
                                               "c0/img000.png", "nope.png"])
    assert [ex["filename"].numpy().decode() for ex in kept] == ["c0/img000.png",
                                                                "c2/img005.png"]
    assert sum(1 for _ in pipeline.filter_examples(examples, [])) == 0
    # the count of a filtered dataset is unknown to tf.data: make_dataset counts it itself
    ds = pipeline.make_dataset(kept, training=True, crop=CROP, batch_size=4,
                               preprocessing="unit")
    assert _collect(ds)[0].shape[0] == 2
    assert int(ds.cardinality()) == 1


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mode", PREPROCESSING_MODES)
def test_uint8_batches_preprocessed_later_equal_the_float_pipeline(training: bool,
                                                                   mode: str) -> None:
    """`preprocessing=None` (what runs use): the same crops, flips and order, as uint8;
    preprocessing them afterwards (in the model) gives the float pipeline's batches exactly."""
    examples = _examples(_images(7))
    common = dict(training=training, crop=CROP, batch_size=3, cache="memory", seed=11,
                  epochs=2 if training else 1, deterministic=True)
    raw = list(pipeline.make_dataset(examples, preprocessing=None, **common))
    done = list(pipeline.make_dataset(examples, preprocessing=mode, **common))
    assert len(raw) == len(done) == (6 if training else 3)
    for (x8, y8), (xf, yf) in zip(raw, done):
        assert x8.dtype == tf.uint8
        np.testing.assert_array_equal(y8.numpy(), yf.numpy())
        np.testing.assert_array_equal(pipeline.preprocess(x8, mode).numpy(), xf.numpy())


def test_shuffle_buffer_is_a_third_of_the_memory_budget_for_disk_caches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSSC_CACHE_MEMORY_MB", "300")
    image = 292 * 292 * 3  # bytes of one cached image at crop 256
    assert pipeline.shuffle_buffer_size("disk", 100_000, 292) == 300 * 2**20 // (3 * image)
    assert pipeline.shuffle_buffer_size("disk", 100_000, 292) == 409  # by hand: 100 MiB / 255,792 B = 409.9
    assert pipeline.shuffle_buffer_size("disk", 50, 292) == 50  # never more than the data
    assert pipeline.shuffle_buffer_size("none", 100_000, 292) == 409
    assert pipeline.shuffle_buffer_size("memory", 100_000, 292) == 100_000


def test_disk_cache_fixes_the_malloc_mmap_threshold(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    calls: list[int] = []
    monkeypatch.setattr(pipeline, "_fix_malloc_mmap_threshold", lambda: calls.append(1))
    for cache in ("memory", "none"):
        pipeline.make_dataset(_examples(_images(3)), training=True, crop=CROP, batch_size=3,
                              preprocessing=None, cache=cache)
    assert calls == []  # in-memory data keeps glibc's faster default
    pipeline.make_dataset(_examples(_images(3)), training=True, crop=CROP, batch_size=3,
                          preprocessing=None, cache="disk", cache_path=tmp_path / "c")
    assert calls == [1]


def test_augment_draws_the_eight_symmetries_of_the_square_uniformly() -> None:
    """What flips + rot90 by k in 0..3 give: each symmetry with probability 1/8."""
    image = _images(1, size=(CROP, CROP))[0]  # crop = image: the crop offset is always 0
    symmetries = _dihedral(image)
    assert len({t.tobytes() for t in symmetries}) == 8
    draws = 1600
    counts = np.zeros(8, int)
    for s in range(draws):
        out = pipeline.augment(tf.constant(image), CROP, tf.constant([s, 99])).numpy()
        counts[[np.array_equal(out, t) for t in symmetries].index(True)] += 1
    # Binomial(1600, 1/8): mean 200, sd 13.2; 5 sd either side fails a broken draw only.
    assert counts.min() > 200 - 66 and counts.max() < 200 + 66, counts


def test_train_shuffle_buffer_is_what_make_dataset_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    # The run logs this buffer (commands._data_params): the same rule make_dataset applies.
    monkeypatch.setenv("RSSC_CACHE_MEMORY_MB", "300")
    assert pipeline.train_shuffle_buffer(1_000, 256) == 1_000  # 245 MiB cached: in memory
    assert pipeline.train_shuffle_buffer(100_000, 256) == 409  # on disk: a window of it
    assert pipeline.train_shuffle_buffer(100_000, 256, cache="memory") == 100_000
    assert pipeline.train_shuffle_buffer(50, 256, cache="disk") == 50


def test_malloc_mmap_threshold_is_set_through_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # Loud: glibc's mallopt accepts M_MMAP_THRESHOLD (returns 1 on success).
    assert libc.mallopt(-3, pipeline._MALLOC_MMAP_THRESHOLD) == 1
    # The fallback: a libc without mallopt leaves malloc as it is, and the call does not fail.
    monkeypatch.setattr(pipeline, "_malloc_fixed", False)
    monkeypatch.setattr(pipeline.ctypes, "CDLL", lambda name: object())
    pipeline._fix_malloc_mmap_threshold()
    assert pipeline._malloc_fixed
