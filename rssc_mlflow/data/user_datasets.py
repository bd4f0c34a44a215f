"""Your own scene datasets as dataset keys: `rssc datasets add NAME --manual-dir DIR`.

Two layouts are accepted:

- Folder per class (`--task single`, the default). Every *leaf folder* under DIR, at any depth,
  is one class: a folder that holds no sub-folder (unpacking junk such as `__MACOSX/` aside).
  The class is named by the leaf folder's own name, exactly as written (spaces, capitals and
  non-ASCII letters kept, Unicode in NFC form); the folders above it only group classes and
  never enter the name. So `DIR/vegetation/Dense Forest/` and `DIR/Dense Forest/` both give the
  class "Dense Forest", and two leaf folders with the same name in different branches are
  refused as ambiguous (rename one, or merge them). Images lying in a folder that also has
  sub-folders belong to no class: they are ignored and counted.
- Multi-label CSV (`--task multi --labels-csv FILE`), as MLRSNet's label files: a header line,
  then one row per image: its file name (relative to DIR, e.g. `tiles/0001.jpg`, or a bare file
  name that is unique under DIR) and one 0/1 column per label (the header names the labels).
  Every image under DIR needs exactly one row, and every row at least one label. A copy of the
  CSV is kept beside the spec, so later edits of FILE do not change the registered dataset.

Refused, each with what to do: a NAME that is not `[a-z][a-z0-9_]*` (it names TFDS folders,
registered models `rssc-resnet50-NAME` and MLflow parameters), one that clashes with a catalog
key or a reserved word (`scratch`, `imagenet`, ...), a tree with fewer than two classes, an
empty class, duplicate labels or class names, and names with control characters.

The spec is a small JSON file, `$RSSC_DATA_DIR/user_datasets/NAME.json`. Its `digest` hashes
what defines the dataset (name, task, layout, classes, the list of files and their labels),
not where DIR lies or when it was added; `prepare` stores it in the dataset's metadata and every
run on the dataset records it (tag `rssc.dataset_spec_digest`) and includes it in the protocol
fingerprint, so runs on a re-registered, different dataset never share a result with the old.
After `add`, NAME is a dataset key like any other (`get_spec`): `rssc prepare NAME` (DIR is
remembered), any stage's --source/--target, `rssc transfer NAME`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import unicodedata
from pathlib import Path
from typing import Any

from rssc_mlflow import __version__, config
from rssc_mlflow.data.builders.common import (
    BuildPlan,
    Item,
    class_plan,
    is_junk,
    is_synthetic,
    relpath,
    walk_images,
)
from rssc_mlflow.data.catalog import CATALOG, DatasetSpec, Task
from rssc_mlflow.errors import DatasetError
from rssc_mlflow.files import atomic_write_text, hash_file
from rssc_mlflow.naming import few

SPEC_FOLDER = "user_datasets"
FORMAT = 1
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")
# Model references and stored-dataset names that a key must never shadow.
RESERVED = frozenset({"scratch", "imagenet", "mlrsnet", "all", "default", "none", "user"})
TFDS_PREFIX = "rssc_user_"  # user datasets never share a TFDS folder with a catalog dataset
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LAYOUT_FOLDERS, _LAYOUT_CSV = "user_folders", "user_csv"


def spec_dir() -> Path:
    return config.data_dir() / SPEC_FOLDER


def spec_path(name: str) -> Path:
    return spec_dir() / f"{name}.json"


def _labels_copy(name: str) -> Path:
    return spec_dir() / f"{name}.labels.csv"


@dataclasses.dataclass(frozen=True)
class UserDataset:
    """A registered dataset, as stored in its spec file."""

    name: str
    task: Task
    layout: str
    classes: tuple[str, ...]
    manual_dir: str  # absolute; prepare reads it unless given another --manual-dir
    images: int
    per_class: dict[str, int]
    files_sha256: str  # of the sorted "file<TAB>label(s)" lines
    description: str = ""
    class_dirs: dict[str, str] = dataclasses.field(default_factory=dict)  # class -> folder
    labels_csv: str = ""  # the kept copy, relative to the spec folder
    labels_csv_source: str = ""  # where it was copied from (informative)
    labels_csv_sha256: str = ""
    ignored: int = 0
    created: str = ""
    package_version: str = ""
    digest: str = ""

    def defining(self) -> dict[str, Any]:
        """What the digest covers: the dataset's identity, not its location or age."""
        return {"format": FORMAT, "name": self.name, "task": self.task, "layout": self.layout,
                "classes": list(self.classes), "class_dirs": self.class_dirs,
                "per_class": self.per_class, "images": self.images,
                "files_sha256": self.files_sha256, "labels_csv_sha256": self.labels_csv_sha256}

    def compute_digest(self) -> str:
        blob = json.dumps(self.defining(), sort_keys=True, ensure_ascii=False,
                          separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UserDataset:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["classes"] = tuple(values["classes"])
        return cls(**values)

    def to_spec(self) -> DatasetSpec:
        if self.layout == _LAYOUT_CSV:
            pattern = (f"images under {self.manual_dir}, listed in a labels CSV (file name "
                       f"column, then one 0/1 column per label: {few(self.classes, 5)})")
        else:
            pattern = (f"one leaf folder per class under {self.manual_dir} (class = the leaf "
                       f"folder's name: {few(self.classes, 5)})")
        return DatasetSpec(
            key=self.name, title=self.description or f"{self.name} (your dataset)",
            classes=self.classes, task=self.task, expected_images=self.images,
            layout=self.layout,  # type: ignore[arg-type]
            archive_root="", images_dir="", file_pattern=pattern,
            download_page=f"your own data, registered from {self.manual_dir} with `rssc "
                          f"datasets add {self.name}`",
            expected_per_class=dict(self.per_class) if self.task == "single" else None,
            notes="the count when it was registered", origin="user",
            spec_digest=self.digest, description=self.description,
        )


# --- Lookup (catalog.get_spec calls these) --------------------------------------------------------

_cache: dict[Path, tuple[tuple[int, int], UserDataset]] = {}


def load(name: str) -> UserDataset | None:
    """The registered dataset `name`, or None. Re-read only when its file changed."""
    path = spec_path(name)
    try:
        stat = path.stat()
    except OSError:
        return None
    stamp = (stat.st_mtime_ns, stat.st_size)
    hit = _cache.get(path)
    if hit and hit[0] == stamp:
        return hit[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        dataset = UserDataset.from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"The spec file {path} of your dataset {name!r} is damaged ({exc}). "
                           f"Remove it with `rssc datasets remove {name}` and add the dataset "
                           "again.") from None
    if dataset.digest != dataset.compute_digest():
        raise DatasetError(f"The spec file {path} was edited after `rssc datasets add` wrote "
                           f"it (its digest no longer matches). Run `rssc datasets remove "
                           f"{name}` and add the dataset again.")
    _cache[path] = (stamp, dataset)
    return dataset


def find_spec(name: str) -> DatasetSpec | None:
    if not NAME_PATTERN.fullmatch(name or ""):
        return None
    dataset = load(name)
    return dataset.to_spec() if dataset else None


def names() -> list[str]:
    folder = spec_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json")
                  if NAME_PATTERN.fullmatch(p.stem) and p.stem not in CATALOG)


