"""Shared pieces of the builders: walking a manual dir, finding the dataset root, decoding images.

Nothing here imports tensorflow, so scanning and validation run (and fail) before TFDS starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from rssc_mlflow.data.catalog import DatasetSpec
from rssc_mlflow.data.synth import SYNTHETIC_MARKER
from rssc_mlflow.errors import DatasetError
from rssc_mlflow.naming import few

# Files and folders that archivers and file browsers add; never part of a dataset.
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX", SYNTHETIC_MARKER})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif"})
# Images decoded at once per worker thread; bounds memory while keeping the cores busy.
_IN_FLIGHT_PER_WORKER = 8


def is_junk(name: str) -> bool:
    # Dot files cover `._name` resource forks from macOS archives as well as `.DS_Store`.
    return name in JUNK_NAMES or name.startswith(".")


def subdirs(folder: Path) -> list[Path]:
    """The non-junk sub-folders of `folder`, sorted by name."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(Path(e.path) for e in entries if e.is_dir() and not is_junk(e.name))


def child_ci(folder: Path, name: str) -> Path | None:
    """`folder/name`, matching the name case-insensitively (copies differ: `labels`/`Labels`)."""
    exact = folder / name
    if exact.is_dir():
        return exact
    for sub in subdirs(folder):
        if sub.name.lower() == name.lower():
            return sub
    return None


