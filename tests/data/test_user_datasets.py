"""Your own dataset as a key (`rssc datasets add`): layouts of one's own, class names with
spaces, capitals and non-ASCII letters, the spec and its digest, prepare, and every refusal
with its message."""

from __future__ import annotations

import hashlib
import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rssc_mlflow.cli import app
from rssc_mlflow.data import catalog
from rssc_mlflow.data import user_datasets as ud
from rssc_mlflow.data.synth import write_custom_tree
from rssc_mlflow.errors import DatasetError, RsscError
from rssc_mlflow.tracking import registry
from tests.data.conftest import write_image

runner = CliRunner()
# Not a catalog layout: classes at different depths, grouped by folders that are no class.
FOLDERS = ["vegetation/Dense Forest", "vegetation/Grünland", "built up/Urban Area",
           "Wasser/See und Fluss"]
CLASSES = ("Dense Forest", "Grünland", "See und Fluss", "Urban Area")
PER_CLASS = 5


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return write_custom_tree(tmp_path / "my data", FOLDERS, images_per_class=PER_CLASS,
                             image_size=16)


# --- add, the spec and its digest -----------------------------------------------------------


def test_add_a_tree_of_ones_own(data_env: Path, tree: Path) -> None:
    (tree / "vegetation" / "overview.jpg").write_bytes((tree / "vegetation" / "Dense Forest" /
                                                        "Dense Forest_001.jpg").read_bytes())
    dataset = ud.add("my_tiles", tree, description="Tiles of my region")
    assert dataset.classes == CLASSES  # sorted, leaf names only, exactly as written
    assert dataset.per_class == {c: PER_CLASS for c in CLASSES}
    assert dataset.images == PER_CLASS * len(CLASSES) and dataset.task == "single"
    assert dataset.class_dirs["See und Fluss"] == "Wasser/See und Fluss"
    assert dataset.ignored == 1  # the image beside class folders belongs to no class
    stored = json.loads(ud.spec_path("my_tiles").read_text(encoding="utf-8"))
    assert stored["classes"] == list(CLASSES) and stored["digest"] == dataset.digest
    spec = catalog.get_spec("my_tiles")
    assert (spec.origin, spec.spec_digest, spec.classes) == ("user", dataset.digest, CLASSES)
    assert spec.expected_images == 20 and spec.title == "Tiles of my region"
    assert "my_tiles" in catalog.all_specs() and "my_tiles" not in catalog.CATALOG
    # As a source it names its registered backbone, like a catalog key (none registered yet).
    with pytest.raises(RsscError, match=r"rssc pretrain --source my_tiles --profile smoke"):
        registry.resolve_source("my_tiles", profile="smoke")


def test_digest_names_the_data_not_its_place(data_env: Path, tree: Path, tmp_path: Path) -> None:
    first = ud.add("my_tiles", tree)
    ud.remove("my_tiles")
    moved = shutil.copytree(tree, tmp_path / "elsewhere")
    again = ud.add("my_tiles", moved)
    assert again.digest == first.digest and again.manual_dir != first.manual_dir
    ud.remove("my_tiles")
    (moved / "vegetation" / "Grünland" / "Grünland_001.tif").unlink()  # the TIFF class
    fewer = ud.add("my_tiles", moved)
    assert fewer.digest != first.digest and fewer.per_class["Grünland"] == PER_CLASS - 1


def test_class_names_are_nfc(data_env: Path, tmp_path: Path) -> None:
    decomposed = unicodedata.normalize("NFD", "Grünland")
    for name in (decomposed, "Acker"):
        write_image(tmp_path / "t" / name / "a.png")
    assert ud.add("nfc_tree", tmp_path / "t").classes == ("Acker", "Grünland")


def test_spec_edited_by_hand_is_refused(data_env: Path, tree: Path) -> None:
    ud.add("my_tiles", tree)
    path = ud.spec_path("my_tiles")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["classes"] = data["classes"][::-1]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"was edited after `rssc datasets add`.*remove "
                                           r"my_tiles"):
        catalog.get_spec("my_tiles")


