"""`rssc demo` wiring, with the expensive parts (stand-in training, the grid) replaced.

The real demo trains ~150 ResNet-50 runs (minutes); here `reproduce` and the stand-in are
fakes that record what they were given, so the test checks the pieces are connected: the
environment each phase sees, the pool, the no-op re-run of the data phases and the output.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from rssc_mlflow import demo, models
from rssc_mlflow.data import synth
from rssc_mlflow.data.catalog import CATALOG


@dataclasses.dataclass
class FakeReport:
    ok: bool = True
    failed: list = dataclasses.field(default_factory=list)


def test_synthesize_writes_each_tree_once(tmp_path) -> None:
    manual, rewritten = demo._synthesize(tmp_path, 3, 37, lambda m: None)
    assert set(manual) == set(CATALOG)
    assert rewritten == set(synth.TREES)
    assert manual["mlrsnet_half"] == tmp_path / "mlrsnet"
    assert synth.is_synthetic_tree(tmp_path / "ucm")
    again, rewritten = demo._synthesize(tmp_path, 3, 37, lambda m: None)
    assert again == manual and rewritten == set()  # a re-run writes nothing
    _, rewritten = demo._synthesize(tmp_path, 4, 37, lambda m: None)
    assert "ucm" in rewritten and "mlrsnet" not in rewritten  # MLRSNet keeps its 6 per class


def test_run_demo_wiring(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the demo's default store
    monkeypatch.delenv("RSSC_DATA_DIR", raising=False)
    calls: dict[str, object] = {}

    def fake_standin(folder: Path, say) -> Path:
        from rssc_mlflow.training import speed

        calls["standin_pool"] = speed.is_enabled()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / models.IMAGENET_WEIGHTS_FILE
        path.write_bytes(b"stand-in")
        return path

    def fake_reproduce(profile, **kwargs):
        from rssc_mlflow.training import speed

        calls["reproduce"] = (profile, kwargs.get("log_model_finetune"),
                              kwargs.get("reuse_models"), kwargs.get("parallel"))
        calls["pool"] = speed.is_enabled()
        calls["env"] = {k: os.environ.get(k) for k in
                        ("RSSC_DATA_DIR", "MLFLOW_TRACKING_URI", models.IMAGENET_WEIGHTS_ENV)}
        return FakeReport()

    from rssc_mlflow.results import reproduce as reproduce_module

    monkeypatch.setattr(demo, "_imagenet_standin", fake_standin)
    monkeypatch.setattr(reproduce_module, "reproduce", fake_reproduce)
    lines: list[str] = []
    out = tmp_path / "demo_out"
    result = demo.run_demo(out, images_per_class=3, image_size=37, progress=lines.append,
                           workers=2)

    # The fakes trained nothing, so every demo check is missing and the demo is not ok.
    assert result.report.ok and result.summary is not None and not result.ok
    assert result.checks and all(c.measured is None for c in result.checks)
    assert (out / "summary" / "demo_checks.csv").read_text().splitlines()[1] == (
        "ImageNet stand-in: held-out accuracy,,0.5,False")
    assert calls["reproduce"] == ("demo", False, True, 2)  # pooled worker processes
    assert calls["pool"] and calls["standin_pool"]
    assert calls["env"] == {"RSSC_DATA_DIR": str(out.resolve() / "data"),
                            "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db",
                            models.IMAGENET_WEIGHTS_ENV: str(result.imagenet_weights)}
    # Restored afterwards.
    from rssc_mlflow.training import speed

    assert not speed.is_enabled()
    assert models.IMAGENET_WEIGHTS_ENV not in os.environ
    assert "RSSC_DATA_DIR" not in os.environ
    import mlflow

    # The store chosen for the demo does not outlive it (later code in the process follows
    # MLFLOW_TRACKING_URI again).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'other.db'}"
    # Every key prepared from synthetic trees, in the demo's data dir.
    assert (out / "data").is_dir()
    monkeypatch.setenv("RSSC_DATA_DIR", str(out / "data"))
    from rssc_mlflow.data.prepare import load_prepared, prepared_dir

    for key in CATALOG:
        assert prepared_dir(key).is_dir(), key
    assert all(load_prepared(key).synthetic for key in CATALOG)
    # What the user sees: banner first and last, figures, the page and the UI command.
    assert lines[0] == demo.BANNER and lines[-1] == demo.BANNER
    assert result.html is not None and result.html.is_file()
    assert result.figures and all(p.suffix == ".png" and p.is_file() for p in result.figures)
    text = "\n".join(lines)
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in text
    assert str(result.html) in text and "Time per phase" in text
    assert "1 of 1 checks FAILED: the demo does not show what it must" in text
    assert (Path.cwd() / "mlflow.db").is_file()  # MLflow's default store in the current dir


def test_run_demo_refuses_too_few_images(tmp_path) -> None:
    from rssc_mlflow.errors import RsscError

    with pytest.raises(RsscError, match="at least 3"):
        demo.run_demo(tmp_path, images_per_class=2)
    with pytest.raises(RsscError, match="at least 37"):
        demo.run_demo(tmp_path, image_size=32)


@pytest.mark.slow
def test_imagenet_standin_trains_saves_and_is_reused(tmp_path, monkeypatch) -> None:
    """The stand-in for real: a notop file Keras's ResNet-50 loads, with its identity beside it;
    a second call reuses it instead of training again."""
    import json

    import keras

    from rssc_mlflow.data.prepare import prepare

    monkeypatch.setenv("RSSC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(demo, "STANDIN_EPOCHS", 1)
    manual = synth.write_synthetic(tmp_path / "synth", keys=["imagenet100"], images_per_class=5,
                                   image_size=32, seed=3)
    prepare("imagenet100", manual["imagenet100"])
    said: list[str] = []
    path = demo._imagenet_standin(tmp_path / "weights", said.append)
    assert path == tmp_path / "weights" / models.IMAGENET_WEIGHTS_FILE
    info = json.loads(path.with_name(path.name.removesuffix(".h5") + ".json").read_text())
    assert info["synthetic"] is True and info["epochs"] == 1 and info["dataset"] == "imagenet100"
    from rssc_mlflow.tracking import registry  # runs that use it know it is not Keras's file

    assert registry.imagenet_origin(path)[registry.MV_IMAGENET_ORIGIN] == "synthetic-stand-in"
    assert any("training ResNet-50 from scratch" in line for line in said)
    backbone = keras.applications.ResNet50(include_top=False, weights=str(path),
                                           input_shape=(32, 32, 3), pooling="avg")
    assert backbone.output_shape == (None, 2048)
    assert not (tmp_path / "data" / "cache" / "runs").exists() or not any(
        (tmp_path / "data" / "cache" / "runs").iterdir())  # its image cache is removed
    said.clear()
    assert demo._imagenet_standin(tmp_path / "weights", said.append) == path
    assert said == [f"  reusing {path}"]


def test_mlflow_still_has_the_scoped_tracking_uri_the_demo_uses() -> None:
    """The demo scopes its store with MLflow's private `_use_tracking_uri` (no public API can
    unset a URI): this fails on an MLflow upgrade that drops it, then the fallback below is used."""
    from mlflow.tracking._tracking_service import utils

    assert callable(utils._use_tracking_uri)


def test_the_demo_store_is_scoped_with_or_without_mlflow_private_setter(
        tmp_path, monkeypatch) -> None:
    import mlflow
    from mlflow.tracking._tracking_service import utils

    # The fallback pins MLflow's process-wide URI: restored when the test ends.
    monkeypatch.setattr(utils, "_tracking_uri", None)  # as in a fresh process
    before = f"sqlite:///{tmp_path / 'before.db'}"
    inside = f"sqlite:///{tmp_path / 'demo.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    with demo._tracking_store(inside):
        assert mlflow.get_tracking_uri() == inside
    assert mlflow.get_tracking_uri() == before
    later = f"sqlite:///{tmp_path / 'later.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", later)  # followed again: nothing pinned
    assert mlflow.get_tracking_uri() == later

    monkeypatch.delattr(utils, "_use_tracking_uri")  # an MLflow without it: the fallback
    with demo._tracking_store(inside):
        assert mlflow.get_tracking_uri() == inside
    assert mlflow.get_tracking_uri() == later
