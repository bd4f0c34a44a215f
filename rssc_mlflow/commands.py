"""The library API behind every entry point: pretrain, adapt, extract, probe, finetune.

The CLI (`rssc ...`, which the MLproject shim calls) and Python users all call these functions.
Each one resolves its settings and inputs *before* opening an MLflow run (so bad input costs
nothing and leaves no run), then does its work inside `tracked_run`, which marks the run FAILED
with the reason if anything goes wrong.

The training stages share `_train`, whose body reads as the paper's steps: resolve the inputs,
train, evaluate, log. What lets an interrupted run continue (the run lock, `--resume`, results
kept when the tracking server goes away) lives in tracking/recovery.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from rssc_mlflow import config, models
from rssc_mlflow.data import pipeline, splits
from rssc_mlflow.data.catalog import CATALOG, DatasetSpec, get_spec
from rssc_mlflow.data.prepare import PreparedDataset, load_prepared
from rssc_mlflow.errors import RsscError
from rssc_mlflow.protocol import PROBE_LR, Profile, get_profile
from rssc_mlflow.settings import (
    SOURCE_STAGES,
    TRAINING_STAGES,
    RunSettings,
    protocol_fingerprint,
    resolve_settings,
)
from rssc_mlflow.tracking import predictions, recovery, registry, runs
from rssc_mlflow.tracking.recovery import REPLICAS_PARAM
from rssc_mlflow.training import fit as fit_lib
from rssc_mlflow.training import metrics as metrics_lib
from rssc_mlflow.training import progress, speed, transfer
from rssc_mlflow.training.schedule import make_schedule, peak_lr_for

FEATURES_ARTIFACT = "features/features.npz"
# The spec digest of a user's dataset (`rssc datasets add`) a run trained or evaluated on.
TAG_DATASET_SPEC = "rssc.dataset_spec_digest"
BN_MOMENTUM_KERAS = 0.99  # keras.layers.BatchNormalization's default, used by the paper profile
FEATURE_ORDER = "pipeline-order"


@dataclasses.dataclass
class RunResult:
    """What a command returns: the run and its final metrics (fractions in [0, 1])."""

    run_id: str
    stage: str
    metrics: dict[str, float]
    synthetic: bool
    model_name: str = ""
    model_version: str = ""


# --- Inputs -------------------------------------------------------------------------------------


def _same_images(a: str, b: str) -> bool:
    """MLRSNet's single-/multi-label variants and subsets are the same images."""
    return get_spec(a).family == get_spec(b).family


def _check_pair(source: str, target: str) -> None:
    src = source.partition("+")[2] if "+" in source else source
    if src in CATALOG and _same_images(src, target):
        raise RsscError(
            f"Source {source!r} and target {target!r} share their images: the protocol never "
            "uses one dataset as both source and target in the same experiment."
        )


@dataclasses.dataclass
class _Data:
    prepared: PreparedDataset
    split: splits.SplitManifest
    spec: DatasetSpec

    @property
    def label_key(self) -> str:
        return "labels" if self.spec.multilabel else "label"


def _load_data(key: str, role: str, settings: RunSettings) -> _Data:
    prepared = load_prepared(key)
    split = splits.get_split(prepared, role, seed=settings.seed,
                             split_file=Path(settings.split_file) if settings.split_file else None)
    if not split.train or not split.test:
        raise RsscError(
            f"The {role} split of {key} has {len(split.train)} training and {len(split.test)} "
            f"test images: {len(prepared.records)} images are too few for a {role} split "
            "(80/20 or 20/80 per class). Prepare more images per class."
        )
    return _Data(prepared, split, prepared.spec)


def _datasets(data: _Data, settings: RunSettings, *, cache_root: Path):
    """(training epochs, test batches) for a split: `fit`'s `train` and the evaluation pipeline.

    Images are decoded and resized once per run and cached; a disk cache (data larger than
    RSSC_CACHE_MEMORY_MB) goes under `cache_root`, one folder per run (see pipeline's
    `cache_path`).
    """
    examples = data.prepared.examples()
    common = _pipeline_args(data, settings)
    train = functools.partial(
        pipeline.make_dataset, pipeline.filter_examples(examples, data.split.train),
        training=True, cache_path=cache_root / "train", num_examples=len(data.split.train), **common)
    test = pipeline.make_dataset(
        pipeline.filter_examples(examples, data.split.test), training=False,
        cache_path=cache_root / "test", num_examples=len(data.split.test), **common)
    return train, test


