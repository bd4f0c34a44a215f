"""Scanning, validation and decoding of the builders, without running a TFDS build."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rssc_mlflow.data import catalog
from rssc_mlflow.data.builders import builder_class, tfds_name
from rssc_mlflow.data.builders.common import Item, encode_image, is_junk, process_all
from rssc_mlflow.data.builders.folder_per_class import scan_folder_per_class, scan_two_level
from rssc_mlflow.data.builders.imagenet100 import scan_imagenet
from rssc_mlflow.data.builders.mlrsnet import half_selection, scan_mlrsnet
from rssc_mlflow.errors import DatasetError
from tests.data.conftest import IMAGES_PER_CLASS, copy_tree, jpeg_bytes, truncate, write_image


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# --- decoding ---------------------------------------------------------------------------------
def test_clean_rgb_jpeg_is_stored_as_is() -> None:
    data = jpeg_bytes("RGB")
    assert encode_image(data) == data


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_non_rgb_jpeg_becomes_rgb_png(mode: str) -> None:
    out = _decode(encode_image(jpeg_bytes(mode)))
    assert (out.format, out.mode) == ("PNG", "RGB")


@pytest.mark.parametrize("mode,fmt", [("P", "PNG"), ("RGBA", "PNG"), ("RGBA", "TIFF"),
                                      ("L", "TIFF"), ("RGB", "TIFF")])
def test_decoded_by_content_to_rgb(tmp_path: Path, mode: str, fmt: str) -> None:
    # PNG behind a .jpg name, TIFFs of every mode: all end up as lossless RGB PNG.
    path = write_image(tmp_path / "x.jpg", mode=mode, fmt=fmt, size=(17, 11))
    out = _decode(encode_image(path.read_bytes()))
    assert (out.format, out.mode, out.size) == ("PNG", "RGB", (17, 11))


def test_rgb_tiff_is_lossless(tmp_path: Path) -> None:
    path = write_image(tmp_path / "x.tif")
    original = np.asarray(Image.open(path))
    assert np.array_equal(np.asarray(_decode(encode_image(path.read_bytes()))), original)


def test_16_bit_tiff_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    path = tmp_path / "x.tif"
    Image.fromarray(arr).save(path)
    out = np.asarray(_decode(encode_image(path.read_bytes())))
    assert out.shape == (4, 4, 3) and 120 < out.mean() < 135


def test_truncated_image_fails_a_full_decode(tmp_path: Path) -> None:
    path = truncate(write_image(tmp_path / "x.jpg", size=(64, 64)))
    with pytest.raises(OSError):
        encode_image(path.read_bytes())
    done = list(process_all([Item(path=path, filename="x.jpg", label=0)], workers=2))
    assert done[0].encoded is None and done[0].error and done[0].size == path.stat().st_size


def test_kept_jpeg_is_refused_exactly_when_a_full_size_decode_fails() -> None:
    """A kept JPEG is checked at 1/8 scale (faster); it must catch every damage a full decode
    catches: cuts anywhere, and runs of 0xFF bytes written over the entropy-coded data."""
    data = jpeg_bytes("RGB", size=256)
    damaged = [data[:cut] for cut in (*range(400, len(data), 1500), len(data) - 1)]
    for pos in range(1000, len(data) - 100, 2500):
        damaged.append(data[:pos] + b"\xff" * 16 + data[pos + 16:])
    refused = {True: 0, False: 0}
    for bad in damaged:
        try:
            _decode(bad)
            full_fails = False
        except OSError:
            full_fails = True
        try:
            assert encode_image(bad) == bad
            ours_fails = False
        except OSError:
            ours_fails = True
        assert ours_fails == full_fails, (len(bad), full_fails)
        refused[full_fails] += 1
    assert refused[True] >= 40  # the comparison covered many damaged files


def test_process_all_keeps_order(tmp_path: Path) -> None:
    items = [Item(path=write_image(tmp_path / f"{i}.png", seed=i), filename=str(i), label=i)
             for i in range(40)]
    assert [p.item.label for p in process_all(items, workers=2)] == list(range(40))


def test_junk_names() -> None:
    for name in (".DS_Store", "Thumbs.db", "__MACOSX", "._a.jpg", "RSSC_SYNTHETIC.json"):
        assert is_junk(name)
    assert not is_junk("harbor&port_00001.jpg")


# --- scanning -------------------------------------------------------------------------------
def test_scan_accepts_top_folder_and_containing_folder(synth_trees: dict[str, Path]) -> None:
    spec = catalog.get_spec("ucm")
    outer = scan_folder_per_class(spec, synth_trees["ucm"])
    inner = scan_folder_per_class(spec, synth_trees["ucm"] / "UCMerced_LandUse")
    assert outer.root == inner.root and outer.root.name == "Images"
    assert [i.filename for i in outer.items] == [i.filename for i in inner.items]
    assert outer.items[0].filename == "agricultural/agricultural00.tif"
    assert outer.synthetic and inner.synthetic


def test_scan_ignores_junk(synth_trees: dict[str, Path]) -> None:
    plan = scan_folder_per_class(catalog.get_spec("resisc45"), synth_trees["resisc45"])
    names = [i.filename for i in plan.items]
    assert len(names) == 45 * IMAGES_PER_CLASS
    assert not any("__MACOSX" in n or "/._" in n or n.endswith((".DS_Store", ".db"))
                   for n in names)


def test_scan_renamed_top_folder(tmp_path: Path, synth_trees: dict[str, Path]) -> None:
    tree = copy_tree(synth_trees["aid"], tmp_path / "copy")
    (tree / "AID").rename(tree / "AID-v2")
    plan = scan_folder_per_class(catalog.get_spec("aid"), tree)
    assert plan.root.name == "AID-v2" and len(plan.items) == 30 * IMAGES_PER_CLASS


def test_two_level_spaces_ampersand_and_leaf_classes(synth_trees: dict[str, Path]) -> None:
    plan = scan_two_level(catalog.get_spec("rsicb256"), synth_trees["rsicb256"])
    assert len(plan.items) == 35 * IMAGES_PER_CLASS
    names = {i.filename for i in plan.items}
    assert "transportation & facilities/airplane/airplane(1).tif" in names
    assert {i.label for i in plan.items} == set(range(35))


def test_two_level_duplicate_class_refused(tmp_path: Path, synth_trees: dict[str, Path]) -> None:
    tree = copy_tree(synth_trees["rsicb256"], tmp_path / "copy")
    write_image(tree / "RSI-CB256" / "other land" / "airplane" / "airplane(9).tif")
    with pytest.raises(DatasetError, match=r"two top categories.*airplane"):
        scan_two_level(catalog.get_spec("rsicb256"), tree)


def test_imagenet_ignores_unlisted_wnids(synth_trees: dict[str, Path]) -> None:
    plan = scan_imagenet(catalog.get_spec("imagenet100"), synth_trees["imagenet100"])
    assert len(plan.items) == 100 * IMAGES_PER_CLASS
    assert not any(i.filename.startswith("n15075141") for i in plan.items)
    assert plan.root.name == "train"


def test_mlrsnet_scan_labels_and_anomalies(synth_trees: dict[str, Path]) -> None:
    plan = scan_mlrsnet(synth_trees["mlrsnet_sl"])
    assert len(plan.items) == 46 * IMAGES_PER_CLASS
    assert len(plan.label_files) == 46 and plan.label_files[0] == "labels/airplane.csv"
    item = plan.items[0]
    assert item.filename.startswith("Images/airplane/airplane_") and item.category == 0
    assert item.labels is not None and len(item.labels) == 60
    assert plan.anomalies["more_than_max_labels"] >= 1 and plan.anomalies["no_labels"] >= 1


def test_mlrsnet_csv_with_bom_and_lf(tmp_path: Path, synth_trees: dict[str, Path]) -> None:
    tree = copy_tree(synth_trees["mlrsnet_sl"], tmp_path / "copy")
    csv = tree / "MLRSNet" / "labels" / "airplane.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes().replace(b"\r\n", b"\n"))
    assert len(scan_mlrsnet(tree).items) == 46 * IMAGES_PER_CLASS


def test_mlrsnet_bad_header_named(tmp_path: Path, synth_trees: dict[str, Path]) -> None:
    tree = copy_tree(synth_trees["mlrsnet_sl"], tmp_path / "copy")
    csv = tree / "MLRSNet" / "labels" / "beach.csv"
    csv.write_bytes(csv.read_bytes().replace(b"habor", b"harbor", 1))
    with pytest.raises(DatasetError, match=r"labels/beach.csv.*'harbor' \(expected 'habor'\)"):
        scan_mlrsnet(tree)


def test_half_selection_is_floor_half_and_stable() -> None:
    by_cat = {"a": [f"Images/a/a_{i:05d}.jpg" for i in range(7)],
              "b": [f"Images/b/b_{i:05d}.jpg" for i in range(4)]}
    chosen = half_selection(by_cat)
    assert sum(f.startswith("Images/a/") for f in chosen) == 3
    assert sum(f.startswith("Images/b/") for f in chosen) == 2
    assert half_selection({k: list(reversed(v)) for k, v in by_cat.items()}) == chosen


@pytest.mark.parametrize("key", ["mlrsnet_sl", "mlrsnet_half", "resisc45", "patternnet",
                                 "rsicb256", "aid", "ucm", "imagenet100"])
def test_tfds_names_match_builders(key: str) -> None:
    cls = builder_class(key)
    assert cls.name == tfds_name(key)


# --- the authors' data handling as switches ---------------------------------------------------
def test_imagenet_with_val_adds_sorted_val_folder(synth_trees: dict[str, Path]) -> None:
    from rssc_mlflow.data.synth import imagenet_val_per_class

    spec = catalog.get_spec("imagenet100")
    plan = scan_imagenet(spec, synth_trees["imagenet100"], with_val=True)
    val = [i for i in plan.items if i.filename.startswith("val/")]
    assert len(plan.items) - len(val) == 100 * IMAGES_PER_CLASS and plan.root.name == "train"
    per_class = {w: 0 for w in spec.classes}
    for item in val:
        wnid = item.filename.split("/")[1]
        assert spec.classes[item.label] == wnid and item.path.parent.parent.name == "val"
        per_class[wnid] += 1
    assert set(per_class.values()) == {imagenet_val_per_class(IMAGES_PER_CLASS)}
    assert "val_classes_off" not in plan.anomalies  # not checked on a stand-in


def test_tiff_as_jpeg_reencodes_tiffs_only(tmp_path: Path) -> None:
    tiff = write_image(tmp_path / "x.tif", size=(20, 12)).read_bytes()
    out = _decode(encode_image(tiff, tiff_as_jpeg=80))
    expected = io.BytesIO()
    Image.open(io.BytesIO(tiff)).save(expected, "JPEG", quality=80)
    assert out.format == "JPEG" and out.size == (20, 12)
    assert np.array_equal(np.asarray(out), np.asarray(_decode(expected.getvalue())))
    grey = write_image(tmp_path / "g.tif", mode="L").read_bytes()
    assert _decode(encode_image(grey, tiff_as_jpeg=80)).mode == "RGB"
    jpeg = jpeg_bytes("RGB")
    assert encode_image(jpeg, tiff_as_jpeg=80) == jpeg  # not a TIFF: stored as before
    png = write_image(tmp_path / "p.png").read_bytes()
    assert _decode(encode_image(png, tiff_as_jpeg=80)).format == "PNG"


def test_imagenet_val_folder_named_like_the_archive(tmp_path: Path,
                                                    synth_trees: dict[str, Path]) -> None:
    tree = copy_tree(synth_trees["imagenet100"], tmp_path / "copy")
    (tree / "val").rename(tree / "ILSVRC2012_img_val")
    plan = scan_imagenet(catalog.get_spec("imagenet100"), tree, with_val=True)
    assert plan.root.name == "train"  # never the val folder, though it holds the same wnids
    val = [i for i in plan.items if "ILSVRC2012_img_val" in i.path.parts]
    assert val and all(i.filename.startswith("val/") for i in val)