def test_unknown_key_lists_yours(data_env: Path, tree: Path) -> None:
    ud.add("my_tiles", tree)
    with pytest.raises(DatasetError, match=r"Unknown dataset 'my_tile'.*ucm.*Your datasets: "
                                           r"my_tiles.*rssc datasets add"):
        catalog.get_spec("my_tile")


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,message", [
    ("ucm", r"'ucm' is a catalog dataset \(UC Merced Land Use\); choose another name"),
    ("imagenet", r"'imagenet' is reserved"), ("scratch", r"'scratch' is reserved"),
    ("mlrsnet", r"'mlrsnet' is reserved"),
    ("My Tiles", r"Invalid dataset name 'My Tiles': use lowercase letters, digits and '_'"),
    ("1tiles", r"Invalid dataset name"), ("my-tiles", r"Invalid dataset name"),
])
def test_names_refused(data_env: Path, tree: Path, name: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        ud.add(name, tree)
    assert not ud.spec_dir().exists() or not list(ud.spec_dir().iterdir())


def test_name_taken(data_env: Path, tree: Path) -> None:
    ud.add("my_tiles", tree)
    with pytest.raises(DatasetError, match=r"already registered.*rssc datasets remove my_tiles"):
        ud.add("my_tiles", tree)


def test_one_class_refused(data_env: Path, tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "flat" / f"{i}.jpg")
    with pytest.raises(DatasetError, match=r"Only 1 class found in .*'flat'.*at least two.*"
                                           r"leaf folder"):
        ud.add("flat", tmp_path / "flat")
    write_image(tmp_path / "one" / "region" / "Forest" / "a.jpg")
    with pytest.raises(DatasetError, match=r"Only 1 class found .*\('Forest'\)"):
        ud.add("one", tmp_path / "one")


def test_empty_class_refused(data_env: Path, tree: Path) -> None:
    empty = tree / "built up" / "Bare Soil"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"junk")  # junk is no image
    (empty / "notes.txt").write_text("no images yet")
    with pytest.raises(DatasetError, match=r"Empty class folder\(s\).*'Bare Soil \(at built "
                                           r"up/Bare Soil\)' hold no image"):
        ud.add("my_tiles", tree)


def test_ambiguous_leaf_names_refused(data_env: Path, tree: Path) -> None:
    write_image(tree / "built up" / "Dense Forest" / "x.jpg")
    with pytest.raises(DatasetError, match=r"Ambiguous class folders.*'Dense Forest' at "
                                           r"'built up/Dense Forest', 'vegetation/Dense Forest'"):
        ud.add("my_tiles", tree)


def test_control_characters_refused(data_env: Path, tree: Path) -> None:
    write_image(tree / "Wasser" / "Sea\nLake" / "x.jpg")
    with pytest.raises(DatasetError, match=r"contains a control character"):
        ud.add("my_tiles", tree)


def test_missing_folder_and_task_options(data_env: Path, tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"is not a folder"):
        ud.add("my_tiles", tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"--task multi needs --labels-csv"):
        ud.add("my_tiles", tree, task="multi")
    with pytest.raises(DatasetError, match=r"--labels-csv is for multi-label data"):
        ud.add("my_tiles", tree, task="single", labels_csv=tmp_path / "x.csv")
    with pytest.raises(DatasetError, match=r"Invalid --task 'both'"):
        ud.add("my_tiles", tree, task="both")


# --- multi-label CSV ------------------------------------------------------------------------

LABELS = ("Bäume", "Gebäude", "Wasser Fläche")


def _csv_tree(root: Path) -> tuple[Path, Path]:
    """Images in two folders and a CSV: bare names for some rows, paths for others."""
    rows = [("tiles/a/0001.jpg", "1,0,0"), ("0002.jpg", "1,1,0"), ("tiles/a/0003.jpg", "0,1,1"),
            ("0004.jpg", "0,0,1"), ("tiles/b/0005.jpg", "1,0,1"), ("0006.jpg", "0,1,0")]
    for i, (name, _) in enumerate(rows):
        folder = "a" if i < 3 else "b"
        write_image(root / "tiles" / folder / Path(name).name, seed=i)
    csv_path = root.parent / "labels.csv"
    text = "image," + ",".join(LABELS) + "\r\n" + "".join(f"{n},{v}\r\n" for n, v in rows)
    csv_path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # a spreadsheet's BOM and CRLF
    return root, csv_path


