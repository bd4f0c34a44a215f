"""Which ImageNet weights a run starts from, told truthfully (no training here)."""

from __future__ import annotations

import hashlib
import json

import pytest

from rssc_mlflow import models
from rssc_mlflow.tracking import registry


@pytest.fixture()
def weights(tmp_path, monkeypatch):
    path = tmp_path / models.IMAGENET_WEIGHTS_FILE
    path.write_bytes(b"not really an HDF5 file, but a file with a digest")
    monkeypatch.setenv(models.IMAGENET_WEIGHTS_ENV, str(path))
    return path


def test_another_file_is_not_called_kerass(weights):
    source = registry.resolve_source("imagenet", profile="smoke")
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert source.imagenet_weights == {
        registry.MV_IMAGENET_FILE: str(weights.resolve()),
        registry.MV_IMAGENET_SHA256: sha256,
        registry.MV_IMAGENET_ORIGIN: "other-file"}
    assert source.uri == weights.resolve().as_uri() and "keras.applications" not in source.uri
    assert not source.synthetic
    assert "is not Keras's published" in source.note
    assert source.describe().startswith(
        f"ImageNet weights {weights} (NOT Keras's published file, sha256 {sha256[:12]})")


def test_the_demos_stand_in_is_synthetic(weights):
    # What `rssc demo` writes next to its stand-in (demo._imagenet_standin).
    weights.with_suffix(".json").write_text(json.dumps({"synthetic": True, "what": "NOT ImageNet"}))
    source = registry.resolve_source("imagenet", profile="smoke")
    assert source.imagenet_weights[registry.MV_IMAGENET_ORIGIN] == "synthetic-stand-in"
    assert source.synthetic and "SYNTHETIC stand-in" in source.note


def test_kerass_file_is_recognised_by_its_published_md5(weights, monkeypatch):
    # Keras's real file is not on this machine: give its known md5 to this file instead.
    assert registry.keras_imagenet_notop_md5() == "4d473c1dd8becc155b73f8504c6f6626"
    monkeypatch.setattr(registry, "keras_imagenet_notop_md5",
                        lambda: hashlib.md5(weights.read_bytes()).hexdigest())
    source = registry.resolve_source("imagenet", profile="smoke")
    assert source.imagenet_weights[registry.MV_IMAGENET_ORIGIN] == "keras-published"
    assert source.uri == registry.KERAS_IMAGENET_URI and source.note == ""
    assert not source.synthetic