def _feature_datasets(data: _Data, settings: RunSettings):
    """(train, test) evaluation pipelines for feature extraction: one pass each, so no cache."""
    examples = data.prepared.examples()
    return tuple(
        pipeline.make_dataset(pipeline.filter_examples(examples, files), training=False,
                              cache="none", num_examples=len(files),
                              **_pipeline_args(data, settings))
        for files in (data.split.train, data.split.test))


def _pipeline_args(data: _Data, settings: RunSettings) -> dict[str, Any]:
    """What every pipeline of a run shares: crop, batch, seed, label key, and uint8 batches:
    the model preprocesses them on the accelerator (`models.with_preprocessing`)."""
    return dict(crop=settings.image_size, batch_size=settings.batch_size,
                preprocessing=None, seed=settings.seed, label_key=data.label_key,
                autotune=speed.data_autotune())


def _data_params(data: _Data, settings: RunSettings) -> dict[str, str]:
    """How the run's images were prepared and, for training, shuffled: the prepare switches
    (also in the dataset digest) and whether each epoch is a full permutation of the training
    images or a window over a disk cache's fixed order (docs/PERFORMANCE.md, memory)."""
    options = data.prepared.options
    params = {"dataset_options": ",".join(f"{k}={str(v).lower()}" for k, v in
                                          sorted(options.items())) or "default"}
    if settings.stage in TRAINING_STAGES:
        n = len(data.split.train)
        buffer = pipeline.train_shuffle_buffer(n, settings.image_size)
        params.update(shuffle_buffer=str(buffer), shuffle_full=str(buffer >= n).lower())
    return params


def _record_inputs(data: _Data, settings: RunSettings, fingerprint: str, preprocessing: str,
                   source: registry.ResolvedSource, *, log_model: bool | None = None) -> None:
    """Params, the tags that identify the result, inputs and the split manifest."""
    params = settings.as_params(peak_lr=_rates(settings, source)[0], preprocessing=preprocessing)
    if log_model is not None:  # finetune: whether the trained model is logged
        params["log_model"] = str(log_model).lower()
    params.update(_data_params(data, settings))
    runs.log_params(params)
    tags = {
        runs.TAG_PROFILE: settings.profile, runs.TAG_SEED: str(settings.seed),
        runs.TAG_SYNTHETIC: str(_synthetic(data, source)).lower(),
        runs.TAG_FINGERPRINT: fingerprint, runs.TAG_DATASET_DIGEST: data.prepared.manifest_digest,
        # The cell `summarize --pool-precision` puts it in: precision and replicas left out.
        runs.TAG_FINGERPRINT_POOLED: _fingerprint(settings, source, _synthetic(data, source),
                                                  pool_precision=True),
        runs.TAG_SPLIT_DIGEST: data.split.digest, runs.TAG_PREPROCESSING: preprocessing,
    }
    synthetic = _synthetic(data, source)
    if synthetic:
        tags[runs.TAG_SYNTHETIC_FLAG] = "yes"
    tags[runs.TAG_NOTE] = _note(settings, source, synthetic, "running")
    if source is not None:
        tags.update({runs.TAG_LINEAGE_NAME: source.model_name or source.kind,
                     runs.TAG_LINEAGE_VERSION: source.version,
                     runs.TAG_LINEAGE_RUN: source.run_id, runs.TAG_LINEAGE_URI: source.uri})
        if source.note:
            tags["rssc.lineage.note"] = source.note
        # Which ImageNet weights the lineage started from (path, sha256, Keras's or not).
        tags.update({f"rssc.lineage.{k}": v for k, v in source.imagenet_weights.items()})
    if data.spec.origin == "user":
        tags[TAG_DATASET_SPEC] = data.spec.spec_digest
    mlflow.set_tags(tags)
    for part, files in (("train", data.split.train), ("test", data.split.test)):
        runs.log_dataset_input(f"{data.spec.key}-{data.split.role}-{part}", data.prepared.path,
                               digest=data.split.digest, context="training" if part == "train" else "evaluation",
                               tags={"images": str(len(files)), "split_role": data.split.role,
                                     "dataset_digest": data.prepared.manifest_digest})
    mlflow.log_dict(json.loads(data.split.to_json()), f"split/{data.spec.key}-{data.split.role}.json")
    if data.prepared.synthetic:
        runs.announce(runs.SYNTHETIC_BANNER)
    elif source.synthetic:
        runs.announce(runs.SYNTHETIC_WEIGHTS_BANNER)


def _test_files(data: _Data) -> np.ndarray:
    """The test images' file names in the evaluation pipeline's order (not the split's)."""
    return predictions.evaluation_files(data.prepared.examples(), data.split.test)


PRIOR_METRIC = "test_prior_f1_micro"  # multi-label: the label-prior baseline's F1-micro


