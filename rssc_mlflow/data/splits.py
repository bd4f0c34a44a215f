"""Train/test splits: stratified per class, deterministic on any machine, persisted as JSON.

A split is a `SplitManifest`: two sorted lists of file names relative to the dataset root, plus
what is needed to tell whether it still matches its dataset (`dataset_digest`) and to identify
it in a run (`digest`). See docs/PROTOCOL.md, "Splits".

The authors' released pickles can be imported without running code from them
(`import_authors_split`): only the classes that numpy arrays and a LabelEncoder need are let in.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import pickle
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

import numpy as np

from rssc_mlflow import config
from rssc_mlflow.data.catalog import CATALOG
from rssc_mlflow.errors import SplitError
from rssc_mlflow.files import atomic_write_text
from rssc_mlflow.protocol import SEED, TRAIN_FRACTION

Role = Literal["source", "target"]
ROLES: tuple[str, ...] = ("source", "target")
FORMAT_VERSION = 1
_EXAMPLES = 5  # how many offending paths an error message shows


class RecordLike(Protocol):
    """What a split needs of a record of `prepare.PreparedDataset.records`."""

    filename: str
    label: int
    # `category` is optional on the record: getattr(record, "category", None) is used.


class PreparedLike(Protocol):
    """What `get_split` needs of a `prepare.PreparedDataset`."""

    spec: Any  # a catalog.DatasetSpec; only `.key` is read
    records: Sequence[RecordLike]
    manifest_digest: str


@dataclasses.dataclass
class SplitManifest:
    dataset: str
    role: str
    seed: int | None
    train: list[str]
    test: list[str]
    counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    dataset_digest: str = ""
    source: str = "stratified"  # or "imported:<file name>" or "file:<file name>"
    digest: str = ""
    created: str = ""  # ISO time, informative only: not part of `digest`
    # Class names of the authors' LabelEncoder, when the split was imported with one.
    label_encoder_classes: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = compute_digest(self.dataset, self.role, self.train, self.test)
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data = {"format_version": FORMAT_VERSION, **data}
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"

    def save(self, path: Path) -> Path:
        """Write atomically (`files.atomic_write_text`): readers never see half a split."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> SplitManifest:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SplitError(f"The split file {path} does not exist. Check the path.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SplitError(
                f"The split file {path} is not readable JSON ({exc}). A split file is the JSON "
                "that `rssc splits` writes; delete or replace this one."
            ) from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "the split") -> SplitManifest:
        def bad(what: str) -> SplitError:
            return SplitError(
                f"{where} is not a valid split manifest: {what}. It needs at least 'dataset' "
                "(a dataset key), 'role' ('source' or 'target'), 'train' and 'test' (lists of "
                "file names relative to the dataset root); fix the file or make a new split."
            )

        if not isinstance(data, dict):
            raise bad("the top level is not a JSON object")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise bad(f"format_version {version!r} is not {FORMAT_VERSION}")
        for key in ("dataset", "role", "train", "test"):
            if key not in data:
                raise bad(f"'{key}' is missing")
        if not isinstance(data["dataset"], str) or not data["dataset"]:
            raise bad("'dataset' is not a non-empty string")
        if data["role"] not in ROLES:
            raise bad(f"'role' is {data['role']!r}")
        for key in ("train", "test"):
            items = data[key]
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise bad(f"'{key}' is not a list of strings")
        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise bad("'seed' is not an integer")
        counts = data.get("counts", {})
        if not isinstance(counts, dict) or not all(
            isinstance(v, dict) and all(isinstance(n, int) for n in v.values())
            for v in counts.values()
        ):
            raise bad("'counts' is not {'train': {class: n}, 'test': {class: n}}")
        for key in ("dataset_digest", "source", "digest", "created"):
            if not isinstance(data.get(key, ""), str):
                raise bad(f"'{key}' is not a string")
        le = data.get("label_encoder_classes")
        if le is not None and not (isinstance(le, list) and all(isinstance(x, str) for x in le)):
            raise bad("'label_encoder_classes' is not a list of strings")
        manifest = cls(
            dataset=data["dataset"], role=data["role"], seed=seed,
            train=list(data["train"]), test=list(data["test"]), counts=counts,
            dataset_digest=data.get("dataset_digest", ""),
            source=data.get("source", "") or f"file:{Path(where).name}",
            digest="", created=data.get("created", ""), label_encoder_classes=le,
        )
        # A stored digest that disagrees means the lists were edited after the file was written:
        # runs would be logged under the wrong split identity.
        stored = data.get("digest", "")
        if stored and stored != manifest.digest:
            raise SplitError(
                f"{where} was changed after it was written: its 'digest' does not match its "
                "train/test lists. If the edit is intended, delete the 'digest' field so that it "
                "is recomputed; otherwise make the split again."
            )
        return manifest


