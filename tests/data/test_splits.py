"""Splits: stratification, determinism, persistence, validation, the authors' pickles."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.preprocessing import LabelEncoder

from rssc_mlflow.data import splits
from rssc_mlflow.data.splits import SplitManifest, get_split, import_authors_split, make_split
from rssc_mlflow.errors import SplitError
from rssc_mlflow.protocol import TRAIN_FRACTION


@dataclasses.dataclass(frozen=True)
class Rec:
    filename: str
    label: int
    labels: tuple[int, ...] | None = None
    category: str | None = None


@dataclasses.dataclass
class Spec:
    key: str


@dataclasses.dataclass
class Prepared:
    spec: Spec
    records: list[Rec]
    manifest_digest: str


def _records(sizes: list[int], top: str = "DS") -> list[Rec]:
    return [Rec(f"{top}/class{c}/class{c}_{i:03d}.jpg", c)
            for c, n in enumerate(sizes) for i in range(n)]


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RSSC_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


# --- make_split --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["source", "target"])
def test_proportions_per_class_within_one_image(role: str) -> None:
    sizes = [1, 2, 3, 7, 10, 33, 101, 700]
    split = make_split(_records(sizes), dataset="x", role=role)  # type: ignore[arg-type]
    frac = TRAIN_FRACTION[role]
    for c, n in enumerate(sizes):
        n_train = split.counts["train"][str(c)]
        assert abs(n_train - frac * n) <= 0.5
        assert n_train + split.counts["test"][str(c)] == n
    assert split.counts["train"]["6"] == (81 if role == "source" else 20)


def test_round_half_up() -> None:
    assert [splits.n_train_for(n, "source") for n in (1, 2, 3, 5, 7)] == [1, 2, 2, 4, 6]
    assert [splits.n_train_for(n, "target") for n in (1, 2, 3, 8, 13)] == [0, 0, 1, 2, 3]


def test_disjoint_and_covering() -> None:
    records = _records([5, 8, 13])
    split = make_split(records, dataset="x", role="source")
    assert not set(split.train) & set(split.test)
    assert sorted(split.train + split.test) == sorted(r.filename for r in records)
    assert split.train == sorted(split.train) and split.test == sorted(split.test)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6),
       shuffle_seed=st.integers(0, 2**32 - 1), role=st.sampled_from(["source", "target"]))
def test_deterministic_whatever_the_listing_order(sizes: list[int], shuffle_seed: int,
                                                   role: str) -> None:
    records = _records(sizes)
    shuffled = list(records)
    random.Random(shuffle_seed).shuffle(shuffled)
    a = make_split(records, dataset="x", role=role, seed=3)  # type: ignore[arg-type]
    b = make_split(shuffled, dataset="x", role=role, seed=3)  # type: ignore[arg-type]
    assert (a.train, a.test, a.digest) == (b.train, b.test, b.digest)
    for c, n in enumerate(sizes):
        assert abs(a.counts["train"][str(c)] - TRAIN_FRACTION[role] * n) <= 0.5


def test_pinned_split_is_the_same_on_every_machine() -> None:
    # sha256-seeded, so this never changes between processes, machines or Python versions.
    split = make_split(_records([10]), dataset="x", role="source", seed=42)
    assert split.test == ["DS/class0/class0_001.jpg", "DS/class0/class0_003.jpg"]
    assert split.digest == "30e6dd9e756c8452a9b7df3423789d0bbae78ceffe4840dd3cd57347c074a4fb"
    assert split.digest == splits.compute_digest("x", "source", split.train, split.test)


def test_seeds_roles_and_datasets_differ() -> None:
    records = _records([50, 50])
    base = make_split(records, dataset="x", role="source", seed=42)
    assert base.train != make_split(records, dataset="x", role="source", seed=43).train
    assert base.train != make_split(records, dataset="y", role="source", seed=42).train
    assert base.digest != make_split(records, dataset="x", role="source", seed=43).digest


def test_mlrsnet_single_and_multi_label_share_one_split() -> None:
    cats = ["airplane", "beach", "forest"]
    rng = np.random.default_rng(0)
    single = [Rec(f"Images/{c}/{c}_{i:05d}.jpg", k, None, c)
              for k, c in enumerate(cats) for i in range(23)]
    # multi-label: `label` is meaningless (0), labels differ per image; category decides
    multi = [Rec(r.filename, 0, tuple(rng.integers(0, 2, 60).tolist()), r.category)
             for r in reversed(single)]
    sl = make_split(single, dataset="mlrsnet_sl", role="source")
    ml = make_split(multi, dataset="mlrsnet_ml", role="source")
    assert (sl.train, sl.test) == (ml.train, ml.test)
    assert sl.counts == ml.counts and set(sl.counts["train"]) == set(cats)
    assert sl.digest != ml.digest  # the digest names the dataset


def test_duplicate_filenames_rejected() -> None:
    with pytest.raises(SplitError, match="more than once"):
        make_split([Rec("a.jpg", 0), Rec("a.jpg", 1)], dataset="x", role="source")


def test_unknown_role() -> None:
    with pytest.raises(ValueError, match="source, target"):
        make_split(_records([3]), dataset="x", role="validation")  # type: ignore[arg-type]


# --- persistence ---------------------------------------------------------------------------


def test_manifest_round_trip_and_stable_digest(tmp_path: Path) -> None:
    split = make_split(_records([4, 6]), dataset="x", role="target", dataset_digest="abc")
    path = split.save(tmp_path / "s" / "x.json")
    loaded = SplitManifest.load(path)
    assert loaded == split
    assert json.loads(loaded.to_json())["digest"] == split.digest
    later = make_split(_records([4, 6]), dataset="x", role="target", dataset_digest="abc")
    later.created = "2099-01-01T00:00:00+00:00"
    assert later.digest == split.digest  # timestamps are not part of the digest
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temp file left


@pytest.mark.parametrize("content,match", [
    ("not json", "not readable JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"dataset": "x", "role": "source", "train": []}', "'test' is missing"),
    ('{"dataset": "x", "role": "val", "train": [], "test": []}', "'role' is 'val'"),
    ('{"dataset": "x", "role": "source", "train": [1], "test": []}', "not a list of strings"),
    ('{"dataset": "x", "role": "source", "train": [], "test": [], "digest": "00"}',
     "changed after it was written"),
])
def test_load_rejects_garbage(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SplitError, match=match):
        SplitManifest.load(path)


def test_get_split_makes_persists_and_reuses(_data_dir: Path) -> None:
    prepared = Prepared(Spec("ucm"), _records([10, 10]), "d1")
    first = get_split(prepared, "target")
    path = _data_dir / "splits" / "ucm-target-seed42.json"
    assert path.exists() and first.dataset_digest == "d1"
    assert SplitManifest.load(path).digest == first.digest
    prepared.records.reverse()
    again = get_split(prepared, "target")
    assert again.digest == first.digest and again.created == first.created
    assert get_split(prepared, "target", seed=1).digest != first.digest


def test_get_split_dataset_changed(_data_dir: Path) -> None:
    get_split(Prepared(Spec("ucm"), _records([10]), "old"), "source")
    with pytest.raises(SplitError, match="changed since its source split was made") as err:
        get_split(Prepared(Spec("ucm"), _records([11]), "new"), "source")
    assert "delete that split file" in str(err.value)
    assert "prepare ucm again" in str(err.value)


def _write_manifest(path: Path, **fields: object) -> Path:
    data = {"dataset": "ucm", "role": "target", "train": [], "test": []} | fields
    path.write_text(json.dumps(data))
    return path


def test_split_file_is_validated(tmp_path: Path) -> None:
    records = _records([5, 5])
    prepared = Prepared(Spec("ucm"), records, "d")
    names = [r.filename for r in records]
    good = _write_manifest(tmp_path / "good.json", train=names[:2], test=names[2:])
    manifest = get_split(prepared, "target", split_file=good)
    assert manifest.train == names[:2] and manifest.counts["test"] == {"0": 3, "1": 5}
    assert manifest.source == "file:good.json"

    missing = _write_manifest(tmp_path / "m.json", train=["DS/nope1.jpg", "DS/nope2.jpg"],
                              test=names)
    with pytest.raises(SplitError, match=r"2 file\(s\) that are not in .* 'DS/nope1.jpg'"):
        get_split(prepared, "target", split_file=missing)

    dotdot = _write_manifest(tmp_path / "d.json", train=["../etc/passwd"], test=["/abs.jpg"])
    with pytest.raises(SplitError, match=r"2 path\(s\) that leave the dataset root.*'\.\./etc"):
        get_split(prepared, "target", split_file=dotdot)

    overlap = _write_manifest(tmp_path / "o.json", train=names[:3], test=names[2:])
    with pytest.raises(SplitError, match="both train and test"):
        get_split(prepared, "target", split_file=overlap)

    with pytest.raises(SplitError, match="is a target split"):
        get_split(prepared, "source", split_file=good)
    with pytest.raises(SplitError, match="is for dataset ucm, not aid"):
        get_split(Prepared(Spec("aid"), records, "d"), "target", split_file=good)


# --- the authors' pickles ------------------------------------------------------------------


def _authors_pickle(tmp_path: Path, records: list[Rec], *, as_numpy: bool, prefix: str,
                    with_le: bool = True) -> Path:
    split = make_split(records, dataset="resisc45", role="source", seed=7)
    by_name = {r.filename: r for r in records}

    def part(files: list[str]) -> dict:
        names = [prefix + f.split("/", 1)[1] for f in files]
        classes = [by_name[f].label for f in files]
        if as_numpy:
            return {"filename": np.array(names), "class": np.array(classes, dtype=np.int64)}
        return {"filename": names, "class": classes}

    path = tmp_path / "RESISC45-split.pkl"
    path.write_bytes(pickle.dumps({"train": part(split.train), "test": part(split.test)}))
    if with_le:
        le = LabelEncoder().fit([f"class{c}" for c in range(3)])
        (tmp_path / "RESISC45-le.pkl").write_bytes(pickle.dumps(le))
    return path


@pytest.mark.parametrize("as_numpy", [True, False])
def test_import_authors_split(tmp_path: Path, as_numpy: bool, _data_dir: Path) -> None:
    records = _records([10, 10, 5], top="NWPU-RESISC45")
    # the authors' paths start with another top folder: matched by their common suffix
    pkl = _authors_pickle(tmp_path, records, as_numpy=as_numpy, prefix="resisc/")
    manifest = import_authors_split(pkl, "resisc45", records, dataset_digest="dd")
    expected = make_split(records, dataset="resisc45", role="source", seed=7)
    assert (manifest.train, manifest.test) == (expected.train, expected.test)
    assert manifest.role == "source" and manifest.source == "imported:RESISC45-split.pkl"
    assert manifest.label_encoder_classes == ["class0", "class1", "class2"]
    assert manifest.counts == expected.counts
    path = splits.save_imported(manifest)
    assert path.parent == _data_dir / "splits"
    prepared = Prepared(Spec("resisc45"), records, "dd")
    assert get_split(prepared, "source", split_file=path).digest == manifest.digest


def test_import_matches_converted_extensions_and_no_prefix(tmp_path: Path) -> None:
    records = [Rec(f"UCMerced_LandUse/Images/c{c}/c{c}{i:02d}.tif", c)
               for c in range(2) for i in range(10)]
    train = [f"c{c}/c{c}{i:02d}.jpg" for c in range(2) for i in range(2)]
    test = [f"c{c}/c{c}{i:02d}.jpg" for c in range(2) for i in range(2, 10)]
    pkl = tmp_path / "UCM20-split.pkl"
    pkl.write_bytes(pickle.dumps({"train": {"filename": train}, "test": {"filename": test}}))
    manifest = import_authors_split(pkl, "ucm", records)
    assert manifest.role == "target" and len(manifest.train) == 4
    assert manifest.train[0] == "UCMerced_LandUse/Images/c0/c000.tif"


def test_import_missing_ambiguous_and_unsafe_paths(tmp_path: Path) -> None:
    records = [Rec("A/x/img1.jpg", 0), Rec("B/x/img1.jpg", 1), Rec("A/y/img2.jpg", 0)]
    pkl = tmp_path / "X-split.pkl"

    def write(train: list[str], test: list[str]) -> None:
        pkl.write_bytes(pickle.dumps({"train": {"filename": train}, "test": {"filename": test}}))

    write(["A/y/img2.jpg"], ["A/y/nope.jpg", "Z/zz.jpg"])
    with pytest.raises(SplitError, match=r"2 of its 2 test files are not in .*'A/y/nope.jpg'"):
        import_authors_split(pkl, "x", records)
    write(["C/x/img1.jpg"], [])
    with pytest.raises(SplitError, match="match several files.*A/x/img1.jpg, B/x/img1.jpg"):
        import_authors_split(pkl, "x", records)
    write(["A/../../etc/passwd", "/root/x.jpg"], [])
    with pytest.raises(SplitError, match="leave the dataset root.*'A/../../etc/passwd'"):
        import_authors_split(pkl, "x", records)
    pkl.write_bytes(pickle.dumps({"train": [1]}))
    with pytest.raises(SplitError, match="dict with keys 'train' and 'test'"):
        import_authors_split(pkl, "x", records)


def test_import_wrong_classes_detected(tmp_path: Path) -> None:
    records = _records([4, 4])
    pkl = tmp_path / "X-split.pkl"
    names = [r.filename for r in records]
    pkl.write_bytes(pickle.dumps({"train": {"filename": names[:4], "class": [0, 0, 0, 1]},
                                  "test": {"filename": names[4:], "class": [0, 1, 1, 1]}}))
    with pytest.raises(SplitError, match="class 0 holds files of our classes 0, 1"):
        import_authors_split(pkl, "x", records)


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_without_side_effect(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    pkl = tmp_path / "Evil-split.pkl"
    pkl.write_bytes(pickle.dumps({"train": {"filename": [_Evil(target)]}, "test": {}}))
    assert b"system" in pkl.read_bytes()
    with pytest.raises(SplitError, match=r"refuses to load Evil-split.pkl: it asks for "
                                         r"(posix|os|nt)\.system, which could run code"):
        import_authors_split(pkl, "x", _records([2]))
    assert not target.exists()


def test_malicious_label_encoder_file_is_refused(tmp_path: Path) -> None:
    records = _records([5, 5])
    pkl = _authors_pickle(tmp_path, records, as_numpy=True, prefix="Z/", with_le=False)
    target = tmp_path / "pwned"
    (tmp_path / "RESISC45-le.pkl").write_bytes(pickle.dumps(_Evil(target)))
    with pytest.raises(SplitError, match="refuses to load RESISC45-le.pkl"):
        import_authors_split(pkl, "resisc45", records)
    assert not target.exists()


def test_label_encoder_class_is_refused_in_a_split_file(tmp_path: Path) -> None:
    pkl = tmp_path / "LE-split.pkl"
    pkl.write_bytes(pickle.dumps(LabelEncoder().fit(["a"])))
    with pytest.raises(SplitError, match="LabelEncoder"):
        splits.safe_load_pickle(pkl)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_of_every_protocol_and_numpy_1_names(tmp_path: Path, protocol: int
                                                           ) -> None:
    data = {"f": np.array(["a/b.jpg"]), "c": np.arange(3), "s": [np.int64(2)]}
    blob = pickle.dumps(data, protocol=protocol)
    if protocol == 2:  # what numpy 1.x wrote: numpy.core instead of numpy._core
        blob = blob.replace(b"numpy._core.", b"numpy.core.")
        assert b"numpy.core.multiarray" in blob
    (tmp_path / "p.pkl").write_bytes(blob)
    loaded = splits.safe_load_pickle(tmp_path / "p.pkl")
    assert loaded["f"].tolist() == ["a/b.jpg"] and loaded["c"].tolist() == [0, 1, 2]
    assert loaded["s"] == [2]
