"""The synthetic datasets: layout as the downloads, quirks, real MLRSNet rows, determinism,
and images that a model can learn and transfer."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rssc_mlflow.data import catalog, synth
from tests.data.real_labels import real_labels_dir

REAL_LABELS = real_labels_dir()
N, SIZE = 10, 64
JPEG, PNG, TIFF = b"\xff\xd8\xff", b"\x89PNG", (b"II*\x00", b"MM\x00*")


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # The spec asks < 20 s on a 2-core machine. No wall-time threshold here: a loaded CI runner
    # is no measurement of it.
    return synth.write_synthetic(tmp_path_factory.mktemp("synth"), images_per_class=N,
                                 image_size=SIZE)


def _magic(path: Path) -> str:
    head = path.read_bytes()[:4]
    return ("jpeg" if head[:3] == JPEG else "png" if head == PNG else
            "tiff" if head in TIFF else "other")


def _images(folder: Path) -> list[Path]:
    """Image files as a prepare step sees them: no dot files, no junk."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name not in ("Thumbs.db", synth.SYNTHETIC_MARKER))


# (key, class folders relative to the manual dir, file name regex given the class, format)
def _class_dir(key: str, root: Path, cls: str) -> Path:
    if key == "rsicb256":
        top = next(t for t, cs in catalog.RSICB256_TOP_FOLDERS.items() if cls in cs)
        return root / "RSI-CB256" / top / cls
    if key.startswith("mlrsnet"):
        return root / "MLRSNet" / "Images" / cls
    if key == "imagenet100":
        return root / "train" / cls
    spec = catalog.get_spec(key)
    return root.joinpath(spec.archive_root, spec.images_dir, cls)


NAMES = {
    "resisc45": (lambda c: rf"{re.escape(c)}_\d{{3}}\.jpg", "jpeg"),
    "patternnet": (lambda c: rf"{re.escape(c)}\d{{3}}\.jpg", "jpeg"),
    "ucm": (lambda c: rf"{re.escape(c)}\d{{2}}\.tif", "tiff"),
    "aid": (lambda c: rf"{c.lower()}_\d+\.jpg", "jpeg"),
    "rsicb256": (lambda c: rf"{re.escape(c)}\(\d+\)\.tif", "tiff"),
    "mlrsnet_sl": (lambda c: rf"{re.escape(c)}_\d{{5}}\.jpg", "jpeg"),
    "imagenet100": (lambda c: rf"{c}_\d+\.JPEG", "jpeg"),
    "whu_rs19": (lambda c: rf"{c.lower()}_\d{{2}}\.jpg", "jpeg"),
    "rsscn7": (lambda c: rf"{c[0]}\d{{3}}\.jpg", "jpeg"),
    "eurosat": (lambda c: rf"{re.escape(c)}_\d+\.jpg", "jpeg"),
}


@pytest.mark.parametrize("key", list(NAMES))
def test_layout_names_formats_and_counts(trees: dict[str, Path], key: str) -> None:
    root = trees[key]
    pattern, fmt = NAMES[key]
    spec = catalog.get_spec(key)
    for cls in spec.classes:
        files = _images(_class_dir(key, root, cls))
        assert len(files) == N, (key, cls)
        for f in files:
            assert re.fullmatch(pattern(cls), f.name), f
            # Quirk files may be PNG behind .jpg; everything else has the original's format.
            assert _magic(f) in ((fmt, "png") if fmt == "jpeg" else (fmt,)), f
    # Nothing but the catalog's class folders (plus ImageNet-1k's other wnids).
    parent = _class_dir(key, root, spec.classes[0]).parent
    if key == "rsicb256":
        found = {d.name for top in (root / "RSI-CB256").iterdir() if top.is_dir()
                 for d in top.iterdir() if d.is_dir()}
        assert {t.name for t in (root / "RSI-CB256").iterdir() if t.is_dir()} == set(
            catalog.RSICB256_TOP_FOLDERS)
    else:
        found = {d.name for d in parent.iterdir() if d.is_dir()}
    extra = set(synth.IMAGENET_EXTRA_WNIDS) if key == "imagenet100" else set()
    assert found == set(spec.classes) | extra