def compute_digest(dataset: str, role: str, train: Sequence[str], test: Sequence[str]) -> str:
    """sha256 of the canonical JSON of what defines a split (not its timestamps or counts)."""
    canonical = json.dumps(
        {"dataset": dataset, "role": role, "train": list(train), "test": list(test)},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _class_key(record: RecordLike) -> str:
    # MLRSNet's single- and multi-label datasets share one split made per category folder, so the
    # category wins over the label when a record has one.
    category = getattr(record, "category", None)
    return str(category) if category is not None else str(record.label)


def split_family(dataset: str) -> str:
    """The name that seeds a split: all MLRSNet keys share one, so they share one split."""
    spec = CATALOG.get(dataset)
    return spec.family if spec is not None else dataset


def _rng(dataset: str, role: str, seed: int, class_key: str) -> np.random.Generator:
    # Python's hash() is salted per process; sha256 is the same everywhere.
    text = "\x1f".join((split_family(dataset), role, str(seed), class_key))
    entropy = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "big")
    return np.random.default_rng(entropy)


def n_train_for(n: int, role: str) -> int:
    """round-half-up(fraction * n), exactly (Fraction avoids 0.8 * n float surprises)."""
    fraction = Fraction(str(TRAIN_FRACTION[role]))
    return int((fraction * n + Fraction(1, 2)).__floor__())


