"""`rssc verify KEY`: re-check a prepared dataset against what `prepare` recorded.

`prepare` records two lists: the source manifest (`rssc_manifest.json`, the download the data
was built from, whose digest splits and runs are tied to) and the digests of every prepared file
(`rssc_files.json`, TFDS shards included). Verify re-hashes the prepared folder against the
second list, naming every changed, missing or extra file, and checks that the marker, the
metadata and the source manifest still agree on the dataset digest. Datasets prepared before
`rssc_files.json` existed get only the second check and a note saying how to get the first.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rssc_mlflow.data.manifest import MANIFEST_FILE, Manifest, read_manifest
from rssc_mlflow.data.prepare import (
    COMPLETE_FILE,
    FILES_FILE,
    METADATA_FILE,
    RECORDS_FILE,
    _not_prepared,
    _spec,
    prepared_dir,
    prepared_files_manifest,
)


@dataclasses.dataclass
class VerifyReport:
    key: str
    path: Path
    checked: int = 0  # files compared with their recorded digest
    bytes: int = 0
    changed: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> what differs
    missing: list[str] = dataclasses.field(default_factory=list)
    extra: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # limits of the check, not faults
    digest: str = ""

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.extra)

    def problems(self) -> list[str]:
        """One line per bad file: `changed: PATH (why)`, `missing: PATH`, `extra: PATH`."""
        return ([f"changed: {p} ({why})" for p, why in sorted(self.changed.items())]
                + [f"missing: {p}" for p in sorted(self.missing)]
                + [f"extra: {p}" for p in sorted(self.extra)])

    def summary(self) -> str:
        if self.ok:
            what = (f"{self.checked} prepared files ({self.bytes:,} bytes) match their digests"
                    if self.checked else "source manifest, metadata and marker agree")
            return f"{self.key}: OK, {what} in {self.path} (dataset digest {self.digest[:16]})"
        counts = ", ".join(f"{len(v)} {name}" for name, v in
                           (("changed", self.changed), ("missing", self.missing),
                            ("extra", self.extra)) if v)
        return (f"{self.key}: the prepared dataset in {self.path} is damaged: {counts} file(s) "
                f"({'; '.join(self.problems()[:20])}). Nothing trained on it can be trusted; "
                f"rebuild it with `rssc prepare {self.key} --manual-dir DIR --force`.")


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify(key: str) -> VerifyReport:
    """Re-hash `key`'s prepared folder; DatasetError only when it was never prepared."""
    spec = _spec(key)
    folder = prepared_dir(key)
    if not folder.is_dir():
        raise _not_prepared(spec)
    report = VerifyReport(spec.key, folder)

    recorded = _read_json(folder / FILES_FILE)
    if recorded is not None:
        expected = {e.path: e for e in Manifest.from_json(recorded).files}
        actual = {e.path: e for e in prepared_files_manifest(folder).files}
        report.missing += [p for p in expected if p not in actual]
        report.extra += [p for p in actual if p not in expected]
        for path in expected.keys() & actual.keys():
            want, got = expected[path], actual[path]
            if want.size != got.size:
                report.changed[path] = f"{got.size:,} bytes, recorded {want.size:,}"
            elif want.sha256 != got.sha256:
                report.changed[path] = f"sha256 {got.sha256[:12]}, recorded {want.sha256[:12]}"
        report.checked, report.bytes = len(expected), sum(e.size for e in expected.values())
    elif (folder / FILES_FILE).exists():
        report.changed[FILES_FILE] = "not readable JSON"
    else:
        # Prepared by an older version: the TFDS files have no recorded digests.
        report.notes.append(
            f"{FILES_FILE} is missing (prepared by an older rssc): the TFDS files cannot be "
            f"checked, only that the source manifest, metadata and marker agree. Record their "
            f"digests with `rssc prepare {spec.key} --manual-dir DIR --force`.")
        report.missing += [f for f in (METADATA_FILE, RECORDS_FILE, MANIFEST_FILE,
                                       "dataset_info.json") if not (folder / f).is_file()]

    # The dataset digest is written three times; all must agree (a hand-edited manifest or
    # metadata would otherwise pass as another dataset).
    metadata = _read_json(folder / METADATA_FILE) or {}
    report.digest = str(metadata.get("manifest_digest", ""))
    if (folder / METADATA_FILE).is_file() and not report.digest:
        report.changed.setdefault(METADATA_FILE, "no manifest_digest")
    if (folder / MANIFEST_FILE).is_file() and report.digest:
        try:
            source_digest = read_manifest(folder).digest
        except (OSError, ValueError, KeyError, TypeError):
            source_digest = "unreadable"
        if source_digest != report.digest:
            report.changed.setdefault(MANIFEST_FILE, f"digest {source_digest[:12]}, metadata "
                                                     f"says {report.digest[:12]}")
    marker = folder / COMPLETE_FILE
    if not marker.is_file():
        report.missing.append(COMPLETE_FILE)
    elif report.digest and marker.read_text().strip() != report.digest:
        report.changed[COMPLETE_FILE] = "does not hold the metadata's manifest digest"
    return report
