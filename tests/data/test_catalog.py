"""The catalog against docs/PROTOCOL.md and the real MLRSNet label files."""

from __future__ import annotations

import csv
import hashlib
from importlib import resources
from pathlib import Path

import pytest

from rssc_mlflow.data import catalog
from rssc_mlflow.errors import RsscError
from tests.data.real_labels import real_labels_dir

REAL_LABELS = real_labels_dir()


def _real_label_dir() -> Path:
    if not REAL_LABELS.is_dir():
        pytest.skip(f"real MLRSNet label files not found at {REAL_LABELS}")
    return REAL_LABELS


def _rows_per_category(label_dir: Path) -> dict[str, int]:
    counts = {}
    for path in label_dir.glob("*.csv"):
        with path.open(newline="") as f:
            counts[path.stem] = sum(1 for _ in csv.reader(f)) - 1  # minus the header
    return counts


def test_every_protocol_key_is_in_the_catalog():
    expected = {"mlrsnet_sl", "mlrsnet_ml", "resisc45", "patternnet", "rsicb256", "aid", "ucm",
                "imagenet100", "mlrsnet_ucm_same", "mlrsnet_ucm_other", "mlrsnet_half"}
    assert set(catalog.CATALOG) == expected | set(catalog.EXTRA_KEYS)


def test_datasets_outside_the_paper_stay_out_of_its_tables():
    from rssc_mlflow.results import paper, reproduce

    assert set(catalog.EXTRA_KEYS) == {"whu_rs19", "rsscn7", "eurosat"}
    used = {k for lay in paper.LAYOUTS for c in lay.cells.values() if c for k in
            (c.source, c.target)}
    assert not used & set(catalog.EXTRA_KEYS)
    assert not {k for r in reproduce.plan("paper") for k in (r.source, r.target)} & set(
        catalog.EXTRA_KEYS)
    eurosat = catalog.get_spec("eurosat")
    assert not eurosat.hrrs and "10 m" in eurosat.resolution and "64x64" in eurosat.resolution
    assert all(catalog.get_spec(k).hrrs for k in catalog.CATALOG if k != "eurosat")


@pytest.mark.parametrize("key,classes,images,task", [
    ("mlrsnet_sl", 46, 109_161, "single"), ("mlrsnet_ml", 60, 109_161, "multi"),
    ("resisc45", 45, 31_500, "single"), ("patternnet", 38, 30_400, "single"),
    ("rsicb256", 35, 24_747, "single"), ("aid", 30, 10_000, "single"),
    ("ucm", 21, 2_100, "single"), ("imagenet100", 100, 131_689, "single"),
    ("whu_rs19", 19, 1_005, "single"), ("rsscn7", 7, 2_800, "single"),
    ("eurosat", 10, 27_000, "single"),
])
def test_table_one_facts(key, classes, images, task):
    spec = catalog.get_spec(key)
    assert spec.num_classes == classes
    assert len(set(spec.classes)) == classes  # no duplicates
    assert spec.expected_images == images
    assert spec.task == task
    if spec.expected_per_class:
        assert sum(spec.expected_per_class.values()) == images
        assert set(spec.expected_per_class) == set(spec.classes)


def test_unknown_key_names_the_known_ones():
    with pytest.raises(RsscError, match=r"Unknown dataset 'ucmm'.*ucm"):
        catalog.get_spec("ucmm")


def test_mlrsnet_categories_match_the_label_files():
    counts = _rows_per_category(_real_label_dir())
    assert set(counts) == set(catalog.MLRSNET_CATEGORIES)
    assert counts == catalog.MLRSNET_CATEGORY_COUNTS


def test_mlrsnet_labels_are_the_csv_header_with_typos():
    with (_real_label_dir() / "airplane.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header[1:]) == catalog.MLRSNET_LABELS
    assert "habor" in catalog.MLRSNET_LABELS


def test_subset_sizes_from_the_real_label_files():
    """Tables III/IV: 50,197 same-class, 58,964 other-class, 54,573 half images."""
    counts = _rows_per_category(_real_label_dir())
    same = catalog.get_spec("mlrsnet_ucm_same").categories
    other = catalog.get_spec("mlrsnet_ucm_other").categories
    half = catalog.get_spec("mlrsnet_half")
    assert sum(counts[c] for c in same) == 50_197
    assert sum(counts[c] for c in other) == 58_964
    assert sum(counts[c] // 2 for c in half.categories) == 54_573
    assert set(same).isdisjoint(other) and set(same) | set(other) == set(counts)
    assert catalog.get_spec("mlrsnet_ucm_same").expected_images == 50_197


def test_ucm_mapping_covers_every_ucm_class():
    assert tuple(catalog.UCM_TO_MLRSNET) == catalog.get_spec("ucm").classes
    mapped = [c for cats in catalog.UCM_TO_MLRSNET.values() for c in cats]
    assert len(mapped) == len(set(mapped)) == 21
    assert set(mapped) <= set(catalog.MLRSNET_CATEGORIES)


def test_rsicb_top_folders_hold_every_class_once():
    leaves = [c for cs in catalog.RSICB256_TOP_FOLDERS.values() for c in cs]
    assert sorted(leaves) == sorted(catalog.RSICB256_CLASSES)


# sha256 of the ImageNet-100 list (the CMC paper's 100 wnids) as the project received it.
IMAGENET100_LIST_SHA256 = "79f3f1552ccc478ce24bd934b4573625db584ddc1f4643ae23c994a94cb11397"


def test_imagenet100_list_is_shipped_unchanged():
    wnids = catalog.imagenet100_wnids()
    assert len(wnids) == 100 and all(w.startswith("n") and len(w) == 9 for w in wnids)
    shipped = resources.files("rssc_mlflow.resources").joinpath("imagenet100.txt").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == IMAGENET100_LIST_SHA256


def test_layouts_of_the_datasets_outside_the_paper():
    rsscn7 = catalog.get_spec("rsscn7")
    assert [c[0] for c in rsscn7.classes] == list("abcdefg")  # aGrass ... gParking
    assert "RSSCN7-master/<class>/<letter>NNN.jpg" in rsscn7.expected_layout()
    assert "2750/<class>/<class>_N.jpg" in catalog.get_spec("eurosat").expected_layout()
    assert {"footballField", "railwayStation"} <= set(catalog.get_spec("whu_rs19").classes)
    for key in catalog.EXTRA_KEYS:
        assert catalog.get_spec(key).download_page.startswith("https://")


def test_expected_layout_describes_the_tree():
    assert "UCMerced_LandUse/Images/<class>/<class>NN.tif" in catalog.get_spec("ucm").expected_layout()
    assert "Labels" in catalog.get_spec("mlrsnet_sl").expected_layout()


def test_family_groups_the_mlrsnet_keys_and_only_them():
    mlrsnet = {k for k, spec in catalog.CATALOG.items() if spec.layout == "mlrsnet"}
    assert {"mlrsnet_ml", "mlrsnet_sl", "mlrsnet_half", "mlrsnet_ucm_same"} <= mlrsnet
    assert {catalog.CATALOG[k].family for k in mlrsnet} == {"mlrsnet"}
    for key in set(catalog.CATALOG) - mlrsnet:
        assert catalog.CATALOG[key].family == key, key