def _counts(groups: dict[str, list[str]], train: set[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for key in sorted(groups):
        n_tr = sum(1 for f in groups[key] if f in train)
        counts["train"][key] = n_tr
        counts["test"][key] = len(groups[key]) - n_tr
    return counts


def _group(records: Iterable[RecordLike]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for record in records:
        groups[_class_key(record)].append(record.filename)
    return groups


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}. Choose one of: {', '.join(ROLES)}.")


def make_split(
    records: Sequence[RecordLike],
    *,
    dataset: str,
    role: Role,
    seed: int = SEED,
    dataset_digest: str = "",
) -> SplitManifest:
    """Per-class stratified split: round-half-up(fraction * n) images of each class to train.

    Deterministic whatever the order of `records`: each class is sorted by file name, then
    permuted by a generator seeded from sha256(dataset family, role, seed, class).
    """
    _check_role(role)
    groups = _group(records)
    dup = [f for f, n in Counter(r.filename for r in records).items() if n > 1]
    if dup:
        raise SplitError(
            f"The records of {dataset} list {len(dup)} file name(s) more than once "
            f"({_examples(sorted(dup))}); a split needs unique file names. Prepare the dataset "
            "again."
        )
    train: list[str] = []
    test: list[str] = []
    for key in sorted(groups):
        files = sorted(groups[key])
        order = _rng(dataset, role, seed, key).permutation(len(files))
        n_tr = n_train_for(len(files), role)
        train.extend(files[i] for i in order[:n_tr])
        test.extend(files[i] for i in order[n_tr:])
    train.sort()
    test.sort()
    return SplitManifest(
        dataset=dataset, role=role, seed=seed, train=train, test=test,
        counts=_counts(groups, set(train)), dataset_digest=dataset_digest, source="stratified",
    )


# --- Validation against a dataset ------------------------------------------------------------


def _unsafe(path: str) -> bool:
    """True if `path` could point outside the dataset root."""
    p = path.replace("\\", "/")
    return (
        not p
        or p.startswith("/")
        or (len(p) > 1 and p[1] == ":")  # a Windows drive, "C:..."
        or any(part == ".." for part in p.split("/"))
    )


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(repr(x) for x in items[:_EXAMPLES])
    return shown + (", ..." if len(items) > _EXAMPLES else "")


def validate_manifest(manifest: SplitManifest, records: Sequence[RecordLike], *,
                      where: str = "The split") -> SplitManifest:
    """Check `manifest` against the dataset's records; return it with its counts recomputed."""
    unsafe = [f for f in (*manifest.train, *manifest.test) if _unsafe(f)]
    if unsafe:
        raise SplitError(
            f"{where} names {len(unsafe)} path(s) that leave the dataset root (absolute or with "
            f"'..'): {_examples(unsafe)}. Paths must be relative to the dataset root, e.g. "
            "'airplane/airplane_001.jpg'; fix the file."
        )
    both = sorted(set(manifest.train) & set(manifest.test))
    if both:
        raise SplitError(
            f"{where} puts {len(both)} file(s) in both train and test: {_examples(both)}. "
            "Train and test must be disjoint; fix the file."
        )
    for key in ("train", "test"):
        items = getattr(manifest, key)
        if len(set(items)) != len(items):
            raise SplitError(f"{where} lists some {key} files more than once; fix the file.")
    known = {r.filename for r in records}
    missing = [f for f in (*manifest.train, *manifest.test) if f not in known]
    if missing:
        raise SplitError(
            f"{where} names {len(missing)} file(s) that are not in the prepared dataset "
            f"{manifest.dataset}: {_examples(missing)}. Paths must be relative to the dataset "
            "root, as the prepared dataset lists them; the split may be for another copy "
            "or version of the dataset."
        )
    in_split = set(manifest.train) | set(manifest.test)
    groups = _group(r for r in records if r.filename in in_split)
    manifest.counts = _counts(groups, set(manifest.train))
    return manifest


def split_path(dataset: str, role: str, seed: int) -> Path:
    return config.splits_dir() / f"{dataset}-{role}-seed{seed}.json"


def get_split(
    prepared: PreparedLike,
    role: Role,
    seed: int = SEED,
    split_file: Path | None = None,
) -> SplitManifest:
    """The split of a prepared dataset: from `split_file`, else persisted, else made and saved."""
    _check_role(role)
    key = prepared.spec.key
    if split_file is not None:
        manifest = SplitManifest.load(Path(split_file))
        where = f"The split file {split_file}"
        if split_family(manifest.dataset) != split_family(key):
            raise SplitError(
                f"{where} is for dataset {manifest.dataset}, not {key}. Pass a split made for "
                f"{key}, or leave out the split file to use the stratified split."
            )
        if manifest.role != role:
            raise SplitError(
                f"{where} is a {manifest.role} split (train fraction "
                f"{TRAIN_FRACTION[manifest.role]:.0%}) but {key} is used as {role} here. "
                "Pass a split made for this role."
            )
        return validate_manifest(manifest, prepared.records, where=where)

    path = split_path(key, role, seed)
    if path.exists():
        manifest = SplitManifest.load(path)
        if (manifest.dataset, manifest.role, manifest.seed) != (key, role, seed):
            raise SplitError(
                f"The split file {path} holds the {manifest.role} split of {manifest.dataset} "
                f"with seed {manifest.seed}, not what its name says. Delete it; it is made again."
            )
        if manifest.dataset_digest != prepared.manifest_digest:
            raise SplitError(
                f"The dataset {key} changed since its {role} split was made (split {path} was "
                f"made from dataset digest {manifest.dataset_digest[:12] or '(none)'}, the "
                f"prepared dataset is now {prepared.manifest_digest[:12]}). Results with the old "
                "split would not be comparable. If the change is intended, delete that split "
                f"file and it is made again; otherwise prepare {key} again from the same data."
            )
        return validate_manifest(manifest, prepared.records, where=f"The split file {path}")

    manifest = make_split(prepared.records, dataset=key, role=role, seed=seed,
                          dataset_digest=prepared.manifest_digest)
    manifest.save(path)
    return manifest


# --- The authors' pickles ------------------------------------------------------------------


def _numpy_attr(module: str, name: str) -> Any:
    # numpy 2 renamed numpy.core to numpy._core; a pickle may name either, load what exists.
    import importlib

    for mod in (module.replace("numpy.core", "numpy._core"), module.replace("numpy._core",
                                                                             "numpy.core")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"{module}.{name}")


# Everything a split pickle or a LabelEncoder pickle needs: numpy array/scalar reconstruction.
_NUMPY_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    # protocol-5 pickles of contiguous arrays rebuild them from a byte buffer
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
_SAFE_BUILTINS = {("_codecs", "encode")}  # protocol-2 pickles store bytes through it
_LABEL_ENCODER = ("sklearn.preprocessing._label", "LabelEncoder")


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that only builds numpy arrays (and, if allowed, a LabelEncoder)."""

    def __init__(self, file: io.BufferedIOBase, *, name: str, allow_label_encoder: bool):
        super().__init__(file)
        self._name = name
        self._allow_le = allow_label_encoder

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_ALLOWED or (module.startswith("numpy.dtypes")
                                                and name.endswith("DType")):
            return _numpy_attr(module, name)
        if (module, name) in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if self._allow_le and (module, name) == _LABEL_ENCODER:
            from sklearn.preprocessing import LabelEncoder

            return LabelEncoder
        raise SplitError(
            f"rssc refuses to load {self._name}: it asks for {module}.{name}, which could run "
            "code when unpickled. A split file only holds numpy arrays or lists of file names "
            "and classes; get the file from the authors' repository again, or convert it to a "
            "JSON split manifest."
        )


def safe_load_pickle(path: Path, *, allow_label_encoder: bool = False) -> Any:
    """Unpickle `path`, refusing anything but the classes a split (or LabelEncoder) needs."""
    path = Path(path)
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            # sklearn warns when the LabelEncoder was pickled by another version: harmless here.
            warnings.simplefilter("ignore")
            return _SafeUnpickler(fh, name=path.name,  # type: ignore[arg-type]
                                  allow_label_encoder=allow_label_encoder).load()
    except SplitError:
        raise
    except FileNotFoundError:
        raise SplitError(f"The split file {path} does not exist. Check the path.") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise SplitError(
            f"{path} is not a readable pickle ({type(exc).__name__}: {exc}). Get the split file "
            "again from the authors' repository."
        ) from None


def _as_list(value: Any, what: str, where: str) -> list[Any]:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise SplitError(f"{where}: '{what}' is a {type(value).__name__}, not a list or an array.")


def _as_path(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return str(value).replace("\\", "/")


class _SuffixIndex:
    """Match a path to a record file name: exactly, else by their longest common path suffix.

    The authors' files may start with another top folder ('NWPU/...' for 'NWPU-RESISC45/...'),
    or none; and TIFF datasets were converted to JPEG, so extensions are ignored as a last resort.
    """

    def __init__(self, filenames: Iterable[str]):
        self.exact = set(filenames)
        self.by_suffix: dict[tuple[str, ...], list[str]] = defaultdict(list)
        self.by_stem_suffix: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for f in self.exact:
            parts = tuple(f.split("/"))
            stem_parts = (*parts[:-1], PurePosixPath(parts[-1]).stem)
            for k in range(1, len(parts) + 1):
                self.by_suffix[parts[-k:]].append(f)
                self.by_stem_suffix[stem_parts[-k:]].append(f)

    def match(self, path: str) -> tuple[str | None, list[str]]:
        """(the matching record, []) or (None, candidates: [] if none, several if ambiguous)."""
        if path in self.exact:
            return path, []
        parts = tuple(p for p in path.split("/") if p not in ("", "."))
        stem_parts = (*parts[:-1], PurePosixPath(parts[-1]).stem) if parts else ()
        for index, key in ((self.by_suffix, parts), (self.by_stem_suffix, stem_parts)):
            for k in range(len(key), 0, -1):
                found = index.get(key[-k:])
                if found:
                    return (found[0], []) if len(found) == 1 else (None, sorted(found)[:3])
        return None, []


def import_authors_split(
    pkl: Path,
    dataset: str,
    records: Sequence[RecordLike],
    *,
    dataset_digest: str = "",
) -> SplitManifest:
    """Read an authors' `*-split.pkl` (and its sibling `*-le.pkl`) into a SplitManifest."""
    pkl = Path(pkl)
    where = f"The split file {pkl.name}"
    data = safe_load_pickle(pkl)
    if not isinstance(data, dict) or not {"train", "test"} <= set(data):
        raise SplitError(
            f"{where} is not an authors' split: it should be a dict with keys 'train' and "
            "'test'. Check that it is a '*-split.pkl' file, not the '*-le.pkl' label encoder."
        )
    le_classes: list[str] | None = None
    le_path = pkl.with_name(pkl.name.replace("-split.pkl", "-le.pkl"))
    if le_path != pkl and le_path.exists():
        encoder = safe_load_pickle(le_path, allow_label_encoder=True)
        classes = getattr(encoder, "classes_", None)
        if classes is not None:
            le_classes = [str(c) for c in _as_list(classes, "classes_", le_path.name)]

    index = _SuffixIndex(r.filename for r in records)
    by_name = {r.filename: r for r in records}
    lists: dict[str, list[str]] = {}
    pickle_class: dict[str, Any] = {}  # record file name -> the pickle's class (single-label)
    for part in ("train", "test"):
        entry = data[part]
        if not isinstance(entry, dict) or "filename" not in entry:
            raise SplitError(f"{where}: '{part}' is not a dict with a 'filename' entry.")
        paths = [_as_path(p) for p in _as_list(entry["filename"], "filename", where)]
        unsafe = [p for p in paths if _unsafe(p)]
        if unsafe:
            raise SplitError(
                f"{where} names {len(unsafe)} path(s) that leave the dataset root (absolute or "
                f"with '..'): {_examples(unsafe)}. Split files must hold paths relative to the "
                "dataset root; this one is not safe to use."
            )
        classes = entry.get("class")
        class_list = _as_list(classes, "class", where) if classes is not None else None
        matched: list[str] = []
        missing: list[str] = []
        ambiguous: list[str] = []
        for i, path in enumerate(paths):
            found, candidates = index.match(path)
            if found is None:
                (ambiguous if candidates else missing).append(
                    f"{path} (could be {', '.join(candidates)})" if candidates else path)
                continue
            matched.append(found)
            if class_list is not None and i < len(class_list):
                pickle_class[found] = class_list[i]
        if missing:
            raise SplitError(
                f"{where}: {len(missing)} of its {len(paths)} {part} files are not in the "
                f"prepared dataset {dataset}: {_examples(missing)}. Check that the pickle is "
                f"for {dataset} and that the dataset was prepared from the full download."
            )
        if ambiguous:
            raise SplitError(
                f"{where}: {len(ambiguous)} {part} paths match several files of {dataset}: "
                f"{_examples(ambiguous)}. The paths are too short to tell them apart; convert "
                "the split to a JSON manifest with full paths relative to the dataset root."
            )
        if len(set(matched)) != len(matched):
            raise SplitError(f"{where}: several {part} paths match the same file of {dataset}.")
        lists[part] = sorted(matched)

    both = sorted(set(lists["train"]) & set(lists["test"]))
    if both:
        raise SplitError(
            f"{where} puts {len(both)} file(s) in both train and test: {_examples(both)}."
        )
    # The pickle's classes must partition the files like ours do; if not, paths were matched to
    # the wrong files (or the pickle is for another dataset).
    ours_for: dict[Any, set[str]] = defaultdict(set)
    for name, cls in pickle_class.items():
        ours_for[cls].add(_class_key(by_name[name]))
    mixed = {str(c): sorted(v)[:3] for c, v in ours_for.items() if len(v) > 1}
    if mixed:
        c, ours = next(iter(mixed.items()))
        raise SplitError(
            f"{where}: its class {c} holds files of our classes {', '.join(ours)}; the pickle's "
            f"classes do not match the folders of {dataset}. Check that it is for {dataset}."
        )

    n_train, n_total = len(lists["train"]), len(lists["train"]) + len(lists["test"])
    role: Role = "source" if n_total and n_train / n_total > 0.5 else "target"
    manifest = SplitManifest(
        dataset=dataset, role=role, seed=None, train=lists["train"], test=lists["test"],
        dataset_digest=dataset_digest, source=f"imported:{pkl.name}",
        label_encoder_classes=le_classes,
    )
    return validate_manifest(manifest, records, where=where)


def imported_path(manifest: SplitManifest) -> Path:
    return config.splits_dir() / f"{manifest.dataset}-{manifest.role}-imported.json"


def save_imported(manifest: SplitManifest) -> Path:
    """Save an imported split under the splits folder; pass the path back as a split file."""
    return manifest.save(imported_path(manifest))