def _train_labels(data: _Data) -> np.ndarray:
    """The multi-hot labels of the split's training images."""
    train = set(data.split.train)
    return np.array([r.labels for r in data.prepared.records if r.filename in train])


def _note(settings: RunSettings, source: registry.ResolvedSource, synthetic: bool,
          result: str) -> str:
    return runs.run_note(stage=settings.stage, source=settings.source, target=settings.target,
                         profile=settings.profile, seed=settings.seed,
                         lineage=source.describe(), synthetic=synthetic, result=result)


def _synthetic(data: _Data, source: registry.ResolvedSource) -> bool:
    """A result is synthetic when its images are, or when the weights it starts from are."""
    return data.prepared.synthetic or source.synthetic


def _figure_title(settings: RunSettings) -> str:
    label = runs.run_name(settings.stage, settings.source, settings.target)
    return f"{label} (profile {settings.profile}, seed {settings.seed})"


def _log_evaluation(data: _Data, y_true: np.ndarray, probs: np.ndarray, files: np.ndarray, *,
                    title: str, synthetic: bool) -> dict[str, float]:
    """Final metrics (`test_*`), a per-class report, single-label a confusion matrix PNG, and
    the per-image predictions (`files[i]` is the image of row i)."""
    spec = data.spec
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        predictions.write_artifact(tmp, probs, y_true, files, split_digest=data.split.digest,
                                   dataset_digest=data.prepared.manifest_digest)
        if spec.multilabel:
            result = metrics_lib.multi_label_metrics(y_true, probs)
            final = {f"test_{k}": float(v) for k, v in result.items()
                     if k.startswith("f1_") or k in ("map", "subset_accuracy", "hamming_loss")}
            final[PRIOR_METRIC] = metrics_lib.label_prior_f1(_train_labels(data), y_true)
        else:
            result = metrics_lib.single_label_metrics(y_true, probs, spec.classes)
            final = {"test_accuracy": result["accuracy"]}
            metrics_lib.confusion_matrix_png(
                y_true, result["y_pred"], spec.classes, tmp / "confusion_matrix.png",
                title=f"{title}: test accuracy {100 * result['accuracy']:.2f}%, "
                      f"{len(y_true)} images", synthetic=synthetic)
        report = metrics_lib.classification_report_text(y_true, probs, task=spec.task,
                                                        class_names=spec.classes)
        (tmp / "per_class_report.txt").write_text(report)
        mlflow.log_artifacts(str(tmp), artifact_path="evaluation")
    mlflow.set_tag(predictions.TAG_PREDICTIONS, predictions.ARTIFACT)
    mlflow.log_metrics(final)
    return final


def gpu_warning(profile: str) -> str:
    """The warning for a `paper` run on a machine where TensorFlow sees no GPU, else ""."""
    import tensorflow as tf

    if profile != "paper" or tf.config.list_physical_devices("GPU"):
        return ""
    prof = get_profile(profile)
    return (f"WARNING: profile paper ({prof.epochs} epochs at {prof.crop} px) and TensorFlow "
            "sees no GPU on this machine: this run computes on the CPU and will take hours "
            "or days. On a GPU machine install the GPU extra (pip install -e '.[gpu]'); for a "
            "quick run on a CPU use --profile demo.")


def _announce_source(settings: RunSettings, source: registry.ResolvedSource) -> None:
    """Before any work: what the run starts from, any note about it, and the GPU warning."""
    runs.announce(f"source: {source.describe()}")
    if source.note:
        runs.announce(f"note: {source.note}")
    warning = gpu_warning(settings.profile)
    if warning:
        runs.announce(warning)


def _rates(settings: RunSettings, source: registry.ResolvedSource) -> tuple[float, int]:
    """(peak learning rate, warm-up epochs) a stage uses under the schedule rule."""
    if settings.stage == "extract":
        return 0.0, 0
    if settings.stage == "probe":
        return (0.0 if settings.solver == "lbfgs" else settings.lr or PROBE_LR), 0
    # Any pre-trained start (ImageNet or a registered backbone) peaks at 3e-4, scratch at 3e-3.
    peak = settings.lr or (peak_lr_for("pretrained" if source.pretrained else "scratch")
                           * get_profile(settings.profile).lr_scale)
    return peak, min(settings.epochs, get_profile(settings.profile).warmup_epochs)


def _user_spec_digest(settings: RunSettings) -> str:
    """The spec digest of the user's dataset a run reads ("" for a catalog dataset)."""
    key = settings.source if settings.stage in SOURCE_STAGES else settings.target
    spec = get_spec(key)
    return spec.spec_digest if spec.origin == "user" else ""