def test_add_a_multilabel_csv(data_env: Path, tmp_path: Path) -> None:
    root, csv_path = _csv_tree(tmp_path / "ml")
    dataset = ud.add("my_labels", root, labels_csv=csv_path)
    assert dataset.task == "multi" and dataset.classes == LABELS and dataset.images == 6
    assert dataset.per_class == {"Bäume": 3, "Gebäude": 3, "Wasser Fläche": 3}
    assert ud._labels_copy("my_labels").read_bytes() == csv_path.read_bytes()
    assert dataset.labels_csv_sha256 == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    csv_path.write_text("changed")  # the kept copy is what prepare reads
    plan = ud.scan("my_labels", None)
    got = {i.filename: i.labels for i in plan.items}
    assert got["tiles/a/0002.jpg"] == (1, 1, 0) and got["tiles/b/0006.jpg"] == (0, 1, 0)
    assert {i.filename: i.label for i in plan.items}["tiles/a/0003.jpg"] == 1  # first positive


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("0,0,1", "0,2,1"), r"line 5: expected a file name and 3 values of 0 or 1"),
    (lambda t: t.replace("0,0,1", "0,1"), r"line 5: expected a file name and 3 values"),
    (lambda t: t.replace("0004.jpg", "0404.jpg"), r"1 row\(s\) name no image.*'0404.jpg'.*1 "
                                                  r"image\(s\) .* have no row: 'tiles/b/0004.jpg'"),
    (lambda t: t + "0002.jpg,0,1,0\r\n", r"lists '0002.jpg' twice \(line 8\)"),
    (lambda t: t.replace("0006.jpg,0,1,0", "0006.jpg,0,0,0"), r"no label set to 1: '0006.jpg'"),
    (lambda t: t.replace("1,0,0", "1,1,0").replace("0,0,1", "0,1,0").replace("0,1,1", "0,1,0")
     .replace("1,0,1", "1,1,0"), r"Empty label\(s\).*no image has 'Wasser Fläche' set to 1"),
    (lambda t: t.replace("Gebäude", "Bäume", 1), r"names the label\(s\) 'Bäume' more than once"),
])
def test_csv_refusals(data_env: Path, tmp_path: Path, edit, message: str) -> None:
    root, csv_path = _csv_tree(tmp_path / "ml")
    csv_path.write_text(edit(csv_path.read_text(encoding="utf-8-sig")), encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        ud.add("my_labels", root, labels_csv=csv_path)
    assert not ud.spec_path("my_labels").exists()


def test_csv_bare_name_matching_two_images(data_env: Path, tmp_path: Path) -> None:
    root, csv_path = _csv_tree(tmp_path / "ml")
    write_image(root / "tiles" / "b" / "0002.jpg", seed=9)  # now two images named 0002.jpg
    text = csv_path.read_text(encoding="utf-8-sig") + "tiles/b/0002.jpg,0,0,1\r\n"
    csv_path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bare file name\(s\) match several images: "
                                           r"'0002.jpg' \(write the path relative to DIR\)"):
        ud.add("my_labels", root, labels_csv=csv_path)


# --- remove ---------------------------------------------------------------------------------


def test_remove(data_env: Path, tree: Path) -> None:
    ud.add("my_tiles", tree)
    prepared = data_env / "tfds" / "rssc_user_my_tiles" / "1.0.0"
    prepared.mkdir(parents=True)
    (data_env / "splits").mkdir()
    (data_env / "splits" / "my_tiles-target-seed42.json").write_text("{}")
    (data_env / "splits" / "my_tiles2-target-seed42.json").write_text("{}")  # not ours
    removed = ud.remove("my_tiles")
    assert ud.spec_path("my_tiles") in removed and not ud.spec_path("my_tiles").exists()
    assert not prepared.parent.exists()
    assert [p.name for p in (data_env / "splits").iterdir()] == ["my_tiles2-target-seed42.json"]
    with pytest.raises(DatasetError, match=r"Unknown dataset 'my_tiles'"):
        catalog.get_spec("my_tiles")
    with pytest.raises(DatasetError, match=r"No dataset of yours is named 'my_tiles'"):
        ud.remove("my_tiles")
    with pytest.raises(DatasetError, match=r"'ucm' is a catalog dataset, not one of yours"):
        ud.remove("ucm")


# --- prepare and the CLI --------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(module_data_env: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tree and the CSV dataset, added and prepared once (TensorFlow)."""
    from rssc_mlflow.data.prepare import prepare

    base = tmp_path_factory.mktemp("user")
    tree = write_custom_tree(base / "my data", FOLDERS, images_per_class=PER_CLASS,
                             image_size=16)
    added = runner.invoke(app, ["datasets", "add", "my_tiles", "--manual-dir", str(tree),
                                "--description", "Tiles of my region"])
    assert added.exit_code == 0, added.output
    done = runner.invoke(app, ["prepare", "my_tiles", "--json"])  # no --manual-dir: remembered
    assert done.exit_code == 0, done.output
    root, csv_path = _csv_tree(base / "ml")
    ud.add("my_labels", root, labels_csv=csv_path)
    return {"tree": tree, "cli_add": added.output, "report": json.loads(done.stdout),
            "csv": prepare("my_labels", None)}


def test_cli_add_reports_classes_and_next_step(prepared) -> None:
    out = prepared["cli_add"]
    assert "registered my_tiles: 20 images, 4 classes (single-label, a folder per class)" in out
    assert "  Grünland: 5  <- vegetation/Grünland" in out
    assert "next: rssc prepare my_tiles" in out


