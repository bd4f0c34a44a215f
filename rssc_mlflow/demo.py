"""`rssc demo`: the whole pipeline on SYNTHETIC data, small enough for a laptop CPU.

    synthetic downloads -> prepare all 11 dataset keys -> an ImageNet stand-in
    -> reproduce(profile="demo"): every run of every table and figure -> summarize

Everything goes to the tracking store MLflow uses by default (`sqlite:///mlflow.db` in the
current folder) unless MLFLOW_TRACKING_URI says otherwise; datasets go to `<out>/data` unless
RSSC_DATA_DIR is set. Nothing here is comparable to the paper: the images are generated
(`data.synth`), the networks see 32 px crops for a couple of epochs, and ImageNet is a stand-in.

The ImageNet stand-in. Keras's ImageNet weights cannot be downloaded here (and the demo must not
depend on a download), so a ResNet-50 is trained from scratch on the synthetic ImageNet-100
stand-in, with another seed than the grid (so its split and initialisation differ from the
grid's own `pretrain imagenet100`) and more epochs, without an MLflow run
(`commands.train_without_run`). Its backbone is written as a Keras notop `.h5` file under
`<out>/imagenet_standin/`, with a JSON file next to it saying what it is, and
RSSC_IMAGENET_WEIGHTS points at it for the rest of the demo: every `imagenet` run (adapt,
Figure 1's ImageNet-1k row, ...) uses it.

How long it takes, and on what: docs/PERFORMANCE.md, "The demo".

Speed: tracing a new ResNet-50 train step costs more on a CPU than a demo run trains, so the
runs go to long-lived worker processes (`reproduce(reuse_models=True)`, one per core, two at
most: each holds its compiled models) with the model pool (`training.speed`) on: each worker
traces each ResNet-50 variant (number of classes x task) once for the whole grid. Re-running
is cheap:
the synthetic trees, prepared datasets and the stand-in are reused when they match, and
`reproduce` skips every run already FINISHED in the store.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

from rssc_mlflow.errors import RsscError
from rssc_mlflow.protocol import SYNTHETIC_BANNER

DEMO_PROFILE = "demo"
# Enough images that a held-out split measures something (20 % of 12 per class is 2, so
# accuracies move in steps of 1/(2 x classes)); training cost follows epochs x images.
DEFAULT_IMAGES_PER_CLASS = 12
MLRSNET_MIN_IMAGES = 6  # mlrsnet_half keeps floor(n/2) per category and needs 3 for 80/20
# MLRSNet is the largest source per category (~2,400 images, 3x RESISC45's 700), and Table III
# trains on parts of it (half its images; 21 or 25 of its 46 categories). At the base count
# those parts hold ~200 training images, too few to learn features that transfer.
MLRSNET_IMAGES_FACTOR = 4 / 3
DEFAULT_IMAGE_SIZE = 40  # stored side; the demo crop 32 is taken from a 37 px resize
SYNTH_SEED = 0
STANDIN_KEY = "imagenet100"
STANDIN_SEED = 7  # the grid uses 42
STANDIN_EPOCHS = 8  # longer than the grid (5): it stands in for a fully trained ImageNet model
# Keras's ImageNet weights were trained on BGR mean-subtracted images, so the stand-in is too:
# the faithful `imagenet-rgb` runs then feed it RGB, as the authors fed Keras's weights.
STANDIN_PREPROCESSING = "imagenet-caffe"
# Without --full: the cells that must be meaningful (Tables II-IV and the UCM column of the
# figures); the other targets' cells stay empty (summarize names the commands that fill them).
CORE_TARGETS = ("ucm",)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_WORKERS = 2
BANNER = SYNTHETIC_BANNER

Progress = Callable[[str], None]


@dataclasses.dataclass
class DemoResult:
    out: Path
    tracking_uri: str
    data_dir: Path
    imagenet_weights: Path
    report: object  # results.reproduce.ReproduceReport
    summary: object | None  # results.summarize.SummaryResult
    phases: dict[str, float]  # seconds per phase, in order
    checks: list = dataclasses.field(default_factory=list)  # results.demo_checks.Check

    @property
    def ok(self) -> bool:
        """All runs finished, summarised, and the demo showed what it must (`demo_checks`)."""
        return (bool(self.report.ok) and self.summary is not None
                and all(c.ok for c in self.checks))

    @property
    def figures(self) -> list[Path]:
        return [] if self.summary is None else [p for p in self.summary.files if p.suffix == ".png"]

    @property
    def html(self) -> Path | None:
        return None if self.summary is None else self.summary.out / "summary.html"

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"


@contextlib.contextmanager
def _tracking_store(uri: str) -> Iterator[None]:
    """The demo's tracking store is `uri`, for this process and the workers it starts
    (MLFLOW_TRACKING_URI), and for the demo only: later code in the process follows
    MLFLOW_TRACKING_URI again (a test run, a notebook).

    MLflow's public API cannot unset a URI (`mlflow.set_tracking_uri(mlflow.get_tracking_uri())`
    would pin the old one and ignore the variable from then on), so MLflow's own scoped setter
    is used; without it (an MLflow upgrade), the public set-and-restore keeps every demo run in
    `uri` (tests/test_demo.py checks both).
    """
    import mlflow

    try:
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    except ImportError:
        _use_tracking_uri = None
    previous = mlflow.get_tracking_uri()
    with mock.patch.dict(os.environ, MLFLOW_TRACKING_URI=uri):
        if _use_tracking_uri is not None:
            with _use_tracking_uri(uri):
                yield
            return
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """MLflow's and TensorFlow's INFO lines (several per run) would bury the progress lines."""
    import logging

    loggers = [logging.getLogger(name) for name in ("mlflow", "tensorflow", "absl")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING if logger.name == "mlflow" else logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# --- Phases ---------------------------------------------------------------------------------


def _synthesize(root: Path, images_per_class: int, image_size: int,
                say: Progress) -> tuple[dict[str, Path], set[str]]:
    """Write the synthetic downloads that are missing or differ; (manual dir per key, trees
    rewritten)."""
    from rssc_mlflow.data import synth
    from rssc_mlflow.data.catalog import CATALOG

    by_tree: dict[str, list[str]] = {}
    for key in CATALOG:
        by_tree.setdefault(synth.tree_of(key), []).append(key)
    manual: dict[str, Path] = {}
    rewritten: set[str] = set()
    for tree, keys in by_tree.items():
        n = (max(round(images_per_class * MLRSNET_IMAGES_FACTOR), MLRSNET_MIN_IMAGES)
             if tree == "mlrsnet" else images_per_class)
        marker = root / tree / synth.SYNTHETIC_MARKER
        try:
            meta = json.loads(marker.read_text())
        except (OSError, ValueError):
            meta = {}
        wanted = {"images_per_class": n, "image_size": image_size, "seed": SYNTH_SEED}
        if any(meta.get(k) != v for k, v in wanted.items()):
            say(f"  {tree}: writing {n} synthetic images per class ({image_size} px)")
            synth.write_synthetic(root, keys=[keys[0]], images_per_class=n,
                                  image_size=image_size, seed=SYNTH_SEED)
            rewritten.add(tree)
        for key in keys:
            manual[key] = root / tree
    return manual, rewritten


def _prepare(manual: dict[str, Path], rewritten: set[str], say: Progress) -> None:
    from rssc_mlflow.data import synth
    from rssc_mlflow.data.prepare import prepare

    try:  # TFDS draws progress bars for every dataset; the demo prints one line each
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    for key, folder in manual.items():
        report = prepare(key, folder, force=synth.tree_of(key) in rewritten).to_json()
        if not report["synthetic"]:
            raise RsscError(
                f"The data folder already holds the real {key} (prepared from "
                f"{report.get('source', '?')}); the demo runs on synthetic data only. Unset "
                "RSSC_DATA_DIR (the demo then uses <out>/data) or point it at an empty folder.")
        state = "already prepared" if report.get("already_prepared") else "prepared"
        say(f"  {key:<18} {report['images']:>5} images in {len(report['per_class'])} classes, "
            f"{state} (SYNTHETIC)")


def _imagenet_standin(folder: Path, say: Progress) -> Path:
    """Train (or reuse) the ImageNet stand-in and return its notop weight file."""
    from rssc_mlflow import commands, models, protocol
    from rssc_mlflow.data.prepare import load_prepared
    from rssc_mlflow.settings import resolve_settings

    path = folder / models.IMAGENET_WEIGHTS_FILE
    info_path = folder / (models.IMAGENET_WEIGHTS_FILE.removesuffix(".h5") + ".json")
    profile = protocol.get_profile(DEMO_PROFILE)
    settings = resolve_settings("pretrain", source=STANDIN_KEY, profile=DEMO_PROFILE,
                                seed=STANDIN_SEED, epochs=STANDIN_EPOCHS)
    prepared = load_prepared(STANDIN_KEY)
    identity = {"dataset": STANDIN_KEY, "dataset_digest": prepared.manifest_digest,
                "preprocessing": STANDIN_PREPROCESSING, "lr_scale": profile.lr_scale,
                **profile.model_options, "seed": settings.seed, "epochs": settings.epochs,
                "crop": settings.image_size,
                "batch_size": settings.batch_size}
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        info = {}
    if path.is_file() and all(info.get(k) == v for k, v in identity.items()):
        say(f"  reusing {path}")
        return path

    trained = commands.train_without_run(
        settings, preprocessing=STANDIN_PREPROCESSING, cache_name="demo-imagenet-standin",
        progress=say, log_epoch=lambda e, v: say(f"    epoch {e}: loss {v['loss']:.3f}, "
                                                  f"accuracy {100 * v.get('accuracy', 0):.1f}%"))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # never leave a half-written file
        partial = Path(tmp) / path.name
        models.save_notop_weights(trained.model, partial)
        partial.replace(path)
    info = {
        "synthetic": True,
        "what": ("NOT ImageNet weights: a ResNet-50 trained from scratch on the synthetic "
                 f"{STANDIN_KEY} stand-in by `rssc demo`, standing in for Keras's ImageNet "
                 "weights (which the demo does not download). Numbers obtained with it are not "
                 "comparable to the paper."),
        **identity, "train_images": trained.train_images, "test_images": trained.test_images,
        "test_accuracy": trained.test_accuracy, "preprocessing": STANDIN_PREPROCESSING,
        "generator": "rssc_mlflow.demo",
    }
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    say(f"  held-out accuracy {100 * trained.test_accuracy:.1f}% -> {path} (+ {info_path.name})")
    return path


def _standin_accuracy(weights: Path) -> float | None:
    info = weights.with_name(weights.name.removesuffix(".h5") + ".json")
    try:
        return float(json.loads(info.read_text())["test_accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _checks(weights: Path, csv_path: Path) -> list:
    """The demo's checks on the runs of its profile in the store; written as a CSV too."""
    from mlflow import MlflowClient

    from rssc_mlflow.results import demo_checks, summarize
    from rssc_mlflow.tracking import runs

    client = MlflowClient()
    records = summarize.fetch_runs(client, summarize.experiment_ids(client,
                                                                      runs.experiment_name()))
    checks = demo_checks.demo_checks(records, _standin_accuracy(weights), profile=DEMO_PROFILE)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["check", "measured", "required", "ok"])
        writer.writerows([c.what, c.measured, c.required, c.ok] for c in checks)
    return checks