def _fingerprint(settings: RunSettings, source: registry.ResolvedSource, synthetic: bool,
                 replicas: int = 1, *, pool_precision: bool = False) -> str:
    """`pool_precision`: precision and replicas left out, the upstream's pooled key too."""
    peak_lr, warmup = _rates(settings, source)
    upstream = source.pooled_fingerprint if pool_precision else source.fingerprint
    return protocol_fingerprint(settings, preprocessing=source.preprocessing, peak_lr=peak_lr,
                                synthetic=synthetic, warmup_epochs=warmup, upstream=upstream,
                                dataset_spec=_user_spec_digest(settings), replicas=replicas,
                                pool_precision=pool_precision)


def batch_split(batch_size: int, replicas: int) -> dict[str, int]:
    """The global batch (the profile's or --batch-size) split over the replicas: each replica
    takes an equal share of every batch, as MirroredStrategy splits what the dataset yields."""
    if batch_size % replicas:
        raise RsscError(
            f"The global batch size {batch_size} does not split evenly over {replicas} "
            f"replicas (GPUs). Received: batch_size={batch_size}, replicas={replicas}. Pass "
            f"--batch-size a multiple of {replicas}, or give the run a number of GPUs that "
            f"divides {batch_size} (CUDA_VISIBLE_DEVICES, or reproduce --gpus-per-run).")
    return {REPLICAS_PARAM: replicas, "global_batch_size": batch_size,
            "per_replica_batch_size": batch_size // replicas}


def fingerprint_for(stage: str, *, source: str, target: str = "", replicas: int = 1,
                    **params: Any) -> str:
    """The protocol fingerprint a run of `stage` would get, without running it (for `reproduce`).

    Raises like the command would (dataset not prepared, source not registered yet).
    `replicas`: the GPUs the run will train on (reproduce knows them without TensorFlow).
    """
    settings = resolve_settings(stage, source=source, target=target, **params)
    key = settings.target or settings.source
    reference = {"pretrain": "scratch", "adapt": "imagenet"}.get(stage, settings.source)
    resolved = registry.resolve_source(reference, profile=settings.profile,
                                       preprocessing=settings.preprocessing,
                                       allow_any_version=settings.allow_any_version)
    return _fingerprint(settings, resolved, load_prepared(key).synthetic or resolved.synthetic,
                        replicas)


# --- Training stages -------------------------------------------------------------------------
#
# pretrain, adapt and finetune share `_train`, in the paper's steps: resolve the inputs, open
# the run, train, evaluate, log. What lets an interrupted run continue (the run lock, resume,
# results kept when the server goes away) is tracking/recovery.py.


@dataclasses.dataclass
class _Training:
    """A training run's inputs, all resolved before its MLflow run is opened."""

    settings: RunSettings
    data: _Data
    source: registry.ResolvedSource
    profile: Profile
    strategy: Any  # tf.distribute.Strategy
    policy: str  # Keras's dtype policy
    batches: dict[str, int]  # batch_split's
    fingerprint: str
    data_key: str
    display_source: str  # the run name's source: finetune's source, else the dataset

    @property
    def synthetic(self) -> bool:
        return _synthetic(self.data, self.source)

    @property
    def backups(self) -> bool:
        """Whether the profile keeps a backup per epoch (what `--resume` continues from)."""
        return self.profile.checkpoint_every_epoch

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.data.split.train) // self.settings.batch_size)


def _train(settings: RunSettings, *, data_key: str, role: str, reference: str,
           register_as: str | None, resume: str | None, log_model: bool) -> RunResult:
    """Shared body of pretrain, adapt and finetune: resolve, train, evaluate, log."""
    job = _resolve_training(settings, data_key=data_key, role=role, reference=reference,
                            resume=resume)
    with runs.tracked_run(settings.stage, job.display_source, settings.target,
                          resume_run_id=resume) as run, contextlib.ExitStack() as hold:
        run_id = run.info.run_id
        checkpoint_dir = _start_training_run(job, run_id, hold, log_model=log_model)
        train, test_ds, cache_root = _training_pipelines(job, run_id)
        trainer = _build_trainer(job)
        model = models.unwrap(trainer)  # what is saved and logged: float32 input, no wrapper
        kept = checkpoint_dir / recovery.UNLOGGED
        if resume and recovery.has_unlogged(kept):  # trained before the server went away
            probs, y_true, files = recovery.load_unlogged(kept, model, run_id)
        else:
            _fit(job, trainer, train, test_ds, checkpoint_dir, run_id, resume=resume)
            probs, y_true, files = _evaluate(job, trainer, test_ds)
        keep = functools.partial(_keep_unlogged, job, model, probs, y_true, files)
        with recovery.results_kept_if_server_gone(settings.stage, run_id, kept, keep):
            final, name, version = _log_results(model, y_true, probs, files, job,
                                                register_as=register_as, log_model=log_model)
        mlflow.set_tag(runs.TAG_NOTE, _note(settings, job.source, job.synthetic,
                                            _format_metrics(final)))
        runs.announce(f"done: {_format_metrics(final)}")
    for folder in (checkpoint_dir, cache_root):  # the run is FINISHED: no resume needed
        shutil.rmtree(folder, ignore_errors=True)
    return RunResult(run_id, settings.stage, final, job.synthetic, name, version)