def specs() -> list[DatasetSpec]:
    return [s for s in (find_spec(n) for n in names()) if s is not None]


# --- Scanning a tree ------------------------------------------------------------------------------


def _clean(name: str, what: str, where: str) -> str:
    text = unicodedata.normalize("NFC", name.strip())
    if not text:
        raise DatasetError(f"An empty {what} in {where}: give every {what} a name.")
    if _CONTROL.search(text):
        raise DatasetError(f"The {what} {text!r} in {where} contains a control character "
                           "(newline, tab, ...): rename it.")
    return text


@dataclasses.dataclass
class _FolderScan:
    classes: dict[str, Path]  # class name -> leaf folder
    ignored: list[Path]  # images outside leaf folders, other files


def _scan_folders(root: Path) -> _FolderScan:
    leaves: dict[str, list[Path]] = {}
    ignored: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_junk(d))
        folder = Path(dirpath)
        files = [f for f in filenames if not is_junk(f)]
        if dirnames:
            ignored += [folder / f for f in files]  # not in a leaf: no class
            continue
        if folder == root:
            break  # DIR itself is the only leaf: handled as "one class" below
        name = _clean(folder.name, "class folder name", str(folder.parent))
        leaves.setdefault(name, []).append(folder)
    if not leaves and any(not is_junk(e.name) for e in os.scandir(root)):
        leaves[_clean(root.name, "class folder name", str(root.parent))] = [root]
    dup = {n: ps for n, ps in leaves.items() if len(ps) > 1}
    if dup:
        shown = "; ".join(f"{n!r} at " + ", ".join(repr(relpath(p, root)) for p in ps)
                          for n, ps in list(dup.items())[:5])
        raise DatasetError(
            f"Ambiguous class folders under '{root}': the class is the leaf folder's own name, "
            f"and these names appear more than once: {shown}. Rename one of each (or merge "
            "them into one folder), then add the dataset again.")
    return _FolderScan({n: ps[0] for n, ps in leaves.items()}, ignored)