# --- The demo --------------------------------------------------------------------------------


def default_workers() -> int:
    """One worker per core, at most two: each holds its compiled models in memory (their size:
    docs/PERFORMANCE.md, "The demo")."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def run_demo(out: Path = Path("demo_out"), images_per_class: int = DEFAULT_IMAGES_PER_CLASS,
             image_size: int = DEFAULT_IMAGE_SIZE, progress: Progress = print,
             workers: int | None = None, full: bool = False) -> DemoResult:
    """Run the demo (see the module doc) and return where everything went.

    `full`: every cell of every table and figure (153 runs); otherwise Tables II-IV and the
    UCM column of Figures 1-3 (`CORE_TARGETS`).
    """
    workers = default_workers() if workers is None else workers
    if images_per_class < 3:
        raise RsscError(f"--images-per-class {images_per_class} is too few: the 20/80 and 80/20 "
                        "splits need at least 3 images of every class.")
    from rssc_mlflow import protocol

    crop_side = protocol.get_profile(DEMO_PROFILE).resize
    if image_size < crop_side:
        raise RsscError(f"--image-size {image_size} is below the demo's resize side "
                        f"{crop_side} px: use at least {crop_side}.")
    started = time.monotonic()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    data_dir = Path(os.environ.get("RSSC_DATA_DIR") or out / "data").expanduser()
    phases: dict[str, float] = {}
    total = 6

    def phase(n: int, name: str) -> Callable[[], None]:
        progress(f"\n[demo {n}/{total}] {name} ({_minutes(time.monotonic() - started)} so far)")
        t0 = time.monotonic()
        return lambda: phases.__setitem__(name, time.monotonic() - t0)

    progress(BANNER)
    progress(f"output: {out}\ndatasets: {data_dir}\ntracking store: {tracking_uri}")
    with mock.patch.dict(os.environ, RSSC_DATA_DIR=str(data_dir)), \
            _tracking_store(tracking_uri), _quiet_loggers():
        done = phase(1, "starting TensorFlow")
        from rssc_mlflow import models  # noqa: F401 - TensorFlow import, timed on its own

        done()
        done = phase(2, "synthetic downloads (the official layouts, generated)")
        manual, rewritten = _synthesize(out / "synthetic", images_per_class, image_size,
                                        progress)
        done()
        done = phase(3, "prepare all 11 dataset keys")
        _prepare(manual, rewritten, progress)
        done()

        from rssc_mlflow.results.demo_checks import render as render_checks
        from rssc_mlflow.results.reproduce import reproduce
        from rssc_mlflow.results.summarize import summarize
        from rssc_mlflow.tracking import runs
        from rssc_mlflow.training import speed

        with speed.enabled():
            done = phase(4, "ImageNet stand-in (Keras's ImageNet weights are not downloaded)")
            weights = _imagenet_standin(out / "imagenet_standin", progress)
            done()
            with mock.patch.dict(os.environ, {models.IMAGENET_WEIGHTS_ENV: str(weights)}):
                what = ("every run of Tables II-IV and Figures 1-3" if full else
                        "Tables II-IV and the UCM column of Figures 1-3")
                done = phase(5, f"{what} (reproduce, profile demo; already finished runs are "
                                "skipped)")
                report = reproduce(DEMO_PROFILE, log_model_finetune=False, parallel=workers,
                                   reuse_models=True, progress=progress,
                                   targets=None if full else CORE_TARGETS)
                done()
        for run in report.failed:
            progress(f"FAILED: {run.label}: {run.reason[:300]}")
        done = phase(6, "summarize")
        summary = None
        try:
            summary = summarize(runs.experiment_name(), out / "summary")
        finally:
            done()
        checks = _checks(weights, out / "summary" / "demo_checks.csv")
    result = DemoResult(out, tracking_uri, data_dir, weights, report, summary, phases, checks)
    if summary is not None:
        progress("\n" + summary.console)
    progress("\n" + render_checks(checks))
    progress("\nTime per phase: " + ", ".join(f"{k.split(' (')[0]} {_minutes(v)}"
                                              for k, v in phases.items())
             + f"; total {_minutes(time.monotonic() - started)}")
    if result.figures:
        progress("Figures:\n" + "\n".join(f"  {p}" for p in result.figures))
    if result.html is not None:
        progress(f"Summary page: {result.html}")
    progress(f"Browse every run: {result.ui_command()}")
    if not report.ok:
        progress(f"{len(report.failed)} run(s) failed; run `rssc demo` again to retry them.")
    progress(BANNER)
    return result
