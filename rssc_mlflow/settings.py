"""The effective parameters of one run: a profile's defaults, overridden by what the user passed.

Every entry point (CLI, MLproject, library) builds a `RunSettings` through `resolve_settings`,
so validation and defaults live in one place and the protocol fingerprint is computed the same
way everywhere.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from typing import Any

from rssc_mlflow import protocol
from rssc_mlflow.errors import RsscError


class Stage(enum.StrEnum):
    """The protocol's stages. Members are plain strings (`Stage.PROBE == "probe"`), the names
    that MLflow tags, CLI commands and MLproject entry points carry, so stored runs match."""

    PRETRAIN = "pretrain"
    ADAPT = "adapt"
    EXTRACT = "extract"
    PROBE = "probe"
    FINETUNE = "finetune"

    @property
    def short(self) -> str:
        """The stage in a run's UI name, where about 24 characters fit (tracking.runs)."""
        return _SHORT_NAMES[self]


_SHORT_NAMES = {Stage.PRETRAIN: "pre", Stage.ADAPT: "adapt", Stage.EXTRACT: "feat",
                Stage.PROBE: "probe", Stage.FINETUNE: "ft"}

# The groupings, each defined once, in the order plans and tables list them.
STAGES: tuple[Stage, ...] = tuple(Stage)
# Stages that train (and so resume from a checkpoint with `rssc STAGE --resume RUN_ID`).
TRAINING_STAGES: tuple[Stage, ...] = (Stage.PRETRAIN, Stage.ADAPT, Stage.FINETUNE)
# Stages that start from a registered source and evaluate on a target.
TRANSFER_STAGES: tuple[Stage, ...] = (Stage.EXTRACT, Stage.PROBE, Stage.FINETUNE)
# Stages that train on their source and have no target; the others evaluate on a target.
SOURCE_STAGES: tuple[Stage, ...] = (Stage.PRETRAIN, Stage.ADAPT)
# Stages whose runs fill the paper's tables and figures (extract only feeds probe).
RESULT_STAGES: tuple[Stage, ...] = (Stage.PRETRAIN, Stage.ADAPT, Stage.FINETUNE, Stage.PROBE)
# The two ways a backbone is judged on a target: the transfer stages that are results.
TRANSFER_RESULT_STAGES: tuple[Stage, ...] = tuple(
    s for s in TRANSFER_STAGES if s in RESULT_STAGES)
PRECISIONS = ("float32", "mixed")
STRATEGIES = ("auto", "mirrored", "multiworker")
SOLVERS = ("adam", "lbfgs")
# Bump when the meaning of a parameter changes, so old and new results never share a cell.
FINGERPRINT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RunSettings:
    stage: str
    source: str
    target: str
    profile: str
    epochs: int
    batch_size: int
    image_size: int  # the crop side; images are resized to resize_for_crop(image_size) first
    seed: int
    lr: float | None  # None: the schedule rule (3e-3 scratch, 3e-4 pre-trained; 1e-3 probe)
    preprocessing: str | None  # None: what the model's lineage says
    precision: str
    strategy: str
    split_file: str | None
    solver: str
    standardize: bool
    # A registered source without a version aliased @profile: take the newest (else an error).
    allow_any_version: bool = False
    # How warm-up and decay steps are counted: the paper's (per batch run) or the authors' code.
    schedule_steps: str = "paper"

    @property
    def resize(self) -> int:
        return protocol.resize_for_crop(self.image_size)

    def as_params(self, *, peak_lr: float, preprocessing: str) -> dict[str, str]:
        """The parameters a run logs: the values it used, under their own names, and only
        those that apply to its stage. The same whichever way the run started (CLI, library,
        `mlflow run`), because `mlflow run` logs its declared parameters itself.

        `peak_lr` and `preprocessing` are the resolved values (`lr` and `preprocessing` are
        None when left to the schedule rule and the model's lineage).
        """
        training = self.stage in TRAINING_STAGES
        params: dict[str, Any] = {
            "stage": self.stage, "source": self.source, "profile": self.profile,
            "seed": self.seed, "batch_size": self.batch_size, "image_size": self.image_size,
            "resize": self.resize, "preprocessing": preprocessing, "precision": self.precision,
        }
        if self.target:
            params["target"] = self.target
        if self.stage != "extract":
            params["epochs"] = self.epochs
        if training or (self.stage == "probe" and self.solver == "adam"):
            params["lr"] = peak_lr
        if training:
            params.update(strategy=self.strategy, schedule_steps=self.schedule_steps)
        if self.stage == "probe":
            params.update(solver=self.solver, standardize=self.standardize)
        if self.stage in TRANSFER_STAGES:  # the stages that resolve a registered source
            params["allow_any_version"] = self.allow_any_version
        if self.split_file:
            params["split_file"] = self.split_file
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}


def _positive(name: str, value: int) -> int:
    if value is None or int(value) <= 0:
        raise RsscError(f"Invalid parameter {name}={value!r}: it must be a positive integer.")
    return int(value)


