"""prepare / load_prepared / status end to end, on synthetic trees and small broken ones."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from rssc_mlflow.data import catalog
from rssc_mlflow.data import prepare as prep
from rssc_mlflow.data.prepare import PrepareReport, load_prepared, prepare, status
from rssc_mlflow.errors import DatasetError
from tests.data.conftest import IMAGES_PER_CLASS, copy_tree, truncate, write_image

N = IMAGES_PER_CLASS
ALL_KEYS = ("mlrsnet_sl", "mlrsnet_ml", "resisc45", "patternnet", "rsicb256", "aid", "ucm",
            "imagenet100", "mlrsnet_ucm_same", "mlrsnet_ucm_other", "mlrsnet_half",
            "whu_rs19", "rsscn7", "eurosat")
EXPECTED_IMAGES = {
    "mlrsnet_sl": 46 * N, "mlrsnet_ml": 46 * N, "resisc45": 45 * N, "patternnet": 38 * N,
    "rsicb256": 35 * N, "aid": 30 * N, "ucm": 21 * N, "imagenet100": 100 * N,
    "mlrsnet_ucm_same": 21 * N, "mlrsnet_ucm_other": 25 * N, "mlrsnet_half": 46 * (N // 2),
    "whu_rs19": 19 * N, "rsscn7": 7 * N, "eurosat": 10 * N,
}


def _read_all(key: str) -> list[dict[str, object]]:
    return [{k: v.numpy() for k, v in ex.items()} for ex in load_prepared(key).examples()]


@pytest.fixture(scope="module")
def reports(module_data_env: Path, synth_trees: dict[str, Path]) -> dict[str, PrepareReport]:
    """Every key prepared once from the synthetic trees (MLRSNet is built once, for the first)."""
    return {key: prepare(key, synth_trees[key]) for key in ALL_KEYS}


# --- happy paths ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ALL_KEYS)
def test_prepare_every_dataset(reports: dict[str, PrepareReport], key: str) -> None:
    spec = catalog.get_spec(key)
    report = reports[key]
    assert report.images == EXPECTED_IMAGES[key] and report.classes == spec.num_classes
    assert report.synthetic and report.skipped == []
    assert "a synthetic stand-in; kept" in report.count_note
    if not spec.multilabel:
        per = N // 2 if spec.fraction < 1 else N
        assert report.per_class == {c: per for c in spec.classes}
    ds = load_prepared(key)
    assert ds.synthetic and ds.manifest_digest == report.manifest_digest
    rows = _read_all(key)
    by_name = {r.filename: r for r in ds.records}
    assert len(rows) == len(by_name) == report.images
    for row in rows:
        record = by_name[row["filename"].decode()]
        assert row["label"] == record.label and 0 <= record.label < spec.num_classes
        if spec.multilabel:
            assert tuple(row["labels"]) == record.labels
    image = tf.io.decode_image(rows[0]["image"], expand_animations=False).numpy()
    assert image.dtype == np.uint8 and image.shape[-1] == 3


def test_first_prepare_reports_not_already(reports: dict[str, PrepareReport]) -> None:
    assert not reports["ucm"].already_prepared
    # The MLRSNet views after the first reuse the one stored MLRSNet dataset.
    assert not reports["mlrsnet_sl"].already_prepared
    assert reports["mlrsnet_half"].already_prepared
    assert len({reports[k].path for k in ALL_KEYS if k.startswith("mlrsnet")}) == 1


def test_report_json(reports: dict[str, PrepareReport]) -> None:
    data = json.loads(json.dumps(reports["rsicb256"].to_json()))
    for field in ("key", "images", "classes", "per_class", "skipped", "synthetic",
                  "expected_images", "count_note", "anomalies", "manifest_digest", "path",
                  "already_prepared"):
        assert field in data
    assert data["count_note"].startswith(f"found {35 * N} images, the catalog expects 24,747")


def test_mlrsnet_anomalies_reported(reports: dict[str, PrepareReport]) -> None:
    anomalies = reports["mlrsnet_ml"].anomalies
    assert anomalies["more_than_max_labels"] >= 1 and anomalies["no_labels"] >= 1
    assert anomalies["more_than_max_labels_examples"][0].startswith("Images/")


def test_all_images_decode_to_rgb_and_ucm_keeps_sizes(reports: dict[str, PrepareReport]) -> None:
    shapes = set()
    for key in ("ucm", "resisc45", "rsicb256"):
        for row in _read_all(key):
            image = tf.io.decode_image(row["image"], expand_animations=False).numpy()
            assert image.shape[-1] == 3
            if key == "ucm":
                shapes.add(image.shape[:2])
    assert (16, 16) in shapes and len(shapes) > 1  # the odd UCM sizes are kept


def test_images_stored_losslessly(reports: dict[str, PrepareReport],
                                  synth_trees: dict[str, Path]) -> None:
    rows = {r["filename"].decode(): r["image"] for r in _read_all("resisc45")}
    root = synth_trees["resisc45"] / "NWPU-RESISC45"
    formats = set()
    for name, data in rows.items():
        if data[:2] == b"\xff\xd8":
            assert data == (root / name).read_bytes()  # clean JPEG: the original bytes
        formats.add(data[:4])
    assert b"\x89PNG" in formats  # quirk images were re-encoded


def test_subset_labels_reindexed(reports: dict[str, PrepareReport]) -> None:
    for key in ("mlrsnet_ucm_same", "mlrsnet_ucm_other", "mlrsnet_half"):
        spec = catalog.get_spec(key)
        ds = load_prepared(key)
        assert {r.category for r in ds.records} == set(spec.classes)
        assert all(spec.classes[r.label] == r.category for r in ds.records)
    same = {r.filename for r in load_prepared("mlrsnet_ucm_same").records}
    other = {r.filename for r in load_prepared("mlrsnet_ucm_other").records}
    assert not same & other
    assert same | other == {r.filename for r in load_prepared("mlrsnet_sl").records}


def test_mlrsnet_ml_matches_label_csvs(reports: dict[str, PrepareReport],
                                       synth_trees: dict[str, Path]) -> None:
    csv = (synth_trees["mlrsnet_ml"] / "MLRSNet" / "labels" / "airport.csv").read_text()
    row = csv.splitlines()[1].split(",")
    record = next(r for r in load_prepared("mlrsnet_ml").records
                  if r.filename == f"Images/airport/{row[0]}")
    assert record.labels == tuple(int(v) for v in row[1:])
    assert record.category == "airport" and record.label == 1


def test_rerun_is_a_noop(reports: dict[str, PrepareReport], synth_trees: dict[str, Path]) -> None:
    again = prepare("ucm", synth_trees["ucm"])
    assert again.already_prepared and again.manifest_digest == reports["ucm"].manifest_digest
    assert again.images == reports["ucm"].images


def test_manifest_lists_sources_only(reports: dict[str, PrepareReport]) -> None:
    manifest = load_prepared("mlrsnet_sl").manifest()
    paths = [e.path for e in manifest.files]
    assert len(paths) == 46 * N + 46 and "labels/airplane.csv" in paths
    assert not any("__MACOSX" in p or "/._" in p or "DS_Store" in p for p in paths)
    assert manifest.digest == reports["mlrsnet_sl"].manifest_digest


def test_status(reports: dict[str, PrepareReport]) -> None:
    rows = {r["key"]: r for r in status()}
    assert set(rows) == set(catalog.CATALOG)
    for key in ALL_KEYS:
        assert rows[key]["prepared"] and rows[key]["synthetic"]
        assert rows[key]["images"] == EXPECTED_IMAGES[key]


# --- where the manual dir points, and spellings ---------------------------------------------------
def test_top_folder_or_containing_folder_same_digest(data_env: Path,
                                                     synth_trees: dict[str, Path]) -> None:
    inner = prepare("ucm", synth_trees["ucm"] / "UCMerced_LandUse")
    outer = prepare("ucm", synth_trees["ucm"], force=True)
    assert not outer.already_prepared and inner.manifest_digest == outer.manifest_digest


def test_labels_folder_capitalised(data_env: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from rssc_mlflow.data.synth import write_synthetic

    tree = write_synthetic(tmp_path / "s", ["mlrsnet_sl"], images_per_class=1, image_size=16,
                           mlrsnet_labels_dirname="Labels")["mlrsnet_sl"]
    capsys.readouterr()
    report = prepare("mlrsnet_sl", tree / "MLRSNet")
    assert capsys.readouterr().out == ""  # stdout stays clean for `rssc prepare --json`
    assert report.images == 46
    assert "Labels/airplane.csv" in [e.path for e in load_prepared("mlrsnet_sl").manifest().files]


def test_not_prepared_message(data_env: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset 'ucm' is not prepared: run `rssc prepare "
                                           r"ucm --manual-dir DIR` \(download: http"):
        load_prepared("ucm")
    assert not any(r["prepared"] for r in status())


# --- errors -------------------------------------------------------------------------------------
def test_missing_class(data_env: Path, tree_factory: Callable[..., Path]) -> None:
    tree = tree_factory("ucm", drop=("beach", "river"))
    with pytest.raises(DatasetError, match=r"2 class folder\(s\) missing.*'beach', 'river'.*"
                                           r"Expected layout.*UCMerced_LandUse/Images/<class>/"):
        prepare("ucm", tree)


def test_unknown_class_folder(data_env: Path, tree_factory: Callable[..., Path]) -> None:
    tree = tree_factory("aid", extra=("Volcano",))
    with pytest.raises(DatasetError, match=r"unknown class folder.*'Volcano'.*Expected layout.*"
                                           r"AID/<class>/"):
        prepare("aid", tree)


def test_wrong_layout_flat_files(data_env: Path, tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "flat" / f"agricultural{i:02d}.tif")
    with pytest.raises(DatasetError, match=r"No UC Merced Land Use class folders found.*"
                                           r"Expected layout.*agricultural00.tif"):
        prepare("ucm", tmp_path / "flat")


def test_wrong_layout_one_level_rsicb(data_env: Path, tree_factory: Callable[..., Path]) -> None:
    # RSI-CB laid out like a one-level dataset: the top categories are missing.
    tree = tree_factory("resisc45")
    with pytest.raises(DatasetError, match=r"<top category>/<class>.*two levels"):
        prepare("rsicb256", tree)


def test_manual_dir_missing(data_env: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"is not a folder.*gcheng"):
        prepare("resisc45", tmp_path / "nope")


def test_mlrsnet_image_without_row_and_row_without_image(
        data_env: Path, tmp_path: Path, synth_trees: dict[str, Path]) -> None:
    tree = copy_tree(synth_trees["mlrsnet_sl"], tmp_path / "copy")
    images = tree / "MLRSNet" / "Images" / "beach"
    write_image(images / "beach_99999.jpg")
    victim = sorted(p for p in (tree / "MLRSNet" / "Images" / "lake").glob("lake_*.jpg"))[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) without a row.*Images/beach/"
                                           rf"beach_99999.jpg.*row\(s\) without an image: "
                                           rf"'lake.csv: {victim.name}'"):
        prepare("mlrsnet_ml", tree)


def test_corrupt_image_named_then_skipped(data_env: Path, tmp_path: Path,
                                          synth_trees: dict[str, Path]) -> None:
    tree = copy_tree(synth_trees["ucm"], tmp_path / "copy")
    bad = tree / "UCMerced_LandUse" / "Images" / "forest" / "forest01.tif"
    truncate(bad)
    with pytest.raises(DatasetError, match=r"1 image\(s\) of 'ucm' cannot be decoded.*"
                                           r"'forest/forest01.tif'.*--skip-corrupt"):
        prepare("ucm", tree)
    with pytest.raises(DatasetError, match="not prepared"):
        load_prepared("ucm")
    report = prepare("ucm", tree, skip_corrupt=True)
    assert report.skipped == ["forest/forest01.tif"] and report.images == 21 * N - 1
    assert report.per_class["forest"] == N - 1 and "1 damaged file(s) skipped" in report.count_note
    ds = load_prepared("ucm")
    assert [s["filename"] for s in ds.metadata["skipped"]] == ["forest/forest01.tif"]
    assert "forest/forest01.tif" not in {r.filename for r in ds.records}
    assert len(_read_all("ucm")) == 21 * N - 1


def test_failed_force_keeps_previous_version(data_env: Path, tmp_path: Path,
                                             synth_trees: dict[str, Path]) -> None:
    tree = copy_tree(synth_trees["ucm"], tmp_path / "copy")
    good = prepare("ucm", tree)
    truncate(tree / "UCMerced_LandUse" / "Images" / "river" / "river00.tif")
    with pytest.raises(DatasetError, match="river/river00.tif"):
        prepare("ucm", tree, force=True)
    ds = load_prepared("ucm")
    assert ds.manifest_digest == good.manifest_digest and len(ds.records) == good.images
    assert len(_read_all("ucm")) == good.images
    assert not any((data_env / "tfds" / ".staging").iterdir())


class _Interrupt(Exception):
    pass


def _interrupt_while_encoding(message: str) -> None:
    if message.startswith("encoding"):
        raise _Interrupt(message)


def test_interrupted_prepare_leaves_nothing_loadable(data_env: Path,
                                                     synth_trees: dict[str, Path]) -> None:
    with pytest.raises(_Interrupt):
        prepare("aid", synth_trees["aid"], progress=_interrupt_while_encoding)
    with pytest.raises(DatasetError, match="not prepared"):
        load_prepared("aid")
    assert not any((data_env / "tfds" / ".staging").iterdir())
    assert not prepare("aid", synth_trees["aid"]).already_prepared  # a clean retry works


def _prepare_killed_at(line_part: str, manual: Path, env: dict[str, str], cwd: Path) -> str:
    """Run `rssc prepare aid` as a user does and SIGKILL it once it prints `line_part` (read
    from its pipe: a line cannot be missed however slow the machine). Returns what it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "rssc_mlflow.cli", "prepare", "aid",
                             "--manual-dir", str(manual)], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line_part in line:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]  # killed, not finished
    return "".join(seen)