def walk_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """All image files under `folder` (any depth) and the other non-junk files, both sorted."""
    images: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_junk(d)]  # prune __MACOSX and friends
        for name in filenames:
            if is_junk(name):
                continue
            path = Path(dirpath) / name
            (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return sorted(images), sorted(others)


def relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def is_synthetic(manual_dir: Path, root: Path) -> bool:
    """True when `synth` wrote the tree: its marker sits in the root or a folder above it."""
    manual_dir = manual_dir.resolve()
    folder = root.resolve()
    while True:
        if (folder / SYNTHETIC_MARKER).is_file():
            return True
        if folder == manual_dir or folder.parent == folder:
            return False
        folder = folder.parent


def root_candidates(manual_dir: Path, preferred: str) -> list[Path]:
    """Where the archive's top folder may be: the manual dir itself or one of its sub-folders.

    The sub-folder named like the official archive comes first; the others follow because
    copies are sometimes renamed (e.g. `UCMerced_LandUse-2`).
    """
    children = subdirs(manual_dir)
    named = [c for c in children if preferred and c.name.lower() == preferred.lower()]
    return [manual_dir, *named, *(c for c in children if c not in named)]


def describe_folder(folder: Path, limit: int = 8) -> str:
    """A short listing of `folder` for error messages, so users see what was found instead."""
    names = sorted(e.name for e in os.scandir(folder) if not is_junk(e.name))
    if not names:
        return f"'{folder}' is empty"
    return f"'{folder}' holds {few(names, limit)}"


def layout_error(spec: DatasetSpec, manual_dir: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"{problem} Expected layout for '{spec.key}': {spec.expected_layout()}. Pass "
        f"--manual-dir the archive's top folder or the folder that contains it (found: "
        f"{describe_folder(manual_dir)}). Download page: {spec.download_page}."
    )


def check_class_folders(spec: DatasetSpec, found: Sequence[str], where: Path,
                        manual_dir: Path, *, allow_unknown: bool = False) -> None:
    """Refuse missing and (unless allowed) unknown class folders, naming them."""
    known = set(spec.classes)
    missing = [c for c in spec.classes if c not in set(found)]
    unknown = [f for f in found if f not in known]
    if missing:
        raise layout_error(spec, manual_dir, f"{spec.title}: {len(missing)} class folder(s) "
                           f"missing under '{where}': {few(missing)}.")
    if unknown and not allow_unknown:
        raise layout_error(spec, manual_dir, f"{spec.title}: unknown class folder(s) under "
                           f"'{where}': {few(unknown)} (not among the {spec.num_classes} "
                           "classes of the catalog; remove them or check the dataset).")


# --- Plans: what a builder will write -------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Item:
    """One image to store: where it is, its name relative to the dataset root, its labels."""

    path: Path
    filename: str
    label: int
    category: int | None = None
    labels: tuple[int, ...] | None = None  # multi-hot (MLRSNet only)


@dataclasses.dataclass
class BuildPlan:
    """The validated content of a manual dir; builders write exactly these items."""

    key: str  # the catalog key whose classes label the items (mlrsnet_sl for all MLRSNet views)
    root: Path
    items: list[Item]
    synthetic: bool
    # Non-image source files that define labels (MLRSNet CSVs): hashed into the manifest.
    label_files: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    anomalies: dict[str, object] = dataclasses.field(default_factory=dict)


def class_plan(spec: DatasetSpec, manual_dir: Path, root: Path,
                class_dirs: dict[str, Path]) -> BuildPlan:
    """Items of the class folders `class_dirs` (any depth inside), refusing empty classes."""
    index = {name: i for i, name in enumerate(spec.classes)}
    items: list[Item] = []
    ignored: list[str] = []
    empty: list[str] = []
    for name in spec.classes:
        images, others = walk_images(class_dirs[name])
        if not images:
            empty.append(name)
        items += [Item(path=p, filename=relpath(p, root), label=index[name]) for p in images]
        ignored += [relpath(p, root) for p in others]
    if empty:
        raise layout_error(spec, manual_dir, f"{spec.title}: class folder(s) without any image "
                           f"under '{root}': {few(empty)}.")
    return BuildPlan(key=spec.key, root=root, items=items,
                     synthetic=is_synthetic(manual_dir, root), ignored=ignored)


# --- Decoding ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Processed:
    item: Item
    size: int
    sha256: str
    encoded: bytes | None  # None when the file could not be decoded
    error: str | None = None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float TIFFs: PIL's convert() clips at 255, so scale to 8 bits ourselves.
        arr = np.asarray(image, dtype=np.float64)
        if arr.max() > 255:
            arr = arr / 257.0
        arr8 = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")  # palette transparency goes through RGBA, else PIL warns
    return image.convert("RGB")


def encode_image(data: bytes, tiff_as_jpeg: int | None = None) -> bytes:
    """Lossless bytes to store: the original file when it is a clean RGB JPEG, else RGB PNG.

    Decodes by content (a PNG named .jpg is fine) and every byte of it (`load()`; a kept JPEG at
    reduced scale), so truncated files fail here and not in training. Raises whatever PIL raises
    for a damaged file.

    `tiff_as_jpeg` (quality 1-95): a TIFF is stored as a JPEG of that quality instead, as the
    authors' TIFF datasets were converted to JPEG before training (docs/PROTOCOL.md).
    """
    with Image.open(io.BytesIO(data)) as image:
        if tiff_as_jpeg is not None and image.format == "TIFF":
            image.load()
            return jpeg_encode(_to_rgb(image), tiff_as_jpeg)
        if image.format == "JPEG" and image.mode == "RGB":
            # Stored as it is, so decoded only to find damage. At 1/8 scale libjpeg still
            # entropy-decodes every block (where truncated or corrupt data shows) but skips most
            # of the inverse DCT and colour conversion: ~2x faster than a full-size decode.
            image.draft("RGB", (1, 1))
            image.load()
            return data
        image.load()
        rgb = _to_rgb(image)
    out = io.BytesIO()
    # zlib level 1: ~30% faster than the default 6 for ~10% larger files, still lossless.
    rgb.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def jpeg_encode(rgb: Image.Image, quality: int) -> bytes:
    """PIL's JPEG at `quality` with its defaults (baseline, 4:2:0 chroma subsampling): the
    authors' converter is unknown, so the commonest one; the same bytes on every machine with
    the same libjpeg."""
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def process(item: Item, tiff_as_jpeg: int | None = None) -> Processed:
    data = item.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        encoded = encode_image(data, tiff_as_jpeg)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a damaged file
        return Processed(item, len(data), digest, None, f"{type(exc).__name__}: {exc}")
    return Processed(item, len(data), digest, encoded)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def process_all(items: Sequence[Item], workers: int | None = None,
                fn: Callable[[Item], Processed] = process) -> Iterator[Processed]:
    """`fn` over `items` on a thread pool, in order, with a bounded number in flight.

    Threads suffice: PIL's decoders and hashlib release the GIL. Bounding the queue keeps
    memory flat on 100k-image datasets when the writer is slower than the decoders.
    """
    workers = workers or default_workers()
    window = workers * _IN_FLIGHT_PER_WORKER
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rssc-decode") as pool:
        pending: deque[Future[Processed]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
