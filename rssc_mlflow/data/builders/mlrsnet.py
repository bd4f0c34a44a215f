"""MLRSNet: one TFDS dataset that mlrsnet_sl, mlrsnet_ml and the three subsets are views of.

Stored once: image, label (= category index, the single-label class), category, labels (60-long
multi-hot from the CSVs) and filename relative to the MLRSNet folder
("Images/airplane/airplane_00001.jpg"). Subsets are category filters applied when reading;
mlrsnet_half keeps floor(n/2) images per category, chosen by `half_selection`.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from rssc_mlflow.data.builders.base import RsscBuilder
from rssc_mlflow.data.builders.common import (
    BuildPlan,
    Item,
    check_class_folders,
    child_ci,
    is_synthetic,
    layout_error,
    relpath,
    root_candidates,
    subdirs,
    walk_images,
)
from rssc_mlflow.data.catalog import (
    MLRSNET_CATEGORIES,
    MLRSNET_HALF_SEED,
    MLRSNET_LABELS,
    MLRSNET_MAX_LABELS,
    get_spec,
)
from rssc_mlflow.errors import DatasetError
from rssc_mlflow.naming import few

_EXAMPLES = 5  # anomaly examples kept in the metadata


def half_selection(by_category: Mapping[str, Iterable[str]],
                   seed: int = MLRSNET_HALF_SEED) -> frozenset[str]:
    """The filenames mlrsnet_half keeps: per category, the floor(n/2) files that come first when
    ordered by sha256(f"{seed}:{filename}"). Depends only on the names, so every machine (and
    every copy of MLRSNet) selects the same images.
    """
    keep: set[str] = set()
    for names in by_category.values():
        ordered = sorted(names, key=lambda f: hashlib.sha256(f"{seed}:{f}".encode()).hexdigest())
        keep.update(ordered[: len(ordered) // 2])
    return frozenset(keep)


def _find_root(manual_dir: Path) -> Path | None:
    known = set(MLRSNET_CATEGORIES)
    for cand in root_candidates(manual_dir, "MLRSNet"):
        images = child_ci(cand, "Images")
        if images is not None and any(d.name in known for d in subdirs(images)):
            return cand
    return None


def _read_csv(path: Path, root: Path) -> dict[str, tuple[int, ...]]:
    """{image basename: multi-hot} of one category CSV, checking header and values."""
    name = relpath(path, root)
    # utf-8-sig: tolerate a BOM from spreadsheet exports; newline="" handles the CRLF line ends.
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise DatasetError(f"MLRSNet label file '{name}' is empty. Re-download the labels "
                           "folder of MLRSNet.")
    header = tuple(h.strip() for h in rows[0][1:])
    if header != MLRSNET_LABELS:
        diff = [f"column {i + 1}: {got!r} (expected {want!r})"
                for i, (got, want) in enumerate(zip(header, MLRSNET_LABELS)) if got != want]
        if len(header) != len(MLRSNET_LABELS):
            diff.insert(0, f"{len(header)} label columns (expected {len(MLRSNET_LABELS)})")
        raise DatasetError(f"MLRSNet label file '{name}' has an unexpected header: {few(diff, 3)}."
                           " Its first line must be `image,` followed by the 60 MLRSNet labels; "
                           "re-download the labels folder.")
    out: dict[str, tuple[int, ...]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            values = tuple(int(v) for v in row[1:])
        except ValueError:
            values = ()
        if len(values) != len(MLRSNET_LABELS) or any(v not in (0, 1) for v in values):
            raise DatasetError(f"MLRSNet label file '{name}', line {line}: expected an image "
                               "name and 60 values of 0 or 1. Re-download the labels folder.")
        image = row[0].strip()
        if image in out:
            raise DatasetError(f"MLRSNet label file '{name}' lists '{image}' twice (line "
                               f"{line}). Re-download the labels folder.")
        out[image] = values
    return out


def scan_mlrsnet(manual_dir: Path) -> BuildPlan:
    spec = get_spec("mlrsnet_sl")
    root = _find_root(manual_dir)
    if root is None:
        raise layout_error(spec, manual_dir, f"No MLRSNet Images/<category> folders found under "
                           f"'{manual_dir}'.")
    images_dir = child_ci(root, "Images")
    labels_dir = child_ci(root, "labels")
    assert images_dir is not None
    if labels_dir is None:
        raise layout_error(spec, manual_dir, f"MLRSNet: no 'labels' (or 'Labels') folder next to "
                           f"'{images_dir}'; the label CSVs come with the download.")
    found = {d.name: d for d in subdirs(images_dir)}
    check_class_folders(spec, list(found), images_dir, manual_dir)
    csvs = {p.name: p for p in labels_dir.iterdir() if p.is_file() and p.suffix.lower() == ".csv"}
    missing_csv = [f"{c}.csv" for c in MLRSNET_CATEGORIES if f"{c}.csv" not in csvs]
    if missing_csv:
        raise layout_error(spec, manual_dir, f"MLRSNet: label file(s) missing in '{labels_dir}':"
                           f" {few(missing_csv)}.")
    items: list[Item] = []
    ignored: list[str] = [relpath(p, root) for n, p in sorted(csvs.items())
                          if n[:-4] not in found]
    no_row: list[str] = []
    no_image: list[str] = []
    many: list[str] = []
    none: list[str] = []
    for cat_index, cat in enumerate(MLRSNET_CATEGORIES):
        rows = _read_csv(csvs[f"{cat}.csv"], root)
        images, others = walk_images(found[cat])
        ignored += [relpath(p, root) for p in others]
        by_name = {p.name: p for p in images}
        no_row += [relpath(p, root) for p in images if p.name not in rows]
        no_image += [f"{cat}.csv: {name}" for name in rows if name not in by_name]
        for path in images:
            labels = rows.get(path.name)
            if labels is None:
                continue
            filename = relpath(path, root)
            positives = sum(labels)
            if positives > MLRSNET_MAX_LABELS:
                many.append(filename)
            elif positives == 0:
                none.append(filename)
            items.append(Item(path=path, filename=filename, label=cat_index, category=cat_index,
                              labels=labels))
    if no_row or no_image:
        parts = []
        if no_row:
            parts.append(f"{len(no_row)} image(s) without a row in their category's CSV: "
                         f"{few(no_row)}")
        if no_image:
            parts.append(f"{len(no_image)} CSV row(s) without an image: {few(no_image)}")
        raise DatasetError(f"MLRSNet images and label files do not match under '{root}': "
                           f"{'; '.join(parts)}. Every Images/<category>/<file> needs a row in "
                           "labels/<category>.csv and the reverse; re-download or restore the "
                           "missing files.")
    anomalies: dict[str, Any] = {
        "max_labels": MLRSNET_MAX_LABELS,
        "more_than_max_labels": len(many),
        "more_than_max_labels_examples": many[:_EXAMPLES],
        "no_labels": len(none),
        "no_labels_examples": none[:_EXAMPLES],
        "note": "rows kept as they are (a faithful run keeps them; docs/PROTOCOL.md)",
    }
    return BuildPlan(key="mlrsnet_sl", root=root, items=items,
                     synthetic=is_synthetic(manual_dir, root),
                     label_files=[relpath(csvs[f"{c}.csv"], root) for c in MLRSNET_CATEGORIES],
                     ignored=ignored, anomalies=anomalies)


class RsscMlrsnet(RsscBuilder):
    """All of MLRSNet; `label` is the category (single-label class), `labels` the multi-hot."""

    KEY = "mlrsnet_sl"

    @classmethod
    def scan(cls, manual_dir: Path) -> BuildPlan:
        return scan_mlrsnet(manual_dir)

    def _features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {
            **super()._features(),
            "category": tfds.features.ClassLabel(names=list(MLRSNET_CATEGORIES)),
            "labels": tfds.features.Tensor(shape=(len(MLRSNET_LABELS),), dtype=np.uint8),
        }

    def _example(self, item: Item, encoded: bytes) -> dict[str, Any]:
        assert item.labels is not None and item.category is not None
        return {**super()._example(item, encoded), "category": item.category,
                "labels": np.asarray(item.labels, dtype=np.uint8)}
