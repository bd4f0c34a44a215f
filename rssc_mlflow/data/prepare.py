"""Prepare datasets from a manual download, and read prepared ones.

`prepare(key, manual_dir)` validates the unpacked download, builds it with the key's TFDS
builder into a staging folder, writes our manifest, records, metadata and the digests of
every prepared file (for `rssc verify`), writes the `RSSC_COMPLETE` marker LAST, then swaps
the staging version into place with renames. So an interrupted prepare leaves nothing
`load_prepared` accepts, and a failed `--force` leaves the previous version untouched.

All MLRSNet keys read one stored dataset (`<tfds_dir>/rssc_mlrsnet/1.0.0`); mlrsnet_ucm_same,
mlrsnet_ucm_other and mlrsnet_half are views of it (category filter; half = floor(n/2) per
category, see `builders.mlrsnet.half_selection`), with labels re-indexed to the view's classes.

Two switches reproduce the authors' data handling (README, "Faithful by default"); both are
recorded in the manifest (`options`, part of its digest) and in the metadata, and a prepare
asked for other options than the prepared version has rebuilds it:
- `with_val` (imagenet100): adds the 5,000 ILSVRC2012 val images of the 100 wnids, as in the
  paper's 131,689 (see `builders.imagenet100`).
- `tiff_as_jpeg` (ucm, rsicb256): stores each TIFF as a JPEG of that quality, as the authors
  read JPEG files converted beforehand; by default TIFFs are stored losslessly.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rssc_mlflow import __version__, config
from rssc_mlflow.data.builders import VERSION, builder_class, stored_key, tfds_name
from rssc_mlflow.data.catalog import CATALOG, MLRSNET_CATEGORIES, DatasetSpec, all_specs, get_spec
from rssc_mlflow.data.manifest import FileEntry, Manifest, hash_files, read_manifest, write_manifest
from rssc_mlflow.errors import DatasetError
from rssc_mlflow.files import atomic_write_text
from rssc_mlflow.naming import few

if TYPE_CHECKING:
    import tensorflow as tf

METADATA_FILE = "rssc_metadata.json"
RECORDS_FILE = "rssc_records.json"
COMPLETE_FILE = "RSSC_COMPLETE"
# sha256 of every prepared file (TFDS shards included) for `rssc verify`; the manifest only
# covers the source files. Datasets prepared before it existed lack it.
FILES_FILE = "rssc_files.json"
_STAGING = ".staging"
_IGNORED_KEPT = 100  # ignored files listed in the metadata (the count is always complete)

Progress = Callable[[str], None]
JPEG_QUALITY = (1, 95)  # PIL's useful range; above 95 it only grows the files


# --- Records and reports ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Record:
    """One image of a dataset view. `label` indexes `spec.classes`, except for mlrsnet_ml where
    it is the category index (what splits stratify by) and `labels` is the 60-long multi-hot."""

    filename: str
    label: int
    labels: tuple[int, ...] | None = None
    category: str | None = None


@dataclasses.dataclass
class PrepareReport:
    key: str
    images: int
    classes: int
    per_class: dict[str, int]
    skipped: list[str]
    synthetic: bool
    expected_images: int
    count_note: str
    anomalies: dict[str, Any]
    manifest_digest: str
    path: str
    already_prepared: bool
    ignored: int = 0
    seconds: float = 0.0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- Where things are ---------------------------------------------------------------------------
def prepared_dir(key: str) -> Path:
    """The folder holding `key`'s prepared data (shared by the MLRSNet views)."""
    return config.tfds_dir() / tfds_name(key) / VERSION


def _is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in
               (COMPLETE_FILE, METADATA_FILE, RECORDS_FILE, "dataset_info.json"))


def _spec(key: str) -> DatasetSpec:
    try:
        return get_spec(key)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


def _not_prepared(spec: DatasetSpec) -> DatasetError:
    if spec.origin == "user":
        return DatasetError(f"dataset '{spec.key}' (yours) is not prepared: run `rssc prepare "
                            f"{spec.key}` (it reads the folder it was registered from).")
    return DatasetError(
        f"dataset '{spec.key}' is not prepared: run `rssc prepare {spec.key} --manual-dir DIR` "
        f"(download: {spec.download_page}), DIR being the unpacked download."
    )