def _resolve_training(settings: RunSettings, *, data_key: str, role: str, reference: str,
                      resume: str | None) -> _Training:
    """The split, the weights to start from, the strategy and the fingerprint; bad input is
    refused here, before any run exists."""
    data = _load_data(data_key, role, settings)
    source = registry.resolve_source(reference, profile=settings.profile,
                                     preprocessing=settings.preprocessing,
                                     allow_any_version=settings.allow_any_version)
    # The strategy before the run opens: its replica count joins the fingerprint, and a batch
    # it cannot split is refused before any run exists.
    policy = models.set_precision(settings.precision)
    strategy = models.make_strategy(settings.strategy)
    batches = batch_split(settings.batch_size, strategy.num_replicas_in_sync)
    recovery.check_resume_replicas(resume, batches[REPLICAS_PARAM])
    fingerprint = _fingerprint(settings, source, _synthetic(data, source),
                               batches[REPLICAS_PARAM])
    _announce_source(settings, source)
    display_source = settings.source if settings.stage == "finetune" else data_key
    return _Training(settings, data, source, get_profile(settings.profile), strategy, policy,
                     batches, fingerprint, data_key, display_source)


def _start_training_run(job: _Training, run_id: str, hold: contextlib.ExitStack, *,
                        log_model: bool) -> Path:
    """Log the run's inputs, hold its checkpoint folder till the run ends (returned), and seed
    this process: the same run whatever ran before it."""
    settings, profile = job.settings, job.profile
    _record_inputs(job.data, settings, job.fingerprint, job.source.preprocessing, job.source,
                   log_model=log_model if settings.stage == "finetune" else None)
    runs.log_params({"bn_momentum": BN_MOMENTUM_KERAS if profile.bn_momentum is None
                     else profile.bn_momentum,
                     "zero_init_residual": str(profile.zero_init_residual).lower(),
                     **job.batches})
    checkpoint_dir = config.checkpoint_dir() / run_id
    mlflow.set_tag(runs.TAG_CHECKPOINT_DIR, str(checkpoint_dir))
    hold.enter_context(recovery.training_lock(checkpoint_dir, run_id))
    hold.enter_context(recovery.note_on_interrupt(settings.stage, run_id, checkpoint_dir,
                                                  settings.epochs, kept=job.backups))
    mlflow.set_tag("rssc.dtype_policy", job.policy)
    speed.set_random_seed(settings.seed)
    if config.op_determinism():
        models.enable_op_determinism()
        mlflow.set_tag("rssc.op_determinism", "true")
    return checkpoint_dir


def _training_pipelines(job: _Training, run_id: str):
    """(training epochs, test batches, their cache folder), and what the run will train on."""
    settings, data = job.settings, job.data
    cache_root = config.cache_dir() / "runs" / run_id
    train, test_ds = _datasets(data, settings, cache_root=cache_root)
    n_train, n_test = len(data.split.train), len(data.split.test)
    epochs = f"{settings.epochs} epoch" + ("s" if settings.epochs != 1 else "")
    runs.announce(f"{runs.run_name(settings.stage, job.display_source, settings.target)}: "
                  f"{n_train} training images, {n_test} evaluation images, {epochs}, "
                  f"run {run_id}")
    evaluation = (f", and {n_test} evaluation images after each epoch"
                  if job.profile.validate_every_epoch else "")
    runs.announce(f"{settings.epochs * n_train:,} image-steps ({epochs} x "
                  f"{n_train} images at {settings.image_size} px, {job.steps_per_epoch} steps "
                  f"of {settings.batch_size} per epoch){evaluation}")
    return train, test_ds, cache_root