def _lines_digest(lines: list[str]) -> str:
    h = hashlib.sha256()
    for line in sorted(lines):
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise DatasetError(
            f"Invalid dataset name {name!r}: use lowercase letters, digits and '_' (starting "
            "with a letter, at most 40 characters), e.g. 'my_tiles'. The name becomes a "
            "folder, a registered model name (rssc-resnet50-NAME) and an MLflow parameter.")
    if name in CATALOG:
        raise DatasetError(f"{name!r} is a catalog dataset ({CATALOG[name].title}); choose "
                           "another name for your dataset.")
    if name in RESERVED:
        raise DatasetError(f"{name!r} is reserved (model references and stored datasets use "
                           f"it: {', '.join(sorted(RESERVED))}); choose another name.")


def _too_few(found: list[str], where: Path, how: str) -> DatasetError:
    return DatasetError(
        f"Only {len(found)} class{'es' if len(found) != 1 else ''} found in '{where}' "
        f"({few(found) or 'none'}): a scene dataset needs at least two. {how}")


def _describe_folders(name: str, manual: Path, description: str) -> UserDataset:
    scan = _scan_folders(manual)
    classes = sorted(scan.classes)
    if len(classes) < 2:
        raise _too_few(classes, manual, "Put each class's images in its own folder: "
                       "DIR/<class>/<image files> (deeper trees: the class is the leaf "
                       "folder), or use --task multi --labels-csv FILE.")
    per_class: dict[str, int] = {}
    lines: list[str] = []
    empty: list[str] = []
    ignored = len(scan.ignored)
    for c in classes:
        images, others = walk_images(scan.classes[c])
        ignored += len(others)
        per_class[c] = len(images)
        if not images:
            rel = relpath(scan.classes[c], manual)
            empty.append(c if rel == c else f"{c} (at {rel})")
        lines += [f"{relpath(p, manual)}\t{c}" for p in images]
    if empty:
        raise DatasetError(
            f"Empty class folder(s) under '{manual}': {few(empty)} hold no image (files ending "
            f".jpg, .jpeg, .png, .tif, .tiff, .bmp or .gif). Add images or remove the folders.")
    return UserDataset(
        name=name, task="single", layout=_LAYOUT_FOLDERS, classes=tuple(classes),
        manual_dir=str(manual), images=len(lines), per_class=per_class,
        files_sha256=_lines_digest(lines), description=description,
        class_dirs={c: relpath(scan.classes[c], manual) if scan.classes[c] != manual else "."
                    for c in classes},
        ignored=ignored)


@dataclasses.dataclass
class _CsvRows:
    labels: tuple[str, ...]
    rows: dict[str, tuple[int, ...]]  # file relative to DIR -> multi-hot