# --- Views ----------------------------------------------------------------------------------------
def _view(spec: DatasetSpec, stored: list[list[Any]]) -> list[Record]:
    """The records of `spec` from the stored rows [filename, label, multi-hot string|None]."""
    if not spec.is_mlrsnet:  # multi-hot bits: a user's multi-label dataset
        return [Record(f, int(label), tuple(int(b) for b in bits) if bits else None)
                for f, label, bits in stored]
    from rssc_mlflow.data.builders.mlrsnet import half_selection  # imports TFDS only when needed

    def category(row: list[Any]) -> str:
        return MLRSNET_CATEGORIES[int(row[1])]

    if spec.key == "mlrsnet_ml":
        return [Record(f, int(c), tuple(int(b) for b in bits), MLRSNET_CATEGORIES[int(c)])
                for f, c, bits in stored]
    if spec.key == "mlrsnet_sl":
        return [Record(f, int(c), None, MLRSNET_CATEGORIES[int(c)]) for f, c, _ in stored]
    keep_cats = set(spec.categories or ())
    rows = [r for r in stored if category(r) in keep_cats]
    if spec.fraction < 1.0:
        by_cat: dict[str, list[str]] = collections.defaultdict(list)
        for r in rows:
            by_cat[category(r)].append(r[0])
        chosen = half_selection(by_cat)
        rows = [r for r in rows if r[0] in chosen]
    index = {c: i for i, c in enumerate(spec.classes)}
    return [Record(r[0], index[category(r)], None, category(r)) for r in rows]


def _per_class(spec: DatasetSpec, records: list[Record]) -> dict[str, int]:
    if spec.multilabel:
        sums = [0] * spec.num_classes
        for r in records:
            for i, v in enumerate(r.labels or ()):
                sums[i] += v
        return dict(zip(spec.classes, sums))
    counts = collections.Counter(r.label for r in records)
    return {c: counts.get(i, 0) for i, c in enumerate(spec.classes)}


