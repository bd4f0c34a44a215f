"""Fixture trees for the data tests, made by code (no committed images).

`synth_trees` is the synthetic stand-in of every dataset (read-only: copy before damaging it);
`write_image`, `make_folder_tree` and `copy_tree` build the small broken trees the error tests
need (missing class, unknown class, wrong layout, damaged files).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rssc_mlflow.data.catalog import get_spec

IMAGES_PER_CLASS = 3
IMAGE_SIZE = 16  # synth's minimum; tiny keeps the whole suite fast on 2 cores


def write_image(path: Path, *, size: tuple[int, int] = (16, 16), mode: str = "RGB",
                fmt: str | None = None, seed: int = 0) -> Path:
    """A random image; `fmt` defaults to the suffix's format (JPEG/TIFF/PNG)."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode != "RGB":
        img = img.convert(mode)
    fmt = fmt or {".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG"}.get(path.suffix.lower(), "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def truncate(path: Path) -> Path:
    """Cut an image file in half: opens fine, fails on a full decode (`load()`)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def jpeg_bytes(mode: str = "RGB", size: int = 16) -> bytes:
    out = io.BytesIO()
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size, size, 3), np.uint8))
    img.convert(mode).save(out, "JPEG")
    return out.getvalue()


def make_folder_tree(out: Path, key: str, *, n: int = 1, drop: tuple[str, ...] = (),
                     extra: tuple[str, ...] = ()) -> Path:
    """`out/<archive_root>/<images_dir>/<class>/<class>_i.<ext>` for a folder-per-class key,
    without the classes in `drop` and with extra (unknown) class folders `extra`. Returns out."""
    spec = get_spec(key)
    parent = out.joinpath(*(p for p in (spec.archive_root, spec.images_dir) if p))
    ext = ".tif" if spec.file_pattern.endswith(".tif") else ".jpg"
    for name in [c for c in spec.classes if c not in drop] + list(extra):
        for i in range(n):
            write_image(parent / name / f"{name}_{i}{ext}", seed=i)
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def synth_trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{catalog key: manual dir} of a synthetic tree of every dataset, quirks included."""
    from rssc_mlflow.data.synth import write_synthetic

    out = tmp_path_factory.mktemp("synth")
    return write_synthetic(out, None, images_per_class=IMAGES_PER_CLASS, image_size=IMAGE_SIZE)


@pytest.fixture()
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty RSSC_DATA_DIR for one test."""
    root = tmp_path / "rssc_data"
    monkeypatch.setenv("RSSC_DATA_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def module_data_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An RSSC_DATA_DIR shared by a module's tests (prepare once, read many times)."""
    root = tmp_path_factory.mktemp("rssc_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSSC_DATA_DIR", str(root))
        yield root


@pytest.fixture()
def tree_factory(tmp_path: Path) -> Callable[..., Path]:
    """make_folder_tree into a fresh sub-folder of tmp_path."""
    counter = iter(range(1000))

    def make(key: str, **kwargs: tuple[str, ...]) -> Path:
        return make_folder_tree(tmp_path / f"tree{next(counter)}", key, **kwargs)

    return make


@pytest.fixture(autouse=True)
def isolated_environment(isolated_environment: Path, request: pytest.FixtureRequest,
                         monkeypatch: pytest.MonkeyPatch) -> Path:
    """The suite-wide isolation, except that module-shared data stays visible to its tests."""
    if "module_data_env" in request.fixturenames:
        monkeypatch.setenv("RSSC_DATA_DIR", str(request.getfixturevalue("module_data_env")))
    return isolated_environment