def test_return_value_maps_every_key_to_its_manual_dir(trees: dict[str, Path]) -> None:
    assert set(trees) == set(catalog.CATALOG)
    assert {trees[k] for k in catalog.CATALOG if k.startswith("mlrsnet")} == {
        trees["mlrsnet_sl"]}
    assert trees["mlrsnet_sl"].name == "mlrsnet" and trees["resisc45"].name == "resisc45"
    assert sorted(p.name for p in set(trees.values())) == sorted(synth.TREES)


def test_image_sizes(trees: dict[str, Path]) -> None:
    aid = _images(_class_dir("aid", trees["aid"], "Forest"))
    assert all(Image.open(p).size == (150, 150) for p in aid)  # round(64 * 600 / 256)
    res = _images(_class_dir("resisc45", trees["resisc45"], "forest"))
    assert all(Image.open(p).size == (SIZE, SIZE) for p in res)
    ucm_sizes = Counter(Image.open(p).size for c in catalog.UCM_CLASSES
                        for p in _images(_class_dir("ucm", trees["ucm"], c)))
    assert ucm_sizes[(SIZE, SIZE)] > 0 and len(ucm_sizes) > 1  # a few non-square, like 247 px
    assert (SIZE - 9, SIZE) in ucm_sizes
    # The other datasets' native sides, scaled like AID's: 600 px, 400 px and EuroSAT's 64 px.
    for key, cls, side in (("whu_rs19", "Beach", 150), ("rsscn7", "eForest", 100),
                           ("eurosat", "Forest", 16)):
        files = _images(_class_dir(key, trees[key], cls))
        assert {Image.open(p).size for p in files} == {(side, side)}, key


def test_markers(trees: dict[str, Path]) -> None:
    tops = {"mlrsnet": "MLRSNet", "resisc45": "NWPU-RESISC45", "patternnet": "PatternNet",
            "rsicb256": "RSI-CB256", "aid": "AID", "ucm": "UCMerced_LandUse",
            "imagenet100": "train", "whu_rs19": "WHU-RS19", "rsscn7": "RSSCN7-master",
            "eurosat": "2750"}
    for root in set(trees.values()):
        for folder in (root, root / tops[root.name]):
            marker = json.loads((folder / synth.SYNTHETIC_MARKER).read_text())
            assert marker["synthetic"] is True and marker["generator"] == synth.GENERATOR
            assert (marker["seed"], marker["images_per_class"], marker["image_size"]) == (
                0, N, SIZE)
        assert synth.is_synthetic_tree(root)
    for key in NAMES:  # the folder holding the class folders, at most 2 levels below a marker
        images_dir = _class_dir(key, trees[key], catalog.get_spec(key).classes[0]).parent
        assert synth.is_synthetic_tree(images_dir)
    assert not synth.is_synthetic_tree(trees["ucm"].parent)


def _modes(root: Path) -> Counter[str]:
    return Counter(Image.open(p).mode for p in root.rglob("*") if p.is_file()
                   and p.suffix.lower() in (".jpg", ".jpeg", ".tif") and "__MACOSX" not in p.parts
                   and not p.name.startswith("."))


@pytest.mark.parametrize("tree", synth.TREES)
def test_quirks(trees: dict[str, Path], tree: str) -> None:
    root = next(p for p in trees.values() if p.name == tree)
    modes = _modes(root)
    assert {"L", "CMYK", "P", "RGBA"} <= set(modes), modes
    assert sum(n for m, n in modes.items() if m != "RGB") == 4  # a handful, no more
    if tree not in ("ucm", "rsicb256"):
        assert any(_magic(p) == "png" for p in root.rglob("*.jpg")) or tree == "imagenet100"
    assert (root / "__MACOSX").is_dir()
    assert list(root.rglob(".DS_Store")) and list(root.rglob("Thumbs.db"))
    # A `._name` AppleDouble file next to an image (and one in __MACOSX).
    forks = [p for p in root.rglob("._*") if "__MACOSX" not in p.parts]
    assert forks and all((p.parent / p.name[2:]).is_file() for p in forks)
    # The marker lists every quirk, and each listed file exists.
    marker = json.loads((root / synth.SYNTHETIC_MARKER).read_text())
    assert all((root / q["path"]).is_file() for q in marker["quirks"])