def _view_count(spec: DatasetSpec, per_stored_class: dict[str, int]) -> int:
    """Image count of a view from the stored per-class counts (cheap, for `status`)."""
    if not spec.is_mlrsnet or spec.parent is None:
        return sum(per_stored_class.values())
    cats = spec.categories or ()
    if spec.fraction < 1.0:
        return sum(per_stored_class.get(c, 0) // 2 for c in cats)
    return sum(per_stored_class.get(c, 0) for c in cats)


# --- Reading --------------------------------------------------------------------------------------
@dataclasses.dataclass
class PreparedDataset:
    spec: DatasetSpec
    path: Path
    metadata: dict[str, Any]

    @property
    def manifest_digest(self) -> str:
        return str(self.metadata["manifest_digest"])

    @property
    def synthetic(self) -> bool:
        return bool(self.metadata["synthetic"])

    @property
    def options(self) -> dict[str, Any]:
        """The prepare switches it was built with ({} = the defaults; see module doc)."""
        return dict(self.metadata.get("options", {}))

    @cached_property
    def records(self) -> list[Record]:
        rows = json.loads((self.path / RECORDS_FILE).read_text())["rows"]
        return _view(self.spec, rows)

    def manifest(self) -> Manifest:
        return read_manifest(self.path)

    def examples(self) -> tf.data.Dataset:
        """{filename, image (encoded bytes), label (int64)[, labels (uint8 multi-hot)]} for every
        record, in storage order (join on filename, not on position)."""
        import tensorflow as tf
        import tensorflow_datasets as tfds

        builder = tfds.builder_from_directory(str(self.path))
        ds = builder.as_dataset(split="train", shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
        multi = self.spec.multilabel
        if self.spec.parent is None:
            def pick(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
                out = {"filename": ex["filename"], "image": ex["image"],
                       "label": tf.cast(ex["label"], tf.int64)}
                if multi:
                    out["labels"] = ex["labels"]
                return out

            return ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # A subset: keep its records and re-index labels, via a filename -> label table.
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([r.filename for r in self.records], tf.string),
                tf.constant([r.label for r in self.records], tf.int64)),
            default_value=tf.constant(-1, tf.int64))

        def relabel(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            return {"filename": ex["filename"], "image": ex["image"],
                    "label": table.lookup(ex["filename"])}

        return ds.map(relabel, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True).filter(lambda ex: ex["label"] >= 0)


def _registered_again(spec: DatasetSpec, folder: Path) -> bool:
    """A user's dataset prepared under an earlier registration of the same name."""
    if spec.origin != "user":
        return False
    meta = json.loads((folder / METADATA_FILE).read_text())
    return meta.get("spec_digest") != spec.spec_digest


def load_prepared(key: str) -> PreparedDataset:
    """The prepared dataset of `key`; DatasetError when it is missing or incomplete."""
    spec = _spec(key)
    folder = prepared_dir(key)
    if not _is_complete(folder):
        raise _not_prepared(spec)
    if _registered_again(spec, folder):
        raise DatasetError(f"Your dataset '{key}' was registered again since it was prepared: "
                           f"run `rssc prepare {key} --force`.")
    return PreparedDataset(spec, folder, json.loads((folder / METADATA_FILE).read_text()))


def status() -> list[dict[str, Any]]:
    """One row per dataset key (the catalog's, then yours), for `rssc datasets`; reads only
    small JSON files."""
    meta: dict[str, dict[str, Any] | None] = {}
    rows = []
    for key, spec in all_specs().items():
        stored = stored_key(key)
        if stored not in meta:
            folder = prepared_dir(key)
            meta[stored] = (json.loads((folder / METADATA_FILE).read_text())
                            if _is_complete(folder) else None)
        m = meta[stored]
        rows.append({
            "key": key, "title": spec.title, "task": spec.task, "classes": spec.num_classes,
            "expected_images": spec.expected_images, "prepared": m is not None,
            "images": _view_count(spec, m["per_class"]) if m else None,
            "synthetic": bool(m["synthetic"]) if m else None,
            "download_page": spec.download_page, "origin": spec.origin,
            "resolution": spec.resolution, "hrrs": spec.hrrs,
            "description": spec.description, "spec_digest": spec.spec_digest,
        })
    return rows


# --- Preparing ------------------------------------------------------------------------------------
def _count_note(spec: DatasetSpec, per_class: dict[str, int], images: int, synthetic: bool,
                skipped: int) -> str:
    note = f"found {images:,} images"
    if images == spec.expected_images:
        note += ", as when registered" if spec.origin == "user" else ", as the catalog expects"
    elif spec.origin == "user":
        note += f", {spec.expected_images:,} when registered: the folder changed since; kept"
    else:
        why = ("a synthetic stand-in" if synthetic
               else spec.notes or "this copy differs from the catalog's")
        note += f", the catalog expects {spec.expected_images:,}: {why}; kept"
    if spec.expected_per_class and (not synthetic or spec.origin == "user"):
        off = [f"{c} {per_class.get(c, 0)} (expected {n})"
               for c, n in spec.expected_per_class.items() if per_class.get(c, 0) != n]
        if off:
            note += f"; classes off their expected count: {few(off, 5, show=str)}"
    if skipped:
        note += f"; {skipped} damaged file(s) skipped"
    return note


def _report(spec: DatasetSpec, ds: PreparedDataset, *, already: bool,
            seconds: float = 0.0) -> PrepareReport:
    records = ds.records
    per_class = _per_class(spec, records)
    skipped = [s["filename"] for s in ds.metadata["skipped"]]
    if spec.parent is not None:  # a subset reports only the damaged files of its categories
        cats = set(spec.categories or ())
        skipped = [f for f in skipped if f.split("/")[-2] in cats]
    return PrepareReport(
        key=spec.key, images=len(records), classes=spec.num_classes, per_class=per_class,
        skipped=skipped, synthetic=ds.synthetic, expected_images=spec.expected_images,
        count_note=_count_note(spec, per_class, len(records), ds.synthetic, len(skipped)),
        anomalies=ds.metadata.get("anomalies", {}), manifest_digest=ds.manifest_digest,
        path=str(ds.path), already_prepared=already, ignored=ds.metadata["ignored_count"],
        seconds=round(seconds, 3), options=ds.options,
    )


@contextlib.contextmanager
def _tfds_memory_bound(megabytes: int) -> Iterator[None]:
    """TFDS's shuffler keeps every encoded example in memory up to a module constant, then
    writes them to temporary buckets; the shards it writes are the same either way.

    A memory bound, not a speed choice, so it stays with `prepare`. The constant is TFDS's
    own (no public setting exists); a TFDS without it keeps its default bound, which
    prepares the same shards (tests/data/test_prepare.py checks that it is still read).
    """
    from tensorflow_datasets.core import shuffle

    if not isinstance(getattr(shuffle, "MAX_MEM_BUFFER_SIZE", None), int):
        yield
        return
    saved = shuffle.MAX_MEM_BUFFER_SIZE
    shuffle.MAX_MEM_BUFFER_SIZE = megabytes << 20
    try:
        yield
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = saved


def prepared_files_manifest(folder: Path) -> Manifest:
    """Size and sha256 of every file in a prepared folder but FILES_FILE and the marker
    (whose content, the manifest digest, `verify` checks against the metadata instead)."""
    rels = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return Manifest.of(hash_files(folder, [r for r in rels
                                           if r not in (FILES_FILE, COMPLETE_FILE)]))


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=None))


