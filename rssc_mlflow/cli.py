"""`rssc`: the command line. One command per entry point, no logic of its own.

The MLproject entry points run `python -m rssc_mlflow.cli mlproject STAGE --key value ...`,
which becomes `rssc STAGE` with those options (the MLproject section below).

Every command turns an `RsscError` into one paragraph on stderr and exit status 1, so a user
never sees a bare traceback for a mistake they can fix.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from rssc_mlflow import _quiet, protocol
from rssc_mlflow.errors import Interrupted, RsscError
from rssc_mlflow.naming import few

# Before anything imports TensorFlow (the commands import it when they run). RSSC_VERBOSE=1 or
# a TF_CPP_MIN_LOG_LEVEL of the user's keeps TensorFlow's, absl's and oneDNN's notices.
_quiet.install()

app = typer.Typer(help=__doc__.splitlines()[0] + "\n\nReproduce 'The Role of Pre-Training in "
                  "High-Resolution Remote Sensing Scene Classification' as MLflow runs.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
splits_app = typer.Typer(help="Stratified splits and the authors' split files.",
                         no_args_is_help=True)
weights_app = typer.Typer(help="Pre-trained backbones in the MLflow model registry.",
                          no_args_is_help=True)
datasets_app = typer.Typer(help="List the datasets; register your own (add) or remove them.",
                           invoke_without_command=True)
app.add_typer(splits_app, name="splits")
app.add_typer(weights_app, name="weights")
app.add_typer(datasets_app, name="datasets")


def friendly(func: Callable) -> Callable:
    """Report user errors as one paragraph and exit 1 instead of a traceback; a run interrupted
    by SIGTERM/SIGINT as one paragraph with the command that continues it, and exit 128+signal."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Interrupted as exc:
            _tell_parent(f"{type(exc).__name__}: {exc.message()}")
            typer.echo(f"error: {exc.message()}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except RsscError as exc:
            _tell_parent(f"{type(exc).__name__}: {exc}")
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            _tell_parent(f"{type(exc).__name__}: {exc}")
            where = f" while writing {exc.filename}" if exc.filename else ""
            typer.echo(f"error: {exc.strerror or exc}{where}. Free space on that disk (datasets: "
                       "RSSC_DATA_DIR; checkpoints and caches live beside them; artifacts: the "
                       "tracking store's artifact root), then run the command again, or resume "
                       "the FAILED run it left with --resume RUN_ID.", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _tell_parent(reason: str) -> None:
    """A failed command run by `rssc reproduce` as a child: say why in its result file."""
    from rssc_mlflow.results.reproduce.outcome import report_to_parent

    report_to_parent({"status": "failed", "reason": reason})


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=1, sort_keys=True, default=str))


# --- Data ----------------------------------------------------------------------------------