def _build_trainer(job: _Training):  # -> keras.Model
    """A fresh compiled ResNet-50, or a pooled one reset to the same weights, built in the
    distribution strategy's scope."""
    settings, spec = job.settings, job.data.spec
    with job.strategy.scope():
        return speed.acquire(spec.num_classes, spec.task, crop=settings.image_size,
                                  source=job.source, seed=settings.seed,
                                  run_eagerly=job.profile.run_eagerly,
                                  preprocessing=job.source.preprocessing,
                                  **job.profile.model_options)


def _fit(job: _Training, trainer, train, test_ds, checkpoint_dir: Path, run_id: str, *,
         resume: str | None) -> None:
    """Train under the stage's schedule, logging each epoch's metrics (once, when resumed),
    with a backup per epoch when the profile keeps them."""
    settings = job.settings
    peak_lr, warmup = _rates(settings, job.source)
    schedule = make_schedule(settings.schedule_steps, peak_lr=peak_lr,
                             n_train=len(job.data.split.train), batch_size=settings.batch_size,
                             epochs=settings.epochs, warmup_epochs=warmup)
    with recovery.server_gone_during_training(settings.stage, run_id, checkpoint_dir,
                                              backups=job.backups):
        fit_lib.fit(
            trainer, train, test_ds if job.profile.validate_every_epoch else None,
            epochs=settings.epochs, steps_per_epoch=job.steps_per_epoch, schedule=schedule,
            checkpoint_dir=checkpoint_dir if job.backups else None,
            log_epoch=lambda epoch, values: mlflow.log_metrics(values, step=epoch),
            already_logged=recovery.already_logged_epochs(run_id) if resume else None,
            callbacks=[progress.DurationEstimate(settings.batch_size, runs.announce)])


def _evaluate(job: _Training, trainer, test_ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, labels, image files) of the test split, in the pipeline's order."""
    probs, y_true = fit_lib.predict_with_labels(trainer, test_ds)
    return probs, y_true, _test_files(job.data)


def _keep_unlogged(job: _Training, model, probs: np.ndarray, y_true: np.ndarray,
                   files: np.ndarray, folder: Path) -> None:
    """Keep a trained run's results under `folder` when the server cannot take them."""
    recovery.keep_unlogged(folder, model, probs, y_true, files,
                           split_digest=job.data.split.digest,
                           dataset_digest=job.data.prepared.manifest_digest)


def _log_results(model, y_true: np.ndarray, probs: np.ndarray, files: np.ndarray,
                 job: _Training, *, register_as: str | None,
                 log_model: bool) -> tuple[dict[str, float], str, str]:
    """Final metrics and evaluation artifacts, then the model (registered or logged)."""
    settings, data, source = job.settings, job.data, job.source
    final = _log_evaluation(data, y_true, probs, files, title=_figure_title(settings),
                            synthetic=job.synthetic)
    name = version = ""
    if register_as or log_model:
        models.set_precision("float32")  # logging must not depend on the training policy
        card = registry.ModelCard(spec=data.spec, crop=settings.image_size,
                                  preprocessing=source.preprocessing, synthetic=job.synthetic,
                                  metrics=final, test_images=len(data.split.test),
                                  split_role=data.split.role,
                                  imagenet_weights=source.imagenet_weights)
        if register_as:
            name, version = registry.register(
                model, card=card, source_key=job.data_key, init=register_as,
                profile=settings.profile, fingerprint=job.fingerprint,
                pooled_fingerprint=_fingerprint(settings, source, job.synthetic,
                                                pool_precision=True))
            runs.announce(f"registered {name} version {version} as @{settings.profile}")
        else:
            registry.log_model(model, card=card)
    return final, name, version


can_resume = recovery.can_resume  # for `reproduce`, which imports commands already


def _format_metrics(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={100 * v:.2f}%" if k != "test_hamming_loss" else f"{k}={v:.4f}"
                     for k, v in values.items())


def _resume_or(stage: str, resume: str | None, **params: Any) -> RunSettings:
    """The settings of the run `resume` continues, else those `params` resolve to."""
    if resume:
        return recovery.settings_for_resume(stage, resume)
    return resolve_settings(stage, **params)


def _dataset_key(key: str) -> str:
    return get_spec(key).key  # a DatasetError naming the known keys when it is not one


def pretrain(source: str, *, resume: str | None = None, log_model: bool = True,
             **params: Any) -> RunResult:
    """Train ResNet-50 from scratch on `source`'s 80%, evaluate on its 20%, register it."""
    settings = _resume_or("pretrain", resume, source=source, **params)
    key = _dataset_key(settings.source)
    return _train(settings, data_key=key, role="source", reference="scratch",
                  register_as="scratch", resume=resume, log_model=log_model)