def _read_labels_csv(path: Path, manual: Path) -> _CsvRows:
    """Parse and check a multi-label CSV against the images under `manual`."""
    shown = str(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise DatasetError(f"The labels CSV {shown} is not UTF-8 text; save it as UTF-8 CSV."
                           ) from None
    except OSError as exc:
        raise DatasetError(f"Cannot read the labels CSV {shown}: {exc.strerror or exc}.") from None
    rows = [r for r in rows if r and "".join(r).strip()]
    if not rows:
        raise DatasetError(f"The labels CSV {shown} is empty: it needs a header line (a file "
                           "name column, then one column per label) and one row per image.")
    header = [_clean(h, "label", f"the header of {shown}") for h in rows[0][1:]]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DatasetError(f"The labels CSV {shown} names the label(s) {few(dup)} more than "
                           "once in its header; every label column needs its own name.")
    if len(header) < 2:
        raise _too_few(header, path, "A multi-label CSV has a file name column, then one "
                       "0/1 column per label (at least two).")
    images, _ = walk_images(manual)
    by_rel = {relpath(p, manual): p for p in images}
    by_base: dict[str, list[str]] = {}
    for rel in by_rel:
        by_base.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)
    out: dict[str, tuple[int, ...]] = {}
    unknown: list[str] = []
    ambiguous: list[str] = []
    no_label: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        name = unicodedata.normalize("NFC", row[0].strip()).replace("\\", "/").lstrip("./")
        try:
            values = tuple(int(v.strip()) for v in row[1:])
        except ValueError:
            values = ()
        if len(values) != len(header) or any(v not in (0, 1) for v in values):
            raise DatasetError(
                f"The labels CSV {shown}, line {line}: expected a file name and {len(header)} "
                f"values of 0 or 1 (one per label: {few(header, 5)}), got {row[1:][:8]}. Fix "
                "the row.")
        rel = name if name in by_rel else None
        if rel is None:
            hits = by_base.get(name, [])
            if len(hits) == 1:
                rel = hits[0]
            else:
                (ambiguous if hits else unknown).append(name)
                continue
        if rel in out:
            raise DatasetError(f"The labels CSV {shown} lists {name!r} twice (line {line}); "
                               "keep one row per image.")
        if not any(values):
            no_label.append(name)
        out[rel] = values
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} row(s) name no image under '{manual}': {few(unknown)}")
    if ambiguous:
        problems.append(f"{len(ambiguous)} bare file name(s) match several images: "
                        f"{few(ambiguous)} (write the path relative to DIR)")
    without = sorted(set(by_rel) - set(out))
    if without:
        problems.append(f"{len(without)} image(s) under '{manual}' have no row: "
                        f"{few(without)}")
    if no_label:
        problems.append(f"{len(no_label)} row(s) have no label set to 1: {few(no_label)}")
    if problems:
        raise DatasetError(f"The labels CSV {shown} does not match the images: "
                           f"{'; '.join(problems)}. Every image needs one row with at least one "
                           "1, and every row one image.")
    never = [h for i, h in enumerate(header) if not any(v[i] for v in out.values())]
    if never:
        raise DatasetError(f"Empty label(s) in {shown}: no image has {few(never)} set to 1. "
                           "Remove those columns or label some images with them.")
    return _CsvRows(tuple(header), out)


def _describe_csv(name: str, manual: Path, labels_csv: Path, description: str,
                  copy_to: Path) -> UserDataset:
    parsed = _read_labels_csv(labels_csv, manual)
    lines = [f"{f}\t{''.join(map(str, v))}" for f, v in parsed.rows.items()]
    per_class = {label: sum(v[i] for v in parsed.rows.values())
                 for i, label in enumerate(parsed.labels)}
    _, (csv_sha256,) = hash_file(labels_csv)
    return UserDataset(
        name=name, task="multi", layout=_LAYOUT_CSV, classes=parsed.labels,
        manual_dir=str(manual), images=len(parsed.rows), per_class=per_class,
        files_sha256=_lines_digest(lines), description=description,
        labels_csv=copy_to.name, labels_csv_source=str(labels_csv.resolve()),
        labels_csv_sha256=csv_sha256)


# --- add / remove ---------------------------------------------------------------------------------


def add(name: str, manual_dir: Path | str, *, task: str | None = None,
        labels_csv: Path | str | None = None, description: str = "") -> UserDataset:
    """Register `manual_dir` as dataset `name` (see the module doc); raises DatasetError."""
    _check_name(name)
    if spec_path(name).exists():
        raise DatasetError(f"A dataset named {name!r} is already registered ({spec_path(name)}). "
                           f"Run `rssc datasets remove {name}` first, or choose another name.")
    task = task or ("multi" if labels_csv else "single")
    if task not in ("single", "multi"):
        raise DatasetError(f"Invalid --task {task!r}: single (a folder per class) or multi (a "
                           "labels CSV).")
    if task == "multi" and not labels_csv:
        raise DatasetError("--task multi needs --labels-csv FILE: a file name column, then one "
                           "0/1 column per label.")
    if task == "single" and labels_csv:
        raise DatasetError("--labels-csv is for multi-label data (--task multi); a "
                           "single-label dataset is read from its class folders.")
    manual = Path(manual_dir).expanduser().resolve()
    if not manual.is_dir():
        raise DatasetError(f"--manual-dir '{manual}' is not a folder: pass the folder that "
                           "holds your images.")
    description = _clean(description, "description", "--description") if description else ""
    folder = spec_dir()
    if task == "multi":
        csv_path = Path(labels_csv).expanduser()  # type: ignore[arg-type]
        if not csv_path.is_file():
            raise DatasetError(f"--labels-csv '{csv_path}' is not a file.")
        dataset = _describe_csv(name, manual, csv_path, description, _labels_copy(name))
    else:
        dataset = _describe_folders(name, manual, description)
    dataset = dataclasses.replace(
        dataset, created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        package_version=__version__)
    dataset = dataclasses.replace(dataset, digest=dataset.compute_digest())
    folder.mkdir(parents=True, exist_ok=True)
    if task == "multi":
        shutil.copyfile(Path(labels_csv).expanduser(), _labels_copy(name))  # type: ignore[arg-type]
    atomic_write_text(spec_path(name),
                      json.dumps(dataset.to_json(), ensure_ascii=False, indent=1) + "\n")
    return dataset


