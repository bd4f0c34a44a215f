"""The TFDS builder all our datasets share: manual download, one 'train' split holding everything.

A builder either gets a validated `BuildPlan` from `prepare` or scans `manual_dir` itself, so it
also works as a plain TFDS builder. It decodes every image (threads), stores lossless bytes and
remembers per file size and sha256 for the manifest, so each source byte is read only once.
TIFFs are stored as JPEG instead when `tiff_as_jpeg` is set (`rssc prepare --tiff-as-jpeg`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import tensorflow_datasets as tfds

from rssc_mlflow.data.builders import VERSION as BUILDER_VERSION
from rssc_mlflow.data.builders.common import BuildPlan, Item, process, process_all
from rssc_mlflow.data.catalog import DatasetSpec, get_spec
from rssc_mlflow.errors import DatasetError
from rssc_mlflow.naming import few

SPLIT = "train"
_PROGRESS_EVERY = 1000


@dataclasses.dataclass(frozen=True)
class SourceFile:
    filename: str
    size: int
    sha256: str


class RsscBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the rssc builders; subclasses set KEY and implement `scan`."""

    VERSION = tfds.core.Version(BUILDER_VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First version."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the official archive (see `rssc datasets` for the page), unpack it and pass "
        "the unpacked folder as manual_dir."
    )
    KEY: ClassVar[str]

    def __init__(self, *, plan: BuildPlan | None = None, skip_corrupt: bool = False,
                 progress: Callable[[str], None] | None = None,
                 tiff_as_jpeg: int | None = None, **kwargs: Any) -> None:
        self.plan = plan
        self.skip_corrupt = skip_corrupt
        self.tiff_as_jpeg = tiff_as_jpeg  # JPEG quality for TIFFs (see common.encode_image)
        self.progress = progress or (lambda _msg: None)
        self.sources: list[SourceFile] = []
        self.skipped: list[tuple[str, str]] = []  # (filename, decoder error)
        # TFDS may wrap exceptions raised inside the generator; prepare re-raises this instead.
        self.failure: DatasetError | None = None
        super().__init__(**kwargs)

    @classmethod
    def spec(cls) -> DatasetSpec:
        return get_spec(cls.KEY)

    @classmethod
    def scan(cls, manual_dir: Path) -> BuildPlan:
        raise NotImplementedError

    def _features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {
            # Variable size: UCM keeps its non-256 images; encoded bytes are stored as given.
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=list(self.spec().classes)),
            "filename": tfds.features.Text(),
        }

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.spec()
        origin = "your own data" if spec.origin == "user" else "the official download"
        page = spec.download_page.split(" ")[0]
        return self.dataset_info_from_configs(
            description=f"{spec.title}, prepared by rssc_mlflow from {origin}.",
            features=tfds.features.FeaturesDict(self._features()),
            supervised_keys=("image", "label"),
            homepage=page if page.startswith("http") else "",
        )

    def _example(self, item: Item, encoded: bytes) -> dict[str, Any]:
        return {"image": encoded, "label": item.label, "filename": item.filename}

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        if self.plan is None:
            self.plan = self.scan(Path(dl_manager.manual_dir))
        return {SPLIT: self._generate_examples(self.plan)}

    def _generate_examples(self, plan: BuildPlan) -> Iterator[tuple[str, dict[str, Any]]]:
        total = len(plan.items)
        corrupt: list[tuple[str, str]] = []
        encode = functools.partial(process, tiff_as_jpeg=self.tiff_as_jpeg)
        for i, done in enumerate(process_all(plan.items, fn=encode), start=1):
            if i == 1 or i % _PROGRESS_EVERY == 0 or i == total:
                self.progress(f"encoding {i}/{total}")
            if done.encoded is None:
                corrupt.append((done.item.filename, done.error or "unreadable"))
                continue
            self.sources.append(SourceFile(done.item.filename, done.size, done.sha256))
            yield done.item.filename, self._example(done.item, done.encoded)
        if corrupt and not self.skip_corrupt:
            # Collect all damaged files first, so one run names every one of them.
            first, why = corrupt[0]
            self.failure = DatasetError(
                f"{len(corrupt)} image(s) of '{self.spec().key}' cannot be decoded (damaged or "
                f"truncated): {few(name for name, _ in corrupt)} under '{plan.root}' (first "
                f"error: {why}). Re-download or replace them, or run prepare again with "
                "--skip-corrupt to leave them out (they are listed in the dataset's metadata)."
            )
            raise self.failure
        self.skipped = corrupt