def test_imagenet_png_behind_jpeg_name(trees: dict[str, Path]) -> None:
    assert any(_magic(p) == "png" for p in trees["imagenet100"].rglob("*.JPEG"))


def test_no_quirks(tmp_path: Path) -> None:
    root = synth.write_synthetic(tmp_path, ["ucm"], images_per_class=2, quirks=False)["ucm"]
    assert set(_modes(root)) == {"RGB"}
    assert not (root / "__MACOSX").exists() and not list(root.rglob(".DS_Store"))
    sizes = {Image.open(p).size for p in root.rglob("*.tif")}
    assert sizes == {(SIZE, SIZE)}


# --- MLRSNet labels -----------------------------------------------------------------------
def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_mlrsnet_label_files(trees: dict[str, Path]) -> None:
    root = trees["mlrsnet_ml"] / "MLRSNet"
    csvs = sorted((root / "labels").glob("*.csv"))
    assert [p.stem for p in csvs] == sorted(catalog.MLRSNET_CATEGORIES)
    many = none = 0
    for path in csvs:
        raw = path.read_bytes()
        assert raw.count(b"\r\n") == raw.count(b"\n") == N + 1  # CRLF, header + one per image
        header, *rows = _read_csv(path)
        assert header[0] == "image" and tuple(header[1:]) == catalog.MLRSNET_LABELS
        names = [r[0] for r in rows]
        assert sorted(names) == sorted(p.name for p in _images(root / "Images" / path.stem))
        counts = [sum(map(int, r[1:])) for r in rows]
        many += sum(c > catalog.MLRSNET_MAX_LABELS for c in counts)
        none += counts.count(0)
    assert many >= 1 and none >= 1  # the real anomalies travel with the sample


def test_mlrsnet_rows_are_real(trees: dict[str, Path]) -> None:
    if not REAL_LABELS.is_dir():
        pytest.skip(f"real MLRSNet label files not found at {REAL_LABELS}")
    for path in sorted((trees["mlrsnet_sl"] / "MLRSNet" / "labels").glob("*.csv")):
        real = {r[0]: r for r in _read_csv(REAL_LABELS / path.name)[1:]}
        header, *rows = _read_csv(path)
        assert header == _read_csv(REAL_LABELS / path.name)[0]
        assert all(real[r[0]] == r for r in rows), path.name


def test_labels_sample_is_reproducible_and_small(tmp_path: Path) -> None:
    from importlib import resources

    shipped = resources.files("rssc_mlflow.resources").joinpath(synth.LABELS_SAMPLE)
    assert len(shipped.read_bytes()) < 300_000
    header, rows = synth.labels_sample()
    assert tuple(header[1:]) == catalog.MLRSNET_LABELS
    assert all(len(rows[c]) >= 60 for c in catalog.MLRSNET_CATEGORIES)
    if REAL_LABELS.is_dir():
        synth.build_labels_sample(REAL_LABELS, tmp_path / "s.csv.gz")
        assert (tmp_path / "s.csv.gz").read_bytes() == shipped.read_bytes()


def test_mlrsnet_labels_dirname_and_cap(tmp_path: Path) -> None:
    root = synth.write_synthetic(tmp_path, ["mlrsnet_sl"], images_per_class=500,
                                 image_size=16, mlrsnet_labels_dirname="Labels")["mlrsnet_sl"]
    assert (root / "MLRSNet" / "Labels").is_dir() and not (root / "MLRSNet" / "labels").exists()
    _, sample = synth.labels_sample()
    for cat in ("airplane", "intersection"):
        assert len(_images(root / "MLRSNet" / "Images" / cat)) == len(sample[cat])


# --- Determinism, safety ------------------------------------------------------------------
def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_byte_identical_across_runs(tmp_path: Path) -> None:
    keys = ["ucm", "aid", "mlrsnet_ml", "rsicb256"]
    a = synth.write_synthetic(tmp_path / "a", keys, images_per_class=3, image_size=32, seed=5)
    b = synth.write_synthetic(tmp_path / "b", keys, images_per_class=3, image_size=32, seed=5)
    for key in keys:
        assert _tree_bytes(a[key]) == _tree_bytes(b[key])
    c = synth.write_synthetic(tmp_path / "c", ["ucm"], images_per_class=3, image_size=32, seed=6)
    assert _tree_bytes(c["ucm"]) != _tree_bytes(a["ucm"])