def resolve_settings(
    stage: str,
    *,
    source: str,
    target: str = "",
    profile: str = protocol.DEFAULT_PROFILE,
    epochs: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    seed: int = protocol.SEED,
    lr: float | None = None,
    preprocessing: str | None = None,
    precision: str = "float32",
    strategy: str = "auto",
    split_file: str | None = None,
    solver: str = "adam",
    standardize: bool = False,
    allow_any_version: bool = False,
    schedule_steps: str = "paper",
) -> RunSettings:
    """Fill in the profile's defaults and refuse invalid values with a message that says why."""
    if stage not in STAGES:
        raise RsscError(f"Unknown stage {stage!r}. Stages: {', '.join(STAGES)}.")
    prof = protocol.get_profile(profile)
    epochs = prof.probe_epochs if (epochs is None and stage == "probe") else epochs
    epochs = _positive("epochs", prof.epochs if epochs is None else epochs)
    batch_size = _positive("batch_size", prof.batch_size if batch_size is None else batch_size)
    image_size = _positive("image_size", prof.crop if image_size is None else image_size)
    if image_size % 32:
        raise RsscError(
            f"Invalid parameter image_size={image_size}: the crop must be divisible by 32 "
            "(ResNet-50 downsamples by 32); the paper uses 256."
        )
    if lr is not None and not lr > 0:
        raise RsscError(f"Invalid parameter lr={lr!r}: it must be positive, or left out.")
    if preprocessing in ("", "default", "auto"):
        preprocessing = None
    if preprocessing is not None and preprocessing not in protocol.PREPROCESSING_MODES:
        raise RsscError(
            f"Unknown preprocessing mode {preprocessing!r}. Modes: "
            f"{', '.join(protocol.PREPROCESSING_MODES)} (or leave it out to follow the model)."
        )
    for name, value, allowed in (("precision", precision, PRECISIONS),
                                 ("strategy", strategy, STRATEGIES),
                                 ("solver", solver, SOLVERS),
                                 ("schedule_steps", schedule_steps, protocol.SCHEDULE_STEPS)):
        if value not in allowed:
            raise RsscError(f"Invalid parameter {name}={value!r}. Choose one of: {', '.join(allowed)}.")
    if not source:
        raise RsscError("The parameter source is required (a dataset key or model reference).")
    if stage in TRANSFER_STAGES and not target:
        raise RsscError(f"`{stage}` needs a target dataset: pass --target KEY (e.g. ucm).")
    return RunSettings(
        stage=stage, source=source, target=target, profile=prof.name, epochs=epochs,
        batch_size=batch_size, image_size=image_size, seed=int(seed), lr=lr,
        preprocessing=preprocessing, precision=precision, strategy=strategy,
        split_file=split_file or None, solver=solver, standardize=bool(standardize),
        allow_any_version=bool(allow_any_version), schedule_steps=schedule_steps,
    )


def setup_fields(settings: RunSettings, replicas: int) -> dict[str, Any]:
    """Precision and replica count as fingerprint fields, each only when it is not float32 /
    one replica: runs logged before they counted keep their fingerprint."""
    fields: dict[str, Any] = {}
    if settings.precision != "float32":
        fields["precision"] = settings.precision
    if replicas != 1 and settings.stage in TRAINING_STAGES:  # only training splits a batch
        fields["replicas"] = int(replicas)
    return fields


def protocol_fingerprint(settings: RunSettings, *, preprocessing: str, peak_lr: float,
                         synthetic: bool, warmup_epochs: int, upstream: str = "",
                         dataset_spec: str = "", replicas: int = 1,
                         pool_precision: bool = False) -> str:
    """A short hash of everything that makes two results comparable.

    `upstream` is the fingerprint of the pre-trained model a transfer run starts from, so a
    fine-tune of a `demo` backbone never shares a cell with one of a `paper` backbone.
    `dataset_spec` is the spec digest of a user's dataset (`rssc datasets add`): a dataset
    registered again under the same name with other images or classes is another cell.
    Precision and, for training stages, the replica count (`replicas`, GPUs the batch is
    split over) are part of it: mixed precision rounds differently, and each replica's
    BatchNorm sees only its share of the batch. `pool_precision` leaves both out: the key
    under which `summarize --pool-precision` pools runs that differ only in those.
    Seeds, strategy and where the run happened are left out on purpose: runs that
    differ only in those are repetitions of the same cell.
    """
    comparable = {
        "version": FINGERPRINT_VERSION,
        "stage": settings.stage,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "crop": settings.image_size,
        "resize": settings.resize,
        "peak_lr": peak_lr,
        "warmup_epochs": warmup_epochs,
        "decay_epochs": protocol.DECAY_EPOCHS,
        "decay_factor": protocol.DECAY_FACTOR,
        "preprocessing": preprocessing,
        "train_fraction": protocol.TRAIN_FRACTION,
        "split": "file" if settings.split_file else "stratified",
        "solver": settings.solver if settings.stage == "probe" else None,
        "standardize": settings.standardize if settings.stage == "probe" else None,
        "synthetic": synthetic,
        "upstream": upstream,
    }
    profile = protocol.get_profile(settings.profile)
    if profile.bn_momentum is not None and settings.stage in TRAINING_STAGES:
        comparable["bn_momentum"] = profile.bn_momentum  # absent for Keras's: old keys hold
    if profile.zero_init_residual and settings.stage in TRAINING_STAGES:
        comparable["zero_init_residual"] = True  # absent for Keras's init: old keys hold
    if settings.schedule_steps != "paper" and settings.stage in TRAINING_STAGES:
        comparable["schedule_steps"] = settings.schedule_steps  # absent for paper: keys hold
    if dataset_spec:
        comparable["dataset_spec"] = dataset_spec  # absent for catalog datasets: keys hold
    if not pool_precision:
        comparable.update(setup_fields(settings, replicas))
    blob = json.dumps(comparable, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
