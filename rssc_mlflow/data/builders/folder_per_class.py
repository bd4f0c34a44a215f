"""Builders for the one-class-per-folder datasets: RESISC45, PatternNet, AID, UCM, RSI-CB256, and
the catalog's datasets outside the paper: WHU-RS19, RSSCN7 and EuroSAT (RGB).

`filename` is relative to the folder that holds the class folders, e.g.
"agricultural/agricultural00.tif" for UCM (UCMerced_LandUse/Images/...), and for RSI-CB256
relative to the folder holding the top categories: "water area/river/river(1).tif".
"""

from __future__ import annotations

from pathlib import Path

from rssc_mlflow.data.builders.base import RsscBuilder
from rssc_mlflow.data.builders.common import (
    BuildPlan,
    check_class_folders,
    child_ci,
    class_plan,
    layout_error,
    relpath,
    root_candidates,
    subdirs,
)
from rssc_mlflow.data.catalog import DatasetSpec, get_spec
from rssc_mlflow.naming import few


def scan_folder_per_class(spec: DatasetSpec, manual_dir: Path) -> BuildPlan:
    """Find `<archive_root>/<images_dir>/<class>/` under `manual_dir` and list its images.

    Accepts the archive's top folder, the folder containing it (even if renamed), or a copy
    without the `images_dir` level; picks the candidate holding the most class folders.
    """
    known = set(spec.classes)
    best: tuple[int, Path] | None = None
    for base in root_candidates(manual_dir, spec.archive_root):
        for cand in (child_ci(base, spec.images_dir) if spec.images_dir else None, base):
            if cand is None:
                continue
            hits = sum(1 for d in subdirs(cand) if d.name in known)
            if hits and (best is None or hits > best[0]):
                best = (hits, cand)
    if best is None:
        raise layout_error(spec, manual_dir, f"No {spec.title} class folders found under "
                           f"'{manual_dir}'.")
    root = best[1]
    found = {d.name: d for d in subdirs(root)}
    check_class_folders(spec, list(found), root, manual_dir)
    return class_plan(spec, manual_dir, root, found)


def scan_two_level(spec: DatasetSpec, manual_dir: Path) -> BuildPlan:
    """RSI-CB256: `<top category>/<class>/`, the class being the leaf folder, tops named freely."""
    known = set(spec.classes)
    root: Path | None = None
    for cand in root_candidates(manual_dir, spec.archive_root):
        if any(leaf.name in known for top in subdirs(cand) for leaf in subdirs(top)):
            root = cand
            break
    if root is None:
        raise layout_error(spec, manual_dir, f"No {spec.title} tree of <top category>/<class> "
                           f"folders found under '{manual_dir}'.")
    found: dict[str, Path] = {}
    duplicated: list[str] = []
    for top in subdirs(root):
        for leaf in subdirs(top):
            if leaf.name in found:
                duplicated.append(f"{relpath(found[leaf.name], root)} and {relpath(leaf, root)}")
            found[leaf.name] = leaf
    if duplicated:
        raise layout_error(spec, manual_dir, f"{spec.title}: a class folder appears under two "
                           f"top categories: {few(duplicated)}; keep one of each.")
    check_class_folders(spec, list(found), root, manual_dir)
    return class_plan(spec, manual_dir, root, found)


class _FolderBuilder(RsscBuilder, skip_registration=True):
    @classmethod
    def scan(cls, manual_dir: Path) -> BuildPlan:
        return scan_folder_per_class(get_spec(cls.KEY), manual_dir)


class RsscResisc45(_FolderBuilder):
    """NWPU-RESISC45 (prefix avoids TFDS's own `resisc45` builder name)."""

    KEY = "resisc45"


class RsscPatternnet(_FolderBuilder):
    KEY = "patternnet"


class RsscAid(_FolderBuilder):
    KEY = "aid"


class RsscUcm(_FolderBuilder):
    KEY = "ucm"


class RsscWhuRs19(_FolderBuilder):
    KEY = "whu_rs19"


class RsscRsscn7(_FolderBuilder):
    KEY = "rsscn7"


class RsscEurosat(_FolderBuilder):
    """EuroSAT RGB (prefix avoids TFDS's own `eurosat` builder name)."""

    KEY = "eurosat"


class RsscRsicb256(RsscBuilder):
    KEY = "rsicb256"

    @classmethod
    def scan(cls, manual_dir: Path) -> BuildPlan:
        return scan_two_level(get_spec(cls.KEY), manual_dir)