def test_prepared_tree_with_quirks(prepared) -> None:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from rssc_mlflow.data.prepare import load_prepared

    report = prepared["report"]
    assert report["images"] == 20 and report["per_class"] == {c: 5 for c in CLASSES}
    assert report["synthetic"] and "as when registered" in report["count_note"]
    ds = load_prepared("my_tiles")
    assert ds.metadata["spec_digest"] == catalog.get_spec("my_tiles").spec_digest
    assert tfds.builder_from_directory(str(ds.path)).info.features["label"].names == list(CLASSES)
    names = {r.filename: CLASSES[r.label] for r in ds.records}
    assert names["Wasser/See und Fluss/See und Fluss_003.jpg"] == "See und Fluss"
    shapes = set()
    for ex in ds.examples():
        image = tf.io.decode_image(ex["image"], expand_animations=False).numpy()
        assert image.shape[-1] == 3 and image.dtype == np.uint8  # CMYK, palette, grey: RGB
        shapes.add(image.shape[:2])
    assert shapes == {(16, 16), (11, 11)}  # the TIFF class keeps its own size


def test_prepared_multilabel_csv(prepared) -> None:
    from rssc_mlflow.data.prepare import load_prepared

    assert prepared["csv"].images == 6
    assert prepared["csv"].per_class == {"Bäume": 3, "Gebäude": 3, "Wasser Fläche": 3}
    ds = load_prepared("my_labels")
    labels = {ex["filename"].numpy().decode(): tuple(ex["labels"].numpy())
              for ex in ds.examples()}
    assert labels["tiles/a/0002.jpg"] == (1, 1, 0) and labels["tiles/b/0005.jpg"] == (1, 0, 1)
    assert {r.filename: r.labels for r in ds.records} == labels


def test_datasets_lists_yours(prepared) -> None:
    listing = runner.invoke(app, ["datasets"])
    assert listing.exit_code == 0
    line = next(x for x in listing.output.splitlines() if x.startswith("my_tiles"))
    assert "20 synth" in line and "yours: Tiles of my region" in line
    assert "[medium resolution: 10 m (Sentinel-2), 64x64 px]" in next(
        x for x in listing.output.splitlines() if x.startswith("eurosat"))
    rows = {r["key"]: r for r in json.loads(runner.invoke(app, ["datasets", "--json"]).stdout)}
    assert rows["my_tiles"]["origin"] == "user" and rows["my_labels"]["task"] == "multi"
    assert rows["ucm"]["origin"] == "catalog" and rows["eurosat"]["hrrs"] is False


def test_changed_tree_is_refused_at_prepare(prepared, tmp_path: Path) -> None:
    shutil.copytree(prepared["tree"], tmp_path / "copy")
    write_image(tmp_path / "copy" / "Wasser" / "Moor" / "m.jpg")
    result = runner.invoke(app, ["prepare", "my_tiles", "--manual-dir", str(tmp_path / "copy"),
                                 "--force"])
    assert result.exit_code == 1
    assert "has changed since it was registered: its classes differ (new: 'Moor')" in result.stderr
    assert "Traceback" not in result.output


def test_cli_refusals_exit_1(data_env: Path, tree: Path) -> None:
    result = runner.invoke(app, ["datasets", "add", "aid", "--manual-dir", str(tree)])
    assert result.exit_code == 1 and "'aid' is a catalog dataset" in result.stderr
    result = runner.invoke(app, ["datasets", "remove", "nobody"])
    assert result.exit_code == 1 and "No dataset of yours is named 'nobody'" in result.stderr
    result = runner.invoke(app, ["prepare", "ucm"])
    assert result.exit_code == 1 and "--manual-dir is required for 'ucm'" in result.stderr


def test_a_dataset_registered_again_is_prepared_again(data_env: Path, tmp_path: Path) -> None:
    from rssc_mlflow.data.prepare import load_prepared, prepare

    for name in ("A b", "C d"):
        write_image(tmp_path / "t" / name / "1.png")
    ud.add("again", tmp_path / "t")
    first = prepare("again", None)
    ud.spec_path("again").unlink()  # registered again without `remove`: the data stayed
    write_image(tmp_path / "t" / "C d" / "2.png", seed=1)
    ud.add("again", tmp_path / "t")
    with pytest.raises(DatasetError, match=r"was registered again since it was prepared: run "
                                           r"`rssc prepare again --force`"):
        load_prepared("again")
    second = prepare("again", None)  # not taken as already prepared
    assert not second.already_prepared and (first.images, second.images) == (2, 3)
    assert load_prepared("again").metadata["spec_digest"] == catalog.get_spec("again").spec_digest