@pytest.mark.slow
def test_prepare_killed_by_sigkill_mid_write_then_prepare_again(data_env: Path, tmp_path: Path):
    """A real `rssc prepare` SIGKILLed while TFDS writes its examples, and again after the
    shards are written but before our manifest and marker: neither half-written dataset is
    taken for a whole one, and the next prepare removes what they left and succeeds."""
    from rssc_mlflow.data.synth import write_synthetic

    manual = write_synthetic(tmp_path / "synth", keys=["aid"], images_per_class=3,
                             image_size=32, seed=1)["aid"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    staging = data_env / "tfds" / ".staging"
    for when in ("encoding 1/", "aid: writing manifest"):
        _prepare_killed_at(when, manual, env, tmp_path)
        assert [p.name.split("-")[0] for p in staging.iterdir()] == ["rssc_aid"], when
        with pytest.raises(DatasetError, match="not prepared"):
            load_prepared("aid")
        assert not (data_env / "tfds" / "rssc_aid").exists()  # nothing in the final place
    report = prepare("aid", manual)
    assert not report.already_prepared
    assert len(load_prepared("aid").records) == 90
    assert list(staging.iterdir()) == []  # the killed writers' folders were removed


def test_crash_before_marker_is_not_complete(data_env: Path, synth_trees: dict[str, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A crash after TFDS finished but before our files and marker: simulate by failing the swap,
    # and by deleting the marker of a finished dataset.
    def boom(built: Path, final: Path) -> None:
        shutil.copytree(built, final)  # even a half-moved copy ...
        (final / prep.COMPLETE_FILE).unlink()  # ... without the marker is refused
        raise _Interrupt("killed")

    real_swap = prep._swap
    monkeypatch.setattr(prep, "_swap", boom)
    with pytest.raises(_Interrupt):
        prepare("ucm", synth_trees["ucm"])
    with pytest.raises(DatasetError, match="not prepared"):
        load_prepared("ucm")
    monkeypatch.setattr(prep, "_swap", real_swap)  # not undo(): that also resets data_env
    report = prepare("ucm", synth_trees["ucm"])  # not mistaken for a finished one
    assert not report.already_prepared and load_prepared("ucm").records


def test_memory_bound_spills_to_disk_and_writes_the_same_shards(
        data_env: Path, synth_trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """RSSC_PREPARE_MEMORY_MB=0: TFDS's shuffler writes every example to temporary buckets
    instead of holding them (prepare's RSS stays flat), and the prepared shards are identical."""
    from tensorflow_datasets.core import shuffle

    def shards() -> dict[str, bytes]:
        folder = prep.prepared_dir("ucm")
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tfrecord*"))}

    spilled: list[int] = []
    original_add = shuffle._Bucket.add
    monkeypatch.setattr(shuffle._Bucket, "add",
                        lambda self, key, data: (spilled.append(1), original_add(self, key, data)))
    prepare("ucm", synth_trees["ucm"])
    assert spilled == []  # the default bound (1,000 MB) holds a small dataset in memory
    in_memory = shards()
    monkeypatch.setenv("RSSC_PREPARE_MEMORY_MB", "0")
    prepare("ucm", synth_trees["ucm"], force=True)
    assert len(spilled) == EXPECTED_IMAGES["ucm"]
    assert shards() == in_memory and in_memory
    assert shuffle.MAX_MEM_BUFFER_SIZE == 1000 << 20  # TFDS's constant restored


# --- the authors' data handling as switches (README, "Faithful by default") ------------------
def test_with_val_real_counts_add_up() -> None:
    # The paper's 131,689 = 126,689 train images + 50 val images of each of the 100 wnids.
    spec = catalog.get_spec("imagenet100")
    assert spec.num_classes * catalog.IMAGENET_VAL_PER_CLASS == 5_000
    assert catalog.IMAGENET100_TRAIN_IMAGES + 5_000 == spec.expected_images == 131_689


@pytest.fixture(scope="module")
def small_trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """imagenet100 (3 train + 1 val per wnid), ucm and rsicb256 (1 image per class)."""
    from rssc_mlflow.data.synth import write_synthetic

    out = tmp_path_factory.mktemp("small")
    trees = write_synthetic(out / "in", ["imagenet100"], images_per_class=N, image_size=16)
    trees.update(write_synthetic(out / "tiff", ["ucm", "rsicb256"], images_per_class=1,
                                 image_size=16))
    return trees


def test_with_val_adds_the_val_images(data_env: Path, small_trees: dict[str, Path]) -> None:
    from rssc_mlflow.data.synth import imagenet_val_per_class

    val = imagenet_val_per_class(N)
    assert val == 1  # fewer than the train images: a mix-up of the two parts shows
    spec = catalog.get_spec("imagenet100")
    plain = prepare("imagenet100", small_trees["imagenet100"])
    with_val = prepare("imagenet100", small_trees["imagenet100"], with_val=True)
    assert not with_val.already_prepared  # other options than the prepared version: rebuilt
    assert with_val.images - plain.images == 100 * val == with_val.anomalies["val_images"]
    assert with_val.per_class == {w: N + val for w in spec.classes}
    ds = load_prepared("imagenet100")
    added = [r for r in ds.records if r.filename.startswith("val/")]
    assert len(added) == 100 * val
    for r in added:  # val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG, labelled by its wnid folder
        _, wnid, name = r.filename.split("/")
        assert spec.classes[r.label] == wnid and name.startswith("ILSVRC2012_val_")
    assert not any(r.filename.split("/")[1] in synth_extra() for r in added)
    # Recorded: manifest options (so the digest differs), metadata, report.
    assert ds.manifest().options == (("with_val", True),) and ds.options == {"with_val": True}
    assert with_val.options == {"with_val": True} and plain.options == {}
    assert ds.manifest_digest == with_val.manifest_digest != plain.manifest_digest
    assert len(_read_all("imagenet100")) == with_val.images
    assert prepare("imagenet100", small_trees["imagenet100"], with_val=True).already_prepared
    back = prepare("imagenet100", small_trees["imagenet100"])  # without: the train part again
    assert not back.already_prepared and back.manifest_digest == plain.manifest_digest


def synth_extra() -> set[str]:
    from rssc_mlflow.data.synth import IMAGENET_EXTRA_WNIDS

    return set(IMAGENET_EXTRA_WNIDS)


def test_with_val_refused_elsewhere_and_without_val_folder(
        data_env: Path, tmp_path: Path, small_trees: dict[str, Path]) -> None:
    with pytest.raises(DatasetError, match=r"imagenet100 only\. Received: ucm\."):
        prepare("ucm", small_trees["ucm"], with_val=True)
    tree = copy_tree(small_trees["imagenet100"], tmp_path / "copy")
    val = tree / "val"
    for f in val.rglob("*.JPEG"):  # the official archive's flat folder
        f.rename(val / f.name)
    for d in [d for d in val.iterdir() if d.is_dir()]:
        d.rmdir()
    with pytest.raises(DatasetError, match=r"holds no wnid folders \(\d+ ILSVRC2012_val_\* "
                                           r"files.*valprep"):
        prepare("imagenet100", tree, with_val=True)
    shutil.rmtree(val)
    with pytest.raises(DatasetError, match=r"--with-val: no 'val' folder next to"):
        prepare("imagenet100", tree, with_val=True)
    assert prepare("imagenet100", tree).images == 100 * N  # without it: no val needed


@pytest.mark.parametrize("key", ["ucm", "rsicb256"])
def test_tiff_as_jpeg(data_env: Path, small_trees: dict[str, Path], key: str) -> None:
    import io

    from PIL import Image

    lossless = prepare(key, small_trees[key])
    lossless_rows = {r["filename"].decode(): r["image"] for r in _read_all(key)}
    lossless_files = load_prepared(key).manifest().files
    report = prepare(key, small_trees[key], tiff_as_jpeg=60)
    assert not report.already_prepared and report.options == {"tiff_as_jpeg": 60}
    ds = load_prepared(key)
    assert ds.manifest().options == (("tiff_as_jpeg", 60),)
    assert ds.metadata["options"] == {"tiff_as_jpeg": 60}
    assert report.manifest_digest != lossless.manifest_digest
    assert ds.manifest().files == lossless_files  # the same sources, only the option added
    root = Path(ds.metadata["source"])
    rows = {r["filename"].decode(): r["image"] for r in _read_all(key)}
    assert rows.keys() == lossless_rows.keys()
    checked = 0
    for name, data in rows.items():
        assert data[:2] == b"\xff\xd8", name  # every TIFF, of any mode, is now a JPEG
        with Image.open(root / name) as src:
            if src.mode != "RGB":
                continue
            # An independent encode-decode at that quality gives the same pixels.
            out = io.BytesIO()
            src.convert("RGB").save(out, "JPEG", quality=60)
        ours = tf.io.decode_jpeg(data).numpy()
        assert np.array_equal(ours, tf.io.decode_jpeg(out.getvalue()).numpy()), name
        assert not np.array_equal(ours, tf.io.decode_image(lossless_rows[name]).numpy()), name
        checked += 1
    assert checked >= len(rows) - 4  # all but the four quirk images (non-RGB TIFFs)
    from rssc_mlflow.data.verify import verify

    assert verify(key).ok  # the manifest with options still agrees with metadata and marker
    assert prepare(key, small_trees[key], tiff_as_jpeg=60).already_prepared
    assert not prepare(key, small_trees[key], tiff_as_jpeg=90).already_prepared


@pytest.mark.parametrize("quality", [0, 96, -5, 100])
def test_tiff_as_jpeg_quality_out_of_range(data_env: Path, small_trees: dict[str, Path],
                                           quality: int) -> None:
    with pytest.raises(DatasetError, match=rf"quality from 1 to 95\. Received: {quality}\."):
        prepare("ucm", small_trees["ucm"], tiff_as_jpeg=quality)


def test_tiff_as_jpeg_refused_for_jpeg_datasets(data_env: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"TIFF datasets \(rsicb256, ucm\); 'aid' is not one\. "
                                           r"Received: aid\."):
        prepare("aid", tmp_path, tiff_as_jpeg=75)


def test_tfds_memory_bound_sets_the_constant_tfds_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    from tensorflow_datasets.core import shuffle

    # Loud: the constant is TFDS's private bound; an upgrade that drops or stops reading it
    # must be seen here (prepare then keeps TFDS's default bound, same shards).
    assert isinstance(shuffle.MAX_MEM_BUFFER_SIZE, int), "TFDS dropped MAX_MEM_BUFFER_SIZE"
    assert "MAX_MEM_BUFFER_SIZE" in inspect.getsource(shuffle.Shuffler), \
        "TFDS's Shuffler no longer reads MAX_MEM_BUFFER_SIZE"
    default = shuffle.MAX_MEM_BUFFER_SIZE
    with prep._tfds_memory_bound(3):
        assert shuffle.MAX_MEM_BUFFER_SIZE == 3 << 20
    assert shuffle.MAX_MEM_BUFFER_SIZE == default
    monkeypatch.delattr(shuffle, "MAX_MEM_BUFFER_SIZE")  # the fallback: nothing to bound
    with prep._tfds_memory_bound(3):
        assert not hasattr(shuffle, "MAX_MEM_BUFFER_SIZE")