def _remove_stale_staging(root: Path, name: str) -> None:
    """Delete staging folders of prepares that died (killed), judged by their process id."""
    for folder in root.glob(f"{name}-*"):
        try:
            pid = int(folder.name.split("-")[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _swap(built: Path, final: Path) -> None:
    """Move `built` to `final`; the previous version is renamed aside first, deleted after."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.rename(old)
    try:
        built.rename(final)
    except OSError:
        if old.exists() and not final.exists():
            old.rename(final)  # put the previous version back
        raise
    shutil.rmtree(old, ignore_errors=True)


def tiff_keys() -> tuple[str, ...]:
    """The catalog datasets whose download holds TIFF files (UCM, RSI-CB256)."""
    return tuple(sorted(k for k, s in CATALOG.items() if s.file_pattern.endswith(".tif")))


def prepare_options(spec: DatasetSpec, *, with_val: bool = False,
                    tiff_as_jpeg: int | None = None) -> dict[str, Any]:
    """The switches asked for, checked against `spec`; only those off their default, so a
    default prepare records none (and keeps its digest)."""
    options: dict[str, Any] = {}
    if with_val:
        if spec.key != "imagenet100":
            raise DatasetError(f"--with-val adds ImageNet's validation images and applies to "
                               f"imagenet100 only. Received: {spec.key}.")
        options["with_val"] = True
    if tiff_as_jpeg is not None:
        if spec.key not in tiff_keys():
            raise DatasetError(f"--tiff-as-jpeg applies to the TIFF datasets "
                               f"({', '.join(tiff_keys())}); '{spec.key}' is not one. "
                               f"Received: {spec.key}.")
        low, high = JPEG_QUALITY
        if (not isinstance(tiff_as_jpeg, int) or isinstance(tiff_as_jpeg, bool)
                or not low <= tiff_as_jpeg <= high):
            raise DatasetError(f"--tiff-as-jpeg takes a JPEG quality from {low} to {high}. "
                               f"Received: {tiff_as_jpeg!r}.")
        options["tiff_as_jpeg"] = tiff_as_jpeg
    return options


def _same_options(final: Path, options: dict[str, Any]) -> bool:
    meta = json.loads((final / METADATA_FILE).read_text())
    return dict(meta.get("options", {})) == options


def prepare(key: str, manual_dir: Path | str | None, *, force: bool = False,
            skip_corrupt: bool = False, progress: Progress | None = None,
            with_val: bool = False, tiff_as_jpeg: int | None = None) -> PrepareReport:
    """Prepare `key` from the unpacked official download in `manual_dir` (see module doc); a
    user's dataset (`rssc datasets add`) defaults to the folder it was registered from.

    A no-op (`already_prepared=True`) when a complete version with the same options exists,
    unless `force`. Raises DatasetError for a wrong layout, missing or unknown classes,
    unmatched MLRSNet labels, damaged images (unless `skip_corrupt`, which leaves them out and
    lists them) and options that do not apply (`with_val`, `tiff_as_jpeg`: module doc).
    """
    started = time.monotonic()
    spec = _spec(key)
    options = prepare_options(spec, with_val=with_val, tiff_as_jpeg=tiff_as_jpeg)
    say = progress or (lambda _msg: None)
    final = prepared_dir(key)
    if not force and _is_complete(final) and not _registered_again(spec, final):
        if _same_options(final, options):
            say(f"{spec.key}: already prepared in {final}")
            return _report(spec, load_prepared(key), already=True)
        # The prepared version was asked for differently: build what is asked for now.
        say(f"{spec.key}: prepared with other options than {options or 'the defaults'}; "
            "rebuilding")
    memory_mb = config.prepare_memory_mb()  # a bad setting fails before any work
    if manual_dir is None:
        if spec.origin != "user":
            raise DatasetError(f"--manual-dir is required for '{spec.key}': the unpacked "
                               f"download of {spec.title} ({spec.download_page}).")
        from rssc_mlflow.data import user_datasets

        manual_dir = user_datasets.load(key).manual_dir  # type: ignore[union-attr]
    manual = Path(manual_dir).expanduser()
    if not manual.is_dir():
        raise DatasetError(f"--manual-dir '{manual}' is not a folder. Download {spec.title} from "
                           f"{spec.download_page}, unpack it, and pass the unpacked folder.")

    cls = builder_class(key)
    say(f"{spec.key}: scanning {manual}")
    plan = cls.scan(manual, with_val=True) if with_val else cls.scan(manual)
    say(f"{spec.key}: {len(plan.items):,} images found under {plan.root}")

    import tensorflow_datasets as tfds  # already loaded by the builder module; named here

    staging_root = config.tfds_dir() / _STAGING
    staging_root.mkdir(parents=True, exist_ok=True)
    name = tfds_name(key)
    _remove_stale_staging(staging_root, name)
    staging = staging_root / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        builder = cls(data_dir=str(staging), plan=plan, skip_corrupt=skip_corrupt, progress=say,
                      tiff_as_jpeg=options.get("tiff_as_jpeg"))
        try:
            # TFDS prints its own notes to stdout; keep stdout clean for `rssc prepare --json`.
            with contextlib.redirect_stdout(sys.stderr), _tfds_memory_bound(memory_mb):
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
        except Exception:
            if builder.failure is not None:  # our own error, possibly wrapped by TFDS
                raise builder.failure from None
            raise
        built = Path(builder.data_dir)
        say(f"{spec.key}: writing manifest")
        label_entries = hash_files(plan.root, plan.label_files)
        manifest = Manifest.of([*(FileEntry(s.filename, s.size, s.sha256) for s in builder.sources),
                                *label_entries], options)
        write_manifest(built, manifest)
        kept = {s.filename for s in builder.sources}
        stored_rows = [[i.filename, i.label,
                        "".join(map(str, i.labels)) if i.labels is not None else None]
                       for i in plan.items if i.filename in kept]
        _write_json(built / RECORDS_FILE, {"columns": ["filename", "label", "labels"],
                                           "rows": stored_rows})
        stored_spec = get_spec(plan.key)
        counts = collections.Counter(r[1] for r in stored_rows)
        metadata = {
            "stored_key": stored_key(key), "prepared_for": spec.key, "tfds_name": builder.name,
            "version": VERSION, "package_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "source": str(plan.root), "synthetic": plan.synthetic, "images": len(stored_rows),
            "per_class": {c: counts.get(i, 0) for i, c in enumerate(stored_spec.classes)},
            "skipped": [{"filename": f, "error": e} for f, e in builder.skipped],
            "ignored_count": len(plan.ignored), "ignored": plan.ignored[:_IGNORED_KEPT],
            "anomalies": plan.anomalies, "manifest_digest": manifest.digest,
            "manifest_files": len(manifest.files), "options": options,
        }
        if spec.origin == "user":
            metadata["spec_digest"] = spec.spec_digest
        _write_json(built / METADATA_FILE, metadata)
        say(f"{spec.key}: recording digests of the prepared files")
        _write_json(built / FILES_FILE, prepared_files_manifest(built).to_json())
        # Last: only a folder with this marker counts as prepared.
        (built / COMPLETE_FILE).write_text(manifest.digest + "\n")
        _swap(built, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"{spec.key}: prepared in {final}")
    return _report(spec, load_prepared(key), already=False, seconds=time.monotonic() - started)

