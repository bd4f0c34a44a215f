"""Property tests for label parsing: MLRSNet label CSVs, class-folder names, and the views
(UCM -> MLRSNet mapping, half) that re-index labels.

What the code documents, and these properties pin down:
- a label CSV is `image,` + the 60 labels of `MLRSNET_LABELS` in that order (spaces around a name
  are ignored); a BOM, CRLF or LF line ends, blank lines and spaces around values are tolerated;
  it parses to exactly its rows;
- any other header is refused, naming the first column that differs (got and expected) and the
  column count when it is off; a bad value names its line; a repeated image names it;
- class folders match catalog names exactly (case, spaces, `&` and `_` included); only the
  MLRSNet `labels` folder is found whatever its case;
- the MLRSNet views keep exactly their categories and index labels by their own class list.
"""

from __future__ import annotations

import collections
import gzip
import re
import tempfile
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rssc_mlflow.data.builders.common import check_class_folders, child_ci
from rssc_mlflow.data.builders.mlrsnet import _read_csv
from rssc_mlflow.data.catalog import MLRSNET_CATEGORIES, MLRSNET_LABELS, UCM_TO_MLRSNET, get_spec
from rssc_mlflow.data.prepare import _view
from rssc_mlflow.errors import DatasetError
from tests.data.real_labels import real_labels_dir