def test_rewrite_replaces_a_synthetic_tree_but_refuses_real_data(tmp_path: Path) -> None:
    synth.write_synthetic(tmp_path, ["ucm"], images_per_class=3, image_size=16)
    root = synth.write_synthetic(tmp_path, ["ucm"], images_per_class=1, image_size=16)["ucm"]
    tifs = [p for p in root.rglob("*.tif") if not p.name.startswith("._")]
    assert len(tifs) == len(catalog.UCM_CLASSES)  # no stale images
    (tmp_path / "aid").mkdir()
    (tmp_path / "aid" / "real.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        synth.write_synthetic(tmp_path, ["aid"])


# --- Learnable and transferable -----------------------------------------------------------
def test_concepts_are_distinct_within_each_dataset() -> None:
    for key in ("mlrsnet_sl", "resisc45", "patternnet", "rsicb256", "aid", "ucm", "whu_rs19",
                "rsscn7", "eurosat"):
        looks = [synth.concept_of(c) or f"own:{c}" for c in catalog.get_spec(key).classes]
        assert len(set(looks)) == len(looks), key
    same = [("forest", "Forest", "forest"), ("storage_tank", "StorageTanks", "storagetanks"),
            ("beach", "sandbeach", "Beach"), ("river", "River", "river"),
            ("harbor", "Port", "harbor&port"), ("airplane", "airplane", "airplane")]
    for names in same:
        assert len({synth.concept_of(n) for n in names}) == 1, names


def _thumb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((16, 16)), np.float32).ravel()


def test_nearest_class_mean_learns_resisc45(trees: dict[str, Path]) -> None:
    classes = catalog.RESISC45_CLASSES
    data = [[_thumb(p) for p in _images(_class_dir("resisc45", trees["resisc45"], c))]
            for c in classes]
    means = np.stack([np.mean(d[: N // 2], axis=0) for d in data])
    tests = [(x, i) for i, d in enumerate(data) for x in d[N // 2:]]
    correct = sum(int(np.argmin(((means - x) ** 2).sum(1)) == i) for x, i in tests)
    assert correct / len(tests) > 0.8


def _mean_colour(folder: Path) -> np.ndarray:
    return np.mean([_thumb(p).reshape(-1, 3).mean(0) for p in _images(folder)], axis=0)


def test_same_concept_looks_alike_across_datasets(trees: dict[str, Path]) -> None:
    res_forest = _mean_colour(_class_dir("resisc45", trees["resisc45"], "forest"))
    aid_forest = _mean_colour(_class_dir("aid", trees["aid"], "Forest"))
    res_plane = _mean_colour(_class_dir("resisc45", trees["resisc45"], "airplane"))
    assert np.linalg.norm(res_forest - aid_forest) < np.linalg.norm(res_forest - res_plane)
    ucm_tank = _mean_colour(_class_dir("ucm", trees["ucm"], "storagetanks"))
    aid_tank = _mean_colour(_class_dir("aid", trees["aid"], "StorageTanks"))
    ucm_beach = _mean_colour(_class_dir("ucm", trees["ucm"], "beach"))
    assert np.linalg.norm(ucm_tank - aid_tank) < np.linalg.norm(ucm_tank - ucm_beach)


def test_imagenet_val_sorted_by_wnid_next_to_train(trees: dict[str, Path]) -> None:
    # val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG beside train/, for all wnids of the tree, numbered
    # across wnids like the official files (builders.imagenet100 reads this layout).
    val = trees["imagenet100"] / synth.IMAGENET_VAL_DIR
    wnids = set(catalog.imagenet100_wnids()) | set(synth.IMAGENET_EXTRA_WNIDS)
    assert {d.name for d in val.iterdir()} == wnids
    numbers = []
    for wnid in wnids:
        files = sorted((val / wnid).iterdir())
        assert len(files) == synth.imagenet_val_per_class(N) == 2
        for f in files:
            assert re.fullmatch(r"ILSVRC2012_val_\d{8}\.JPEG", f.name) and _magic(f) == "jpeg"
            numbers.append(int(f.name[15:23]))
    assert sorted(numbers) == list(range(1, len(wnids) * 2 + 1))
