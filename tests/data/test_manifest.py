"""The source manifest: digest, options, JSON round trip."""

from __future__ import annotations

import hashlib
import json

from rssc_mlflow.data.manifest import FileEntry, Manifest, hash_files

FILES = [FileEntry("b/2.tif", 20, "bb"), FileEntry("a/1.tif", 10, "aa")]


def test_digest_without_options_is_the_files_only_form() -> None:
    # The form every dataset prepared before `options` existed was recorded with.
    old = json.dumps({"files": [["a/1.tif", 10, "aa"], ["b/2.tif", 20, "bb"]]},
                     separators=(",", ":")).encode()
    assert Manifest.of(FILES).digest == hashlib.sha256(old).hexdigest()
    assert Manifest.of(FILES, {}).digest == Manifest.of(FILES).digest
    assert "options" not in Manifest.of(FILES).to_json()


def test_options_enter_the_digest_and_round_trip() -> None:
    plain = Manifest.of(FILES)
    jpeg = Manifest.of(FILES, {"tiff_as_jpeg": 75})
    assert jpeg.digest not in (plain.digest, Manifest.of(FILES, {"tiff_as_jpeg": 76}).digest)
    data = json.loads(json.dumps(jpeg.to_json()))
    assert data["options"] == {"tiff_as_jpeg": 75}
    again = Manifest.from_json(data)
    assert again == jpeg and again.digest == data["digest"] == jpeg.digest
    assert Manifest.from_json(json.loads(json.dumps(plain.to_json()))).digest == plain.digest


def test_hash_files_records_size_and_sha256_of_each_file(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.tif").write_bytes(b"alpha")
    (tmp_path / "2.tif").write_bytes(b"")
    assert hash_files(tmp_path, ["a/1.tif", "2.tif"], workers=2) == [
        FileEntry("a/1.tif", 5, hashlib.sha256(b"alpha").hexdigest()),
        FileEntry("2.tif", 0, hashlib.sha256(b"").hexdigest())]