def remove(name: str) -> list[Path]:
    """Unregister `name`: its spec, its labels copy, its prepared data and split files.

    MLflow runs and registered models stay (they are results). Returns what was removed.
    """
    if name in CATALOG:
        raise DatasetError(f"{name!r} is a catalog dataset, not one of yours: only datasets "
                           "added with `rssc datasets add` can be removed.")
    if not NAME_PATTERN.fullmatch(name or "") or not spec_path(name).exists():
        mine = names()
        raise DatasetError(f"No dataset of yours is named {name!r}. Yours: "
                           f"{', '.join(mine) or '(none)'}.")
    removed: list[Path] = []
    prepared = config.tfds_dir() / f"{TFDS_PREFIX}{name}"
    for path in (prepared, *sorted(config.splits_dir().glob(f"{name}-*.json")),
                 _labels_copy(name), spec_path(name)):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path)
    _cache.pop(spec_path(name), None)
    return removed


# --- The build plan (the user builder's `scan`) ---------------------------------------------------


def _changed(dataset: UserDataset, now: UserDataset) -> DatasetError:
    added = [c for c in now.classes if c not in dataset.classes]
    gone = [c for c in dataset.classes if c not in now.classes]
    parts = [f"new: {few(added)}" if added else "", f"missing: {few(gone)}" if gone else ""]
    return DatasetError(
        f"The data of your dataset {dataset.name!r} has changed since it was registered: its "
        f"classes differ ({'; '.join(p for p in parts if p) or 'order or labels'}). Run `rssc "
        f"datasets remove {dataset.name}` and `rssc datasets add {dataset.name} ...` again.")


def scan(name: str, manual_dir: Path | str | None) -> BuildPlan:
    """What `prepare NAME` builds: the registered classes, from `manual_dir` (default: the
    folder it was registered from). Image counts may differ (the report says so); classes
    may not."""
    from rssc_mlflow.data.catalog import get_spec

    dataset = load(name)
    if dataset is None:
        raise DatasetError(f"No dataset of yours is named {name!r}.")
    spec = get_spec(name)
    manual = Path(manual_dir or dataset.manual_dir).expanduser().resolve()
    if not manual.is_dir():
        raise DatasetError(f"The folder of your dataset {name!r}, '{manual}', does not exist "
                           "(moved or deleted?). Pass its new place with --manual-dir DIR.")
    index = {c: i for i, c in enumerate(dataset.classes)}
    if dataset.layout == _LAYOUT_CSV:
        parsed = _read_labels_csv(spec_dir() / dataset.labels_csv, manual)
        if parsed.labels != dataset.classes:
            raise _changed(dataset, dataclasses.replace(dataset, classes=parsed.labels))
        items = [Item(path=manual / rel, filename=rel, label=v.index(1), labels=v)
                 for rel, v in sorted(parsed.rows.items())]
        return BuildPlan(key=name, root=manual, items=items,
                         synthetic=is_synthetic(manual, manual))
    found = _scan_folders(manual)
    if sorted(found.classes) != list(dataset.classes):
        raise _changed(dataset, dataclasses.replace(dataset, classes=tuple(sorted(found.classes))))
    plan = class_plan(spec, manual, manual, found.classes)
    plan.ignored += [relpath(p, manual) for p in found.ignored]
    assert all(0 <= i.label < len(index) for i in plan.items)
    return plan
