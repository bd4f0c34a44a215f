"""ImageNet-100: the 100 wnids of the CMC list, read from an ImageNet-1k train folder.

The train folder holds 1000 wnid folders; the other 900 are ignored, not refused. `filename` is
relative to the train folder: "n01558993/n01558993_1.JPEG".
"""

from __future__ import annotations

from pathlib import Path

from rssc_mlflow.data.builders.base import RsscBuilder
from rssc_mlflow.data.builders.common import (
    BuildPlan, check_class_folders, class_plan, layout_error, root_candidates, subdirs,
)
from rssc_mlflow.data.catalog import DatasetSpec, get_spec


def scan_imagenet(spec: DatasetSpec, manual_dir: Path) -> BuildPlan:
    wnids = set(spec.classes)
    best: tuple[int, Path] | None = None
    for cand in root_candidates(manual_dir, spec.archive_root):
        hits = sum(1 for d in subdirs(cand) if d.name in wnids)
        if hits and (best is None or hits > best[0]):
            best = (hits, cand)
    if best is None:
        raise layout_error(spec, manual_dir, f"No ImageNet wnid folders of the ImageNet-100 list "
                           f"found under '{manual_dir}'.")
    root = best[1]
    found = {d.name: d for d in subdirs(root) if d.name in wnids}
    check_class_folders(spec, list(found), root, manual_dir, allow_unknown=True)
    return class_plan(spec, manual_dir, root, found)


class RsscImagenet100(RsscBuilder):
    KEY = "imagenet100"

    @classmethod
    def scan(cls, manual_dir: Path) -> BuildPlan:
        return scan_imagenet(get_spec(cls.KEY), manual_dir)