def adapt(source: str, *, resume: str | None = None, log_model: bool = True,
          **params: Any) -> RunResult:
    """Fine-tune the ImageNet ResNet-50 on `source`'s 80% (domain-adaptive pre-training)."""
    settings = _resume_or("adapt", resume, source=source, **params)
    key = _dataset_key(settings.source)
    return _train(settings, data_key=key, role="source", reference="imagenet",
                  register_as="imagenet", resume=resume, log_model=log_model)


def finetune(source: str, target: str, *, resume: str | None = None, log_model: bool = True,
             **params: Any) -> RunResult:
    """Fine-tune the whole network from `source` on `target`'s 20%, test on its 80%."""
    settings = _resume_or("finetune", resume, source=source, target=target, **params)
    key = _dataset_key(settings.target)
    _check_pair(settings.source, key)
    return _train(settings, data_key=key, role="target", reference=settings.source,
                  register_as=None, resume=resume, log_model=log_model)


# --- Training without a run ----------------------------------------------------------------


@dataclasses.dataclass
class Trained:
    """A network `train_without_run` trained, and how it did on its held-out split."""

    model: Any  # keras.Model: the classifier, float32 input (`models.unwrap`)
    test_accuracy: float
    train_images: int
    test_images: int


def train_without_run(settings: RunSettings, *, preprocessing: str, cache_name: str,
                      progress: Callable[[str], None],
                      log_epoch: Callable[[int, dict[str, float]], None]) -> Trained:
    """Train a ResNet-50 from scratch on `settings.source`'s 80% and test it on its 20%, with
    no MLflow run: `rssc demo` makes its ImageNet stand-in so, which no grid run must find.

    The images are cached under the cache folder's `runs/<cache_name>`, removed afterwards.
    """
    data = _load_data(settings.source, "source", settings)
    profile = get_profile(settings.profile)
    models.set_precision("float32")
    speed.set_random_seed(settings.seed)
    cache_root = config.cache_dir() / "runs" / cache_name
    train, test_ds = _datasets(data, settings, cache_root=cache_root)  # uint8
    steps = -(-len(data.split.train) // settings.batch_size)
    synthetic = "synthetic " if data.prepared.synthetic else ""
    progress(f"  training ResNet-50 from scratch on the {synthetic}{settings.source}: "
             f"{len(data.split.train)} images, {settings.epochs} epochs, seed {settings.seed}")
    model = speed.acquire(
        data.spec.num_classes, data.spec.task, crop=settings.image_size,
        source=registry.resolve_source("scratch", profile=settings.profile), seed=settings.seed,
        run_eagerly=profile.run_eagerly, preprocessing=preprocessing, **profile.model_options)
    schedule = fit_lib.make_schedule(peak_lr=peak_lr_for("scratch") * profile.lr_scale,
                                     steps_per_epoch=steps, epochs=settings.epochs,
                                     warmup_epochs=min(settings.epochs, profile.warmup_epochs))
    fit_lib.fit(model, train, None, epochs=settings.epochs, steps_per_epoch=steps,
                schedule=schedule, checkpoint_dir=None, verbose=0, log_epoch=log_epoch)
    probs, labels = fit_lib.predict_with_labels(model, test_ds)
    shutil.rmtree(cache_root, ignore_errors=True)
    return Trained(models.unwrap(model), float((probs.argmax(axis=1) == labels).mean()),
                   len(data.split.train), len(data.split.test))


# --- Features and the probe -------------------------------------------------------------------


def _feature_key(source: registry.ResolvedSource, split: splits.SplitManifest,
                 preprocessing: str, crop: int) -> str:
    """Features are reusable when the model version, split, preprocessing and crop match."""
    weights_id = source.uri
    if source.kind in ("imagenet", "file") and source.local_file is not None:
        weights_id += ":" + registry.file_digests(source.local_file)[0]
    # FEATURE_ORDER: features logged before their file names followed the pipeline's order
    # (they listed the split's order) are not reused.
    blob = json.dumps([weights_id, source.version, split.digest, preprocessing, crop,
                       FEATURE_ORDER])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _find_features(feature_key: str) -> tuple[str, Path] | None:
    """A FINISHED run that already holds features with this key, downloaded."""
    found = mlflow.search_runs(
        search_all_experiments=True, output_format="list", max_results=5,
        filter_string=f"tags.`{runs.TAG_FEATURE_KEY}` = '{feature_key}' and "
                      "attributes.status = 'FINISHED'")
    for run in found:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                       artifact_path=FEATURES_ARTIFACT)
            return run.info.run_id, Path(path)
        except Exception:  # noqa: BLE001 - artifact missing or unreachable: recompute
            continue
    return None