REAL_LABELS = real_labels_dir()
N = len(MLRSNET_LABELS)
PROPS = settings(max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _real_header() -> str:
    """The header line of a real MLRSNet label file, else of the packaged sample of them."""
    files = sorted(REAL_LABELS.glob("*.csv")) if REAL_LABELS.is_dir() else []
    if files:
        with files[0].open(encoding="utf-8-sig", newline="") as fh:
            return fh.readline().rstrip("\r\n")
    sample = resources.files("rssc_mlflow.resources").joinpath("mlrsnet_labels_sample.csv.gz")
    return gzip.decompress(sample.read_bytes()).decode("utf-8-sig").splitlines()[0]


HEADER = _real_header()
REAL_COLUMNS = HEADER.split(",")[1:]


def test_real_header_is_the_catalog() -> None:
    assert tuple(REAL_COLUMNS) == MLRSNET_LABELS


def _parse(text: str, *, bom: bool = False, name: str = "airport.csv") -> dict[str, tuple[int, ...]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels" / name
        path.parent.mkdir()
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
        return _read_csv(path, Path(tmp))


def _csv(header: list[str], rows: list[list[str]], newline: str = "\r\n") -> str:
    return newline.join([",".join(["image", *header]), *(",".join(r) for r in rows)]) + newline


# --- The CSV files ---------------------------------------------------------------------------
pad = st.sampled_from(["", " ", "  "])
image_names = st.builds(lambda c, i: f"{c}_{i:05d}.jpg", st.sampled_from(MLRSNET_CATEGORIES),
                        st.integers(1, 99_999))


@PROPS
@given(rows=st.dictionaries(image_names, st.lists(st.integers(0, 1), min_size=N, max_size=N),
                            max_size=12),
       bom=st.booleans(), newline=st.sampled_from(["\r\n", "\n"]),
       header_pad=pad, value_pad=pad, blank_every=st.integers(0, 4), data=st.data())
def test_csv_parses_back_to_its_rows(rows: dict[str, list[int]], bom: bool, newline: str,
                                     header_pad: str, value_pad: str, blank_every: int,
                                     data: st.DataObject) -> None:
    header = [f"{header_pad}{h}{header_pad}" for h in REAL_COLUMNS]
    lines = []
    for i, (image, bits) in enumerate(rows.items()):
        if blank_every and i % blank_every == 0:
            lines.append([data.draw(st.sampled_from(["", " "]), label="blank line")])
        lines.append([f"{value_pad}{image}{value_pad}", *(f"{value_pad}{b}" for b in bits)])
    parsed = _parse(_csv(header, lines, newline), bom=bom)
    assert parsed == {image: tuple(bits) for image, bits in rows.items()}
    # What prepare stores per row ("0110...") reads back to the same multi-hot.
    for image, bits in parsed.items():
        stored = "".join(map(str, bits))
        [record] = _view(get_spec("mlrsnet_ml"), [[f"Images/airport/{image}", 1, stored]])
        assert record.labels == bits and len(bits) == N


def _mutate(draw: st.DrawFn) -> list[str]:
    """A header that is not the real one: a subset, a swap, a case change, an extra or
    renamed column."""
    cols = list(REAL_COLUMNS)
    kind = draw(st.sampled_from(["subset", "swap", "case", "insert", "rename"]))
    i = draw(st.integers(0, N - 1))
    if kind == "subset":
        keep = draw(st.lists(st.integers(0, N - 1), unique=True, max_size=N - 1))
        cols = [cols[k] for k in sorted(keep)]
    elif kind == "swap":
        j = draw(st.integers(0, N - 1).filter(lambda j: j != i))
        cols[i], cols[j] = cols[j], cols[i]
    elif kind == "case":
        cols[i] = draw(st.sampled_from([cols[i].upper(), cols[i].title(), cols[i].capitalize()]))
    elif kind == "insert":
        cols.insert(i, draw(st.sampled_from(["harbor", "label", "Unnamed: 61", *REAL_COLUMNS])))
    else:
        cols[i] = draw(st.text(st.sampled_from("abcxyz &_-"), min_size=1, max_size=12))
    return cols


@PROPS
@given(header=st.composite(_mutate)())
def test_other_headers_are_refused_naming_the_column(header: list[str]) -> None:
    stripped = [h.strip() for h in header]
    assume(tuple(stripped) != MLRSNET_LABELS)
    with pytest.raises(DatasetError) as info:
        _parse(_csv(header, [["airport_00001.jpg", *"0" * N]]), name="beach.csv")
    message = str(info.value)
    assert "MLRSNet label file 'labels/beach.csv' has an unexpected header" in message
    assert "re-download the labels folder" in message
    if len(header) != N:
        assert f"{len(header)} label columns (expected {N})" in message
    first = next((k for k, (got, want) in enumerate(zip(stripped, MLRSNET_LABELS))
                  if got != want), None)
    if first is not None:
        assert f"column {first + 1}: {stripped[first]!r} (expected {MLRSNET_LABELS[first]!r})" in message
    else:
        assert len(header) != N  # only a count off can be equal on every shared column


bad_values = st.sampled_from(["2", "-1", "x", "", "0.5", "1.0", "yes", "11"])


@PROPS
@given(good_before=st.integers(0, 5), blank_before=st.integers(0, 2), data=st.data())
def test_a_bad_row_names_its_line(good_before: int, blank_before: int,
                                  data: st.DataObject) -> None:
    bits = ["0"] * N
    kind = data.draw(st.sampled_from(["value", "short", "long"]))
    if kind == "value":
        bits[data.draw(st.integers(0, N - 1))] = data.draw(bad_values)
    elif kind == "short":
        bits = bits[: data.draw(st.integers(0, N - 1))]
    else:
        bits += ["0"] * data.draw(st.integers(1, 3))
    rows = [[f"airport_{k:05d}.jpg", *"0" * N] for k in range(good_before)]
    rows += [[""]] * blank_before + [["airport_99999.jpg", *bits]]
    line = 1 + len(rows)  # the header is line 1
    with pytest.raises(DatasetError, match=rf"'labels/airport.csv', line {line}: expected an "
                                           rf"image name and {N} values of 0 or 1"):
        _parse(_csv(REAL_COLUMNS, rows))


@PROPS
@given(first=st.integers(0, 4), gap=st.integers(1, 4))
def test_a_repeated_image_is_named(first: int, gap: int) -> None:
    names = [f"lake_{k:05d}.jpg" for k in range(first + gap)]
    names.insert(first + gap, names[first])
    rows = [[name, *"0" * N] for name in names]
    with pytest.raises(DatasetError, match=rf"lists '{names[first]}' twice \(line "
                                           rf"{first + gap + 2}\)"):
        _parse(_csv(REAL_COLUMNS, rows))


# --- Class-folder names ----------------------------------------------------------------------
FOLDER_KEYS = ("ucm", "aid", "resisc45", "patternnet", "rsicb256", "mlrsnet_sl")


def _variants(name: str) -> list[str]:
    """Spellings a copy might use that are not the catalog's."""
    out = {name.upper(), name.lower(), name.title(), name.swapcase(), name.replace("_", " "),
           name.replace(" ", "_"), name.replace("&", " & "), name.replace("&", "and"),
           f"{name} ", f" {name}"}
    return sorted(out - {name})


@pytest.fixture(scope="module")
def empty_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("manual")


@PROPS
@given(key=st.sampled_from(FOLDER_KEYS), data=st.data())
def test_class_folders_match_exactly(empty_dir: Path, key: str, data: st.DataObject) -> None:
    spec = get_spec(key)
    shuffled = data.draw(st.permutations(spec.classes))
    check_class_folders(spec, shuffled, empty_dir, empty_dir)  # any order: accepted
    victim = data.draw(st.sampled_from(spec.classes))
    spelled = data.draw(st.sampled_from(_variants(victim)))
    assume(spelled not in spec.classes)
    found = [spelled if c == victim else c for c in shuffled]
    with pytest.raises(DatasetError, match=r"1 class folder\(s\) missing under .*: "
                                           + re.escape(repr(victim))):
        check_class_folders(spec, found, empty_dir, empty_dir)
    with pytest.raises(DatasetError, match="unknown class folder") as info:
        check_class_folders(spec, [*spec.classes, spelled], empty_dir, empty_dir)
    assert repr(spelled) in str(info.value)


@PROPS
@given(spelled=st.sampled_from(["labels", "Labels", "LABELS", "lAbElS", "LaBeLs"]))
def test_labels_folder_found_whatever_its_case(spelled: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / spelled).mkdir()
        (Path(tmp) / "Images").mkdir()
        assert child_ci(Path(tmp), "labels") == Path(tmp) / spelled
        assert child_ci(Path(tmp), "label") is None


# --- Views: the UCM -> MLRSNet mapping, half, single/multi-label -----------------------------
UCM_SAME = {c for cats in UCM_TO_MLRSNET.values() for c in cats}


@PROPS
@given(counts=st.lists(st.integers(0, 5), min_size=len(MLRSNET_CATEGORIES),
                       max_size=len(MLRSNET_CATEGORIES)))
def test_views_keep_their_categories_and_reindex_labels(counts: list[int]) -> None:
    stored = [[f"Images/{c}/{c}_{i:05d}.jpg", ci, "1" + "0" * (N - 1)]
              for ci, c in enumerate(MLRSNET_CATEGORIES) for i in range(counts[ci])]
    views = {k: _view(get_spec(k), stored) for k in
             ("mlrsnet_sl", "mlrsnet_ucm_same", "mlrsnet_ucm_other", "mlrsnet_half")}
    for key, records in views.items():
        classes = get_spec(key).classes
        assert all(classes[r.label] == r.category for r in records), key
        assert all(r.filename.split("/")[1] == r.category for r in records), key
    per_cat = collections.Counter(r.category for r in views["mlrsnet_sl"])
    same = {r.filename for r in views["mlrsnet_ucm_same"]}
    other = {r.filename for r in views["mlrsnet_ucm_other"]}
    assert not same & other and same | other == {r.filename for r in views["mlrsnet_sl"]}
    assert {r.category for r in views["mlrsnet_ucm_same"]} <= UCM_SAME
    assert not {r.category for r in views["mlrsnet_ucm_other"]} & UCM_SAME
    half = collections.Counter(r.category for r in views["mlrsnet_half"])
    assert all(half[c] == n // 2 for c, n in per_cat.items())
    # Every image of a mapped category is in `same`: nothing of a UCM class is lost.
    assert same == {r.filename for r in views["mlrsnet_sl"] if r.category in UCM_SAME}
