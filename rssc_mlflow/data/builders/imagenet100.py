"""ImageNet-100: the 100 wnids of the CMC list, read from an ImageNet-1k train folder.

The train folder holds 1000 wnid folders; the other 900 are ignored, not refused. `filename` is
relative to the train folder: "n01558993/n01558993_1.JPEG".

With `with_val` (`rssc prepare imagenet100 --with-val`) the 50 validation images of each of the
100 wnids are added: the paper's 131,689 images are 126,689 train + 5,000 val (docs/PROTOCOL.md).
The val images are read in the layout most copies use, a `val` (or `ILSVRC2012_img_val`)
folder next to `train` sorted into wnid folders (`val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG`, as made by the devkit's ground
truth or the PyTorch ImageNet example's valprep.sh). The official ILSVRC2012_img_val archive
unpacks to one flat folder whose labels sit in the devkit; that folder is refused with a note
on how to sort it. Their `filename` is "val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG", so they never
collide with a train image.
"""

from __future__ import annotations

import collections
from pathlib import Path

from rssc_mlflow.data.builders.base import RsscBuilder
from rssc_mlflow.data.builders.common import (
    BuildPlan,
    Item,
    check_class_folders,
    child_ci,
    class_plan,
    layout_error,
    relpath,
    root_candidates,
    subdirs,
    walk_images,
)
from rssc_mlflow.data.catalog import IMAGENET_VAL_PER_CLASS, DatasetSpec, get_spec
from rssc_mlflow.naming import few

VAL_DIR = "val"
# Folder names of the val images next to train/, first found wins: ours, then the archive's.
VAL_DIRS = (VAL_DIR, "ILSVRC2012_img_val")
VAL_PREFIX = "val/"  # of the val images' filenames, whatever the folder is called


def scan_imagenet(spec: DatasetSpec, manual_dir: Path, *, with_val: bool = False) -> BuildPlan:
    wnids = set(spec.classes)
    best: tuple[int, Path] | None = None
    for cand in root_candidates(manual_dir, spec.archive_root):
        if cand.name.lower() in {v.lower() for v in VAL_DIRS}:  # same wnids; never train
            continue
        hits = sum(1 for d in subdirs(cand) if d.name in wnids)
        if hits and (best is None or hits > best[0]):
            best = (hits, cand)
    if best is None:
        raise layout_error(spec, manual_dir, f"No ImageNet wnid folders of the ImageNet-100 list "
                           f"found under '{manual_dir}'.")
    root = best[1]
    found = {d.name: d for d in subdirs(root) if d.name in wnids}
    check_class_folders(spec, list(found), root, manual_dir, allow_unknown=True)
    plan = class_plan(spec, manual_dir, root, found)
    if with_val:
        _add_val(spec, manual_dir, plan)
    return plan


def _val_folder(spec: DatasetSpec, manual_dir: Path, train: Path) -> Path:
    """The `val/<wnid>/` folder next to the train folder, refusing a flat official one."""
    val = next(filter(None, (child_ci(train.parent, name) for name in VAL_DIRS)), None)
    if val is None:
        raise layout_error(spec, manual_dir, f"--with-val: no '{VAL_DIR}' folder next to the "
                           f"train folder '{train}'. Put the ILSVRC2012 validation images "
                           f"there as {VAL_DIR}/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG, or prepare "
                           "without --with-val.")
    if not any(d.name.startswith("n") for d in subdirs(val)):
        flat = sum(1 for p in val.iterdir() if p.name.startswith("ILSVRC2012_val_"))
        raise layout_error(spec, manual_dir, f"--with-val: '{val}' holds no wnid folders "
                           f"({flat} ILSVRC2012_val_* files directly inside). Sort them into "
                           f"{VAL_DIR}/<wnid>/ with the devkit's ground truth (e.g. the PyTorch "
                           "ImageNet example's valprep.sh), then prepare again.")
    return val


def _add_val(spec: DatasetSpec, manual_dir: Path, plan: BuildPlan) -> None:
    """Append the val images of the 100 wnids to `plan` and record their count."""
    val = _val_folder(spec, manual_dir, plan.root)
    found = {d.name: d for d in subdirs(val) if d.name in set(spec.classes)}
    check_class_folders(spec, list(found), val, manual_dir, allow_unknown=True)
    counts: collections.Counter[str] = collections.Counter()
    for label, wnid in enumerate(spec.classes):
        images, others = walk_images(found[wnid])
        plan.items += [Item(path=p, filename=VAL_PREFIX + relpath(p, val), label=label)
                       for p in images]
        plan.ignored += [VAL_PREFIX + relpath(p, val) for p in others]
        counts[wnid] = len(images)
    off = [f"{w} {n}" for w, n in counts.items() if n != IMAGENET_VAL_PER_CLASS]
    plan.anomalies["val_images"] = sum(counts.values())
    if off and not plan.synthetic:  # the stand-in writes fewer; a real copy has 50 each
        plan.anomalies["val_classes_off"] = (f"{len(off)} wnid(s) without "
                                             f"{IMAGENET_VAL_PER_CLASS} val images: {few(off, 5)}")


class RsscImagenet100(RsscBuilder):
    KEY = "imagenet100"

    @classmethod
    def scan(cls, manual_dir: Path, *, with_val: bool = False) -> BuildPlan:
        return scan_imagenet(get_spec(cls.KEY), manual_dir, with_val=with_val)