def _features(settings: RunSettings, data: _Data, source: registry.ResolvedSource,
              preprocessing: str) -> dict[str, np.ndarray]:
    """Load features of the target split from an earlier run, or extract and log them."""
    key = _feature_key(source, data.split, preprocessing, settings.image_size)
    mlflow.set_tag(runs.TAG_FEATURE_KEY, key)
    cached = _find_features(key)
    if cached:
        run_id, path = cached
        mlflow.set_tag("rssc.features_from_run", run_id)
        runs.announce(f"reusing features of run {run_id}")
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    models.set_precision(settings.precision)
    backbone = speed.feature_extractor(crop=settings.image_size, source=source,
                                            num_classes=data.spec.num_classes, task=data.spec.task,
                                            preprocessing=preprocessing)
    train_ds, test_ds = _feature_datasets(data, settings)
    runs.announce(f"extracting features of {len(data.split.train) + len(data.split.test)} images")
    train_x, train_y = transfer.extract_features(backbone, train_ds)
    test_x, test_y = transfer.extract_features(backbone, test_ds)
    models.set_precision("float32")
    # Rows are in the pipelines' order, which is the prepared dataset's, not the split's.
    train_files = predictions.evaluation_files(data.prepared.examples(), data.split.train)
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
              "train_files": train_files, "test_files": _test_files(data)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(FEATURES_ARTIFACT).name
        np.savez(path, **arrays)
        mlflow.log_artifact(str(path), artifact_path=str(Path(FEATURES_ARTIFACT).parent))
    return arrays


def _transfer_setup(stage: str, source: str, target: str, params: dict[str, Any]):
    settings = resolve_settings(stage, source=source, target=target, **params)
    key = _dataset_key(settings.target)
    _check_pair(settings.source, key)
    if settings.source == "scratch":
        raise RsscError(f"`{stage}` needs a pre-trained source: features of a random network "
                        "are not part of the protocol. Use `finetune --source scratch` for the "
                        "from-scratch baseline.")
    data = _load_data(key, "target", settings)
    resolved = registry.resolve_source(settings.source, profile=settings.profile,
                                       preprocessing=settings.preprocessing,
                                       allow_any_version=settings.allow_any_version)
    _announce_source(settings, resolved)
    return settings, data, resolved


def extract(source: str, target: str, **params: Any) -> RunResult:
    """Write 2048-d features of `target`'s split (train and test) as a run artifact."""
    settings, data, resolved = _transfer_setup("extract", source, target, params)
    fingerprint = _fingerprint(settings, resolved, _synthetic(data, resolved))
    with runs.tracked_run("extract", settings.source, settings.target) as run:
        _record_inputs(data, settings, fingerprint, resolved.preprocessing, resolved)
        arrays = _features(settings, data, resolved, resolved.preprocessing)
        mlflow.log_metrics({"train_images": len(arrays["train_x"]),
                            "test_images": len(arrays["test_x"])})
        mlflow.set_tag(runs.TAG_NOTE, _note(
            settings, resolved, _synthetic(data, resolved),
            f"2048-d features of {len(arrays['train_x'])} training and {len(arrays['test_x'])} "
            f"test images ({FEATURES_ARTIFACT})"))
    return RunResult(run.info.run_id, "extract", {}, _synthetic(data, resolved))


def probe(source: str, target: str, **params: Any) -> RunResult:
    """Train a linear classifier on frozen features of `source` for `target` (Fig. 1, Table III)."""
    settings, data, resolved = _transfer_setup("probe", source, target, params)
    fingerprint = _fingerprint(settings, resolved, _synthetic(data, resolved))
    with runs.tracked_run("probe", settings.source, settings.target) as run:
        _record_inputs(data, settings, fingerprint, resolved.preprocessing, resolved)
        arrays = _features(settings, data, resolved, resolved.preprocessing)
        result = transfer.train_probe(
            arrays["train_x"], arrays["train_y"], arrays["test_x"], task=data.spec.task,
            num_classes=data.spec.num_classes, solver=settings.solver,
            standardize=settings.standardize, epochs=settings.epochs,
            batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed)
        runs.log_history(run.info.run_id, result.history)
        final = _log_evaluation(data, arrays["test_y"], result.test_probs, arrays["test_files"],
                                title=_figure_title(settings), synthetic=_synthetic(data, resolved))
        mlflow.set_tag(runs.TAG_NOTE, _note(settings, resolved, _synthetic(data, resolved),
                                            _format_metrics(final)))
        runs.announce(f"done: {_format_metrics(final)}")
    return RunResult(run.info.run_id, "probe", final, _synthetic(data, resolved))