@datasets_app.callback(invoke_without_command=True)
@friendly
def datasets(ctx: typer.Context,
             as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the datasets (the catalog's, then yours), whether each is prepared and its images."""
    if ctx.invoked_subcommand is not None:
        return
    from rssc_mlflow.data.prepare import status

    rows = status()
    if as_json:
        _echo_json(rows)
        return
    typer.echo(f"{'key':<18} {'task':<6} {'classes':>7} {'expected':>9} {'prepared':>9}  download")
    for r in rows:
        prepared = (f"{r['images']:,}" + (" synth" if r.get("synthetic") else "")
                    if r["prepared"] else "no")
        where = r["download_page"]
        if r["origin"] == "user":
            where = f"yours: {r['description'] or where}"
        if not r["hrrs"]:
            where += f" [medium resolution: {r['resolution']}]"
        typer.echo(f"{r['key']:<18} {r['task']:<6} {r['classes']:>7} {r['expected_images']:>9,} "
                   f"{prepared:>9}  {where}")


@datasets_app.command("add")
@friendly
def datasets_add(
    name: Annotated[str, typer.Argument(help="Key for your dataset: lowercase letters, digits, '_'.")],
    manual_dir: Annotated[Path, typer.Option(help="The folder holding your images (a folder per class, the class being the leaf folder, or any tree with --labels-csv).")],
    task: Annotated[str | None, typer.Option(help="single (folders per class, default) or multi (needs --labels-csv).")] = None,
    labels_csv: Annotated[Path | None, typer.Option(help="Multi-label CSV: a file name column, then one 0/1 column per label.")] = None,
    description: Annotated[str, typer.Option(help="What the data are (shown by `rssc datasets`).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the stored spec as JSON.")] = False,
) -> None:
    """Register your own dataset as a key: then `rssc prepare NAME`, `rssc transfer NAME`."""
    from rssc_mlflow.data import user_datasets

    dataset = user_datasets.add(name, manual_dir, task=task, labels_csv=labels_csv,
                                description=description)
    if as_json:
        _echo_json(dataset.to_json())
        return
    kind = ("multi-label, labels CSV" if dataset.task == "multi"
            else "single-label, a folder per class")
    typer.echo(f"registered {dataset.name}: {dataset.images:,} images, {len(dataset.classes)} "
               f"classes ({kind}) from {dataset.manual_dir}")
    for c in dataset.classes:
        where = f"  <- {dataset.class_dirs[c]}" if dataset.class_dirs else ""
        typer.echo(f"  {c}: {dataset.per_class[c]:,}{where}")
    if dataset.ignored:
        typer.echo(f"ignored {dataset.ignored} file(s) outside the class folders or not images")
    typer.echo(f"spec {user_datasets.spec_path(dataset.name)} (digest {dataset.digest[:16]})\n"
               f"next: rssc prepare {dataset.name}")


@datasets_app.command("remove")
@friendly
def datasets_remove(name: Annotated[str, typer.Argument(help="One of your datasets.")]) -> None:
    """Unregister one of your datasets: its spec, prepared data and splits (runs stay)."""
    from rssc_mlflow.data import user_datasets

    for path in user_datasets.remove(name):
        typer.echo(f"removed {path}")


@app.command()
@friendly
def prepare(
    key: Annotated[str, typer.Argument(help="Dataset key (see `rssc datasets`).")],
    manual_dir: Annotated[Path | None, typer.Option(
        help="The unpacked download: the archive's top folder or the folder that contains it "
             "(your own datasets: default, the folder they were registered from).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    force: Annotated[bool, typer.Option(help="Rebuild even if already prepared.")] = False,
    skip_corrupt: Annotated[bool, typer.Option(help="Skip unreadable images (listed).")] = False,
    with_val: Annotated[bool, typer.Option(
        help="imagenet100: add the 5,000 ILSVRC2012 val images of the 100 wnids (val/<wnid>/ "
             "next to train/), as in the paper's 131,689. Recorded in the manifest.")] = False,
    tiff_as_jpeg: Annotated[int | None, typer.Option(
        metavar="QUALITY",
        help="ucm, rsicb256: store each TIFF as a JPEG of this quality (1-95), as the authors "
             "read JPEGs converted beforehand. Default: lossless. Recorded in the "
             "manifest.")] = None,
) -> None:
    """Build a dataset from its official download into $RSSC_DATA_DIR (tensorflow-datasets)."""
    from rssc_mlflow.data.prepare import prepare as prepare_dataset

    progress = None if as_json else (lambda msg: typer.echo(msg, err=True))
    report = prepare_dataset(key, manual_dir, force=force, skip_corrupt=skip_corrupt,
                             progress=progress, with_val=with_val, tiff_as_jpeg=tiff_as_jpeg)
    out = report.to_json()
    if as_json:
        _echo_json(out)
        return
    state = "already prepared" if out.get("already_prepared") else "prepared"
    typer.echo(f"{key}: {state}, {out['images']:,} images in {len(out['per_class'])} classes"
               + (" (SYNTHETIC)" if out["synthetic"] else "")
               + "".join(f", {k}={v}" for k, v in out["options"].items()))
    for note in filter(None, [out.get("count_note")]):
        typer.echo(f"note: {note}")
    if out["skipped"]:
        typer.echo(f"skipped {len(out['skipped'])} corrupt images: {few(out['skipped'], 5, show=str)}")
    if out.get("anomalies"):
        typer.echo(f"label anomalies: {json.dumps(out['anomalies'], default=str)[:400]}")


@app.command()
@friendly
def verify(key: Annotated[str, typer.Argument(help="Dataset key (see `rssc datasets`).")]) -> None:
    """Re-hash a prepared dataset; name every changed, missing or extra file (exit 1 if any)."""
    from rssc_mlflow.data.verify import verify as verify_dataset
    from rssc_mlflow.errors import DatasetError

    report = verify_dataset(key)
    for note in report.notes:
        typer.echo(f"warning: {note}", err=True)
    if not report.ok:
        for line in report.problems():
            typer.echo(line)
        raise DatasetError(report.summary())
    typer.echo(report.summary())


@app.command()
@friendly
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write the stand-in downloads into.")],
    images_per_class: Annotated[int, typer.Option(help="Images per class.")] = 10,
    image_size: Annotated[int, typer.Option(help="Image side in pixels (AID: x600/256).")] = 64,
    datasets: Annotated[str, typer.Option("--datasets", help="Comma-separated keys; default all.")] = "",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write synthetic stand-ins of the datasets in their official on-disk layouts."""
    from rssc_mlflow.data.synth import write_synthetic

    keys = [k.strip() for k in datasets.split(",") if k.strip()] or None
    if keys:
        from rssc_mlflow.data.catalog import get_spec

        for k in keys:
            get_spec(k)
    written = write_synthetic(out, keys=keys, images_per_class=images_per_class,
                              image_size=image_size, seed=seed)
    for key, path in written.items():
        typer.echo(f"{key:<18} {path}   (SYNTHETIC) -> rssc prepare {key} --manual-dir {path}")


@splits_app.command("make")
@friendly
def splits_make(
    key: Annotated[str, typer.Argument(help="Dataset key.")],
    role: Annotated[str, typer.Option(help="source (80/20) or target (20/80).")] = "target",
    seed: Annotated[int, typer.Option(help="Split seed.")] = protocol.SEED,
) -> None:
    """Make (or show) the persisted stratified split of a prepared dataset."""
    from rssc_mlflow.data.prepare import load_prepared
    from rssc_mlflow.data.splits import get_split, split_path

    manifest = get_split(load_prepared(key), role, seed=seed)
    typer.echo(f"{key} {role} seed {seed}: {len(manifest.train)} train, {len(manifest.test)} test, "
               f"digest {manifest.digest[:16]} -> {split_path(key, role, seed)}")


@splits_app.command("import")
@friendly
def splits_import(
    pickle_file: Annotated[Path, typer.Argument(help="The authors' *-split.pkl file.")],
    dataset: Annotated[str, typer.Option(help="Dataset key the split belongs to.")],
) -> None:
    """Convert an authors' pickle split file (loaded safely) into a split manifest."""
    from rssc_mlflow.data.prepare import load_prepared
    from rssc_mlflow.data.splits import import_authors_split, save_imported

    prepared = load_prepared(dataset)
    manifest = import_authors_split(pickle_file, dataset, prepared.records,
                                    dataset_digest=prepared.manifest_digest)
    path = save_imported(manifest)
    typer.echo(f"imported {len(manifest.train)} train / {len(manifest.test)} test files -> {path}\n"
               f"use it with: --split-file {path}")


# --- Training and transfer ------------------------------------------------------------------

Profile = Annotated[str, typer.Option(help="paper (docs/PROTOCOL.md), demo (CPU) or smoke (tests).")]
Epochs = Annotated[int | None, typer.Option(help="Epochs (default: the profile's).")]
BatchSize = Annotated[int | None, typer.Option(help="Batch size (default: the profile's).")]
ImageSize = Annotated[int | None, typer.Option(help="Crop side, divisible by 32 (paper: 256).")]
Seed = Annotated[int, typer.Option(help="Seed for splits, initialisation and augmentation.")]
Lr = Annotated[float | None, typer.Option(help="Peak learning rate (default: the schedule rule).")]
Preproc = Annotated[str | None, typer.Option(help="unit, imagenet-rgb or imagenet-caffe (default: from the model's lineage).")]
Precision = Annotated[str, typer.Option(help="float32 or mixed (float16 on GPU, bfloat16 on CPU).")]
Strategy = Annotated[str, typer.Option(help="auto, mirrored or multiworker (tf.distribute).")]
SplitFile = Annotated[str | None, typer.Option(help="A split manifest to use instead of the stratified split.")]
ScheduleSteps = Annotated[str, typer.Option(help="How warm-up and decay steps are counted: paper (per batch run, faithful to the paper) or authors (RSSC-transfer's train.py: n // batch counted steps, a first batch at 1e-5 and a second at 0; docs/PROTOCOL.md).")]
Resume = Annotated[str | None, typer.Option(help="Continue an interrupted run (its run id).")]
LogModel = Annotated[bool, typer.Option(help="Log the trained Keras model to MLflow.")]
AnyVersion = Annotated[bool, typer.Option(help="When no registered version of the source has the profile's alias (@paper, @demo, ...), take the newest one (said on the console and in the tag rssc.lineage.note) instead of stopping.")]


def _common(profile, epochs, batch_size, image_size, seed, lr, preprocessing, precision,
            split_file) -> dict[str, Any]:
    return dict(profile=profile, epochs=epochs, batch_size=batch_size, image_size=image_size,
                seed=seed, lr=lr, preprocessing=preprocessing, precision=precision,
                split_file=split_file)


def _require(resume: str | None, **options: str | None) -> None:
    """Training options are required, except with --resume (the run has them)."""
    missing = [f"--{name}" for name, value in options.items() if not value]
    if missing and not resume:
        raise RsscError(f"Missing option {' and '.join(missing)} (needed unless you continue a "
                        "run with --resume RUN_ID).")


def _report(result) -> None:
    from rssc_mlflow.results.reproduce.outcome import report_to_parent

    # For `rssc reproduce`, whose child this may be: the outcome as data, not console text.
    report_to_parent({"status": "ran", "run_id": result.run_id,
                      "metrics": {k: float(v) for k, v in result.metrics.items()}})
    if result.synthetic:
        typer.echo("SYNTHETIC DATA: not comparable to the paper.")
    typer.echo(f"run {result.run_id} FINISHED " + " ".join(
        f"{k}={v:.4f}" for k, v in result.metrics.items()))
    if result.model_name:
        typer.echo(f"registered models:/{result.model_name}/{result.model_version}")


@app.command()
@friendly
def pretrain(source: Annotated[str | None, typer.Option(help="Dataset key to train on from scratch.")] = None,
             profile: Profile = protocol.DEFAULT_PROFILE, epochs: Epochs = None,
             batch_size: BatchSize = None, image_size: ImageSize = None, seed: Seed = protocol.SEED,
             lr: Lr = None, preprocessing: Preproc = None, precision: Precision = "float32",
             strategy: Strategy = "auto", split_file: SplitFile = None, resume: Resume = None,
             schedule_steps: ScheduleSteps = "paper") -> None:
    """Train ResNet-50 from scratch on SOURCE's 80%; registers rssc-resnet50-SOURCE."""
    from rssc_mlflow.commands import pretrain as run

    _require(resume, source=source)
    _report(run(source or "", resume=resume, strategy=strategy, schedule_steps=schedule_steps,
                **_common(profile, epochs, batch_size, image_size, seed, lr, preprocessing, precision, split_file)))


@app.command()
@friendly
def adapt(source: Annotated[str | None, typer.Option(help="Dataset key to adapt ImageNet weights to.")] = None,
          profile: Profile = protocol.DEFAULT_PROFILE, epochs: Epochs = None,
          batch_size: BatchSize = None, image_size: ImageSize = None, seed: Seed = protocol.SEED,
          lr: Lr = None, preprocessing: Preproc = None, precision: Precision = "float32",
          strategy: Strategy = "auto", split_file: SplitFile = None, resume: Resume = None,
             schedule_steps: ScheduleSteps = "paper") -> None:
    """Fine-tune ImageNet ResNet-50 on SOURCE's 80%; registers rssc-resnet50-imagenet-SOURCE."""
    from rssc_mlflow.commands import adapt as run

    _require(resume, source=source)
    _report(run(source or "", resume=resume, strategy=strategy, schedule_steps=schedule_steps,
                **_common(profile, epochs, batch_size, image_size, seed, lr, preprocessing, precision, split_file)))


@app.command()
@friendly
def finetune(source: Annotated[str | None, typer.Option(help="Model reference: scratch, imagenet, KEY, imagenet+KEY, models:/..., FILE.")] = None,
             target: Annotated[str | None, typer.Option(help="Target dataset key.")] = None,
             profile: Profile = protocol.DEFAULT_PROFILE, epochs: Epochs = None,
             batch_size: BatchSize = None, image_size: ImageSize = None, seed: Seed = protocol.SEED,
             lr: Lr = None, preprocessing: Preproc = None, precision: Precision = "float32",
             strategy: Strategy = "auto", split_file: SplitFile = None, resume: Resume = None,
             schedule_steps: ScheduleSteps = "paper",
             log_model: LogModel = True, allow_any_version: AnyVersion = False) -> None:
    """Fine-tune the whole network from SOURCE on TARGET's 20%, test on its 80%."""
    from rssc_mlflow.commands import finetune as run

    _require(resume, source=source, target=target)
    _report(run(source or "", target or "", resume=resume, strategy=strategy, schedule_steps=schedule_steps, log_model=log_model,
                allow_any_version=allow_any_version, **_common(profile, epochs, batch_size, image_size, seed, lr, preprocessing, precision, split_file)))


@app.command()
@friendly
def extract(source: Annotated[str, typer.Option(help="Model reference (not scratch).")],
            target: Annotated[str, typer.Option(help="Target dataset key.")],
            profile: Profile = protocol.DEFAULT_PROFILE, batch_size: BatchSize = None,
            image_size: ImageSize = None, seed: Seed = protocol.SEED,
            preprocessing: Preproc = None, precision: Precision = "float32",
            split_file: SplitFile = None, allow_any_version: AnyVersion = False) -> None:
    """Write 2048-d features of TARGET's split (train and test) as a run artifact."""
    from rssc_mlflow.commands import extract as run

    _report(run(source, target, allow_any_version=allow_any_version, **_common(profile, None, batch_size, image_size, seed, None,
                                          preprocessing, precision, split_file)))


@app.command()
@friendly
def probe(source: Annotated[str, typer.Option(help="Model reference (not scratch).")],
          target: Annotated[str, typer.Option(help="Target dataset key.")],
          solver: Annotated[str, typer.Option(help="adam (faithful) or lbfgs (scikit-learn).")] = "adam",
          standardize: Annotated[bool, typer.Option(help="Standardise features (the authors did not).")] = False,
          profile: Profile = protocol.DEFAULT_PROFILE, epochs: Epochs = None,
          batch_size: BatchSize = None, image_size: ImageSize = None, seed: Seed = protocol.SEED,
          lr: Lr = None, preprocessing: Preproc = None, precision: Precision = "float32",
          split_file: SplitFile = None, allow_any_version: AnyVersion = False) -> None:
    """Train a linear classifier on frozen SOURCE features of TARGET (reuses extracted features)."""
    from rssc_mlflow.commands import probe as run

    _report(run(source, target, solver=solver, standardize=standardize,
                allow_any_version=allow_any_version,
                **_common(profile, epochs, batch_size, image_size, seed, lr, preprocessing, precision, split_file)))


@app.command()
@friendly
def summarize(
    experiment: Annotated[str | None, typer.Option(help="Experiment to read (default: the one runs go to, MLFLOW_EXPERIMENT_NAME or rssc; '' = all experiments).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the tables, figures and summary.html.")] = Path("rssc_outputs/summary"),
    multilabel_metric: Annotated[str, typer.Option(help="f1_micro, f1_macro, f1_weighted, f1_samples or map.")] = "f1_micro",
    pool_precision: Annotated[bool, typer.Option("--pool-precision/--no-pool-precision", help="Let runs that differ only in precision (float32/mixed) or GPU count share a cell; each such cell's footnote says what it pooled.")] = False,
) -> None:
    """Rebuild Tables II-IV and Figures 1-3 from the tracking store, next to the paper's numbers."""
    from rssc_mlflow.results.summarize import summarize as build
    from rssc_mlflow.tracking.runs import experiment_name

    if experiment is None:
        experiment = experiment_name()
    result = build(experiment or None, out, multilabel_metric=multilabel_metric,
                   pool_precision=pool_precision)
    typer.echo(result.console)
    typer.echo(f"\nwritten to {result.out} (open {result.out / 'summary.html'}); "
               f"logged as run {result.run_id}")


@app.command()
@friendly
def reproduce(
    profile: Profile = protocol.DEFAULT_PROFILE,
    only: Annotated[str, typer.Option(help="Comma-separated: table2,table3,table4,fig1,fig2,fig3 (default: all).")] = "",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; every run once per seed.")] = "42",
    plan: Annotated[bool, typer.Option("--plan", help="Only print the runs, their status and GPU-hours.")] = False,
    backend: Annotated[str, typer.Option(help="local or kubernetes.")] = "local",
    backend_config: Annotated[Path | None, typer.Option(help="Kubernetes backend config JSON (default: kubernetes/backend_config.json).")] = None,
    parallel: Annotated[int, typer.Option(help="Independent runs at once (local: subprocesses).")] = 1,
    throughput: Annotated[float, typer.Option(help="Images/s of one GPU, for the GPU-hours estimate.")] = 2500.0,
    log_model_finetune: Annotated[bool, typer.Option(help="Log the fine-tuned models.")] = True,
    reuse_models: Annotated[bool, typer.Option(help="With --parallel N: N worker processes that reuse compiled models (many short runs, e.g. on a CPU) instead of one process per run.")] = False,
    gpus_per_run: Annotated[int | None, typer.Option(help="With --parallel N: each run sees only its own K GPUs (CUDA_VISIBLE_DEVICES split N ways, memory growth on); 0 = CPU only. Default: every run sees every GPU.")] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")] = None,
) -> None:
    """Run the paper's grid in dependency order; re-running skips what is already done."""
    from rssc_mlflow.results.reproduce import reproduce as run_grid
    from rssc_mlflow.results.reproduce import split_list

    report = run_grid(profile, only=split_list(only) or None,
                      seeds=[int(s) for s in split_list(seeds)], plan_only=plan,
                      backend=backend, backend_config=backend_config, parallel=parallel,
                      throughput=throughput, log_model_finetune=log_model_finetune,
                      reuse_models=reuse_models, gpus_per_run=gpus_per_run,
                      progress=lambda m: typer.echo(m, err=True))
    typer.echo(report.table())
    if as_json:
        as_json.write_text(json.dumps(report.to_json(), indent=1))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@friendly
def transfer(
    target: Annotated[str, typer.Argument(help="Target dataset key: yours (`rssc datasets add`) or the catalog's.")],
    profile: Profile = protocol.DEFAULT_PROFILE,
    sources: Annotated[str, typer.Option(help="all (every backbone registered @PROFILE, and ImageNet-1k) or comma-separated references: imagenet, KEY, imagenet+KEY, models:/...")] = "all",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; every run once per seed.")] = "42",
    plan: Annotated[bool, typer.Option("--plan/--no-plan", help="Only print the runs, their status and GPU-hours.")] = False,
    parallel: Annotated[int, typer.Option(help="Independent runs at once (local: subprocesses).")] = 1,
    throughput: Annotated[float, typer.Option(help="Images/s of one GPU, for the GPU-hours estimate.")] = 2500.0,
    log_model_finetune: Annotated[bool, typer.Option(help="Log the fine-tuned models.")] = True,
    reuse_models: Annotated[bool, typer.Option(help="With --parallel N: N worker processes that reuse compiled models.")] = False,
    gpus_per_run: Annotated[int | None, typer.Option(help="With --parallel N: each run sees only its own K GPUs (CUDA_VISIBLE_DEVICES split N ways, memory growth on); 0 = CPU only. Default: every run sees every GPU.")] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")] = None,
) -> None:
    """The transfer row of TARGET: scratch fine-tuning, then probe and fine-tuning from every
    backbone; resumable. `rssc summarize` then answers: does pre-training pay off here?"""
    from rssc_mlflow.results.reproduce import split_list
    from rssc_mlflow.results.transfer import transfer as run_row

    report = run_row(target, profile, sources=sources,
                     seeds=[int(s) for s in split_list(seeds)], plan_only=plan,
                     parallel=parallel, throughput=throughput,
                     log_model_finetune=log_model_finetune, reuse_models=reuse_models,
                     gpus_per_run=gpus_per_run, progress=lambda m: typer.echo(m, err=True))
    typer.echo(report.table())
    if as_json:
        as_json.write_text(json.dumps(report.to_json(), indent=1, default=str))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@friendly
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the synthetic data, the ImageNet stand-in and the summary.")] = Path("demo_out"),
    images_per_class: Annotated[int, typer.Option(help="Synthetic images per class (MLRSNet: at least 6).")] = 12,
    image_size: Annotated[int, typer.Option(help="Synthetic image side in pixels (at least 37).")] = 40,
    full: Annotated[bool, typer.Option("--full", help="Every cell of every table and figure (153 runs), not only Tables II-IV and the UCM column.")] = False,
) -> None:
    """The pipeline on SYNTHETIC data on a CPU: Tables II-IV, the UCM column, Findings."""
    from rssc_mlflow.demo import run_demo

    if not run_demo(out, images_per_class=images_per_class, image_size=image_size,
                    progress=typer.echo, full=full).ok:
        raise typer.Exit(1)


# --- Registry and server ---------------------------------------------------------------------


@weights_app.command("list")
@friendly
def weights_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered backbones with their versions, aliases and preprocessing."""
    from rssc_mlflow.tracking.registry import list_models

    rows = list_models()
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo("no rssc-resnet50-* models registered yet (run `rssc pretrain` or `rssc adapt`)")
    for r in rows:
        aliases = ",".join("@" + a for a in r["aliases"]) or "-"
        typer.echo(f"{r['name']:<36} v{r['version']:<4} {aliases:<14} "
                   f"preprocessing={r.get('preprocessing', '?')} synthetic={r.get('synthetic', '?')}")


@weights_app.command("download")
@friendly
def weights_download(
    reference: Annotated[str, typer.Argument(help="KEY, imagenet+KEY or models:/... URI.")],
    out: Annotated[Path, typer.Option(help="Folder to write model.keras and the notop weights into.")],
    profile: Profile = protocol.DEFAULT_PROFILE,
    allow_any_version: AnyVersion = False,
) -> None:
    """Write a registered model (.keras) and its backbone as a Keras notop weight file."""
    from rssc_mlflow.tracking.registry import download

    for path in download(reference, out, profile=profile, allow_any_version=allow_any_version):
        typer.echo(str(path))


@weights_app.command("import")
@friendly
def weights_import(
    file: Annotated[Path, typer.Argument(help="A .keras or .h5 ResNet-50 (e.g. the authors' release).")],
    source: Annotated[str, typer.Option(help="Dataset key it was trained on.")],
    init: Annotated[str, typer.Option(help="scratch or imagenet: how it was initialised.")] = "scratch",
    profile: Profile = protocol.DEFAULT_PROFILE,
    preprocessing: Preproc = None,
) -> None:
    """Register an external model file after checking it is a ResNet-50 of the expected shapes."""
    from rssc_mlflow.tracking.registry import import_model

    name, version = import_model(file, source_key=source, init=init, profile=profile,
                                 preprocessing=preprocessing)
    typer.echo(f"registered models:/{name}/{version} (@{profile})")


@app.command()
@friendly
def server(
    host: Annotated[str, typer.Option(help="Interface to bind (default loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    backend_store_uri: Annotated[str, typer.Option(help="SQL store, e.g. postgresql://... .")] = "sqlite:///mlflow-server.db",
    artifacts_destination: Annotated[str, typer.Option(help="Where proxied artifacts are kept.")] = "./mlartifacts",
    auth: Annotated[bool, typer.Option(help="Run MLflow's basic-auth app (users from the environment).")] = False,
) -> None:
    """Start a team `mlflow server` with a SQL backend and proxied artifacts."""
    from rssc_mlflow.tracking.server import server_command

    cmd = server_command(host=host, port=port, backend_store_uri=backend_store_uri,
                         artifacts_destination=artifacts_destination, auth=auth)
    typer.echo(f"starting: {' '.join(cmd)}\nclients: export MLFLOW_TRACKING_URI=http://{host}:{port}")
    # MLflow 3's job runner (huey consumers, for GenAI evaluation jobs) is not used by rssc:
    # off unless asked for, so the server starts fewer processes and holds less memory.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execvp(cmd[0], cmd)


# --- MLproject ------------------------------------------------------------------------------
#
# Every MLproject entry point's command is `python -m rssc_mlflow.cli mlproject STAGE --key
# value ...`. MLflow fills the declared parameters into the command and appends the others as
# `--key value` (`-P batch_size=8` -> `--batch_size 8`). `mlproject_argv` turns those pairs into
# `rssc STAGE` options, read off the command itself so that every option of `rssc STAGE --help`
# works as a parameter: underscores become dashes, a flag's "true"/"false" becomes
# `--flag`/`--no-flag` (MLproject values are strings), and a command's arguments come from their
# parameter (`-P target=X` -> `rssc transfer X`).

# MLflow substitutes a value for every declared parameter, so a declared one cannot be left out:
# "default" (or an empty value) hands it back to the command's own default, e.g.
# `-P strategy=default`. MLflow offers no "not given" of its own, hence the sentinel.
MLPROJECT_NOT_GIVEN = ("default", "")
MLPROJECT_USAGE = "usage: python -m rssc_mlflow.cli mlproject STAGE [--key value ...]"


def stage_command(stage: str):  # -> typer's own (vendored) click Command
    """The click command behind `rssc STAGE`."""
    found = typer.main.get_command(app).commands.get(stage)  # type: ignore[attr-defined]
    if found is None:
        raise SystemExit(f"error: no rssc command {stage!r} (MLproject entry point).")
    return found


def _is_argument(param) -> bool:
    # By name, not class: typer >= 0.29 vendors click, so click.Argument is not its class.
    return getattr(param, "param_type_name", "") == "argument"


def mlproject_argv(stage: str, pairs: list[str]) -> list[str]:
    """`--key value` pairs (MLflow's spelling) -> the argv of `rssc STAGE`."""
    params = {p.name: p for p in stage_command(stage).params}
    arguments: dict[str, str] = {}
    options: list[str] = []
    it = iter(pairs)
    for key in it:
        value = next(it, "")
        name = key.removeprefix("--").replace("-", "_")
        if value in MLPROJECT_NOT_GIVEN:
            continue
        param = params.get(name)
        if _is_argument(param):
            arguments[name] = value
        elif param is not None and getattr(param, "is_flag", False):
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"error: {name} must be true or false, not {value!r}.")
            flags = param.opts if value.lower() == "true" else param.secondary_opts
            options += flags[:1]  # a flag without a --no- form is false when left out
        else:  # unknown names go through too: rssc says what it accepts
            options += ["--" + name.replace("_", "-"), value]
    # Arguments first, in the command's order; a missing one is rssc's usage error.
    ordered = [arguments[p.name] for p in params.values()
               if _is_argument(p) and p.name in arguments]
    return [*ordered, *options]


@app.command(hidden=True, add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def mlproject(ctx: typer.Context) -> None:
    """`mlproject STAGE --key value ...`: an MLproject entry point's command, run as `rssc STAGE`
    with the options `mlproject_argv` makes of MLflow's pairs."""
    if not ctx.args:
        raise SystemExit(MLPROJECT_USAGE)
    stage, *pairs = ctx.args
    app([stage, *mlproject_argv(stage, pairs)], prog_name="rssc")


def main() -> None:  # pragma: no cover - console script
    app(prog_name="rssc")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
