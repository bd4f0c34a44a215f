"""The model registry: registered names, aliases, and the model-reference resolver.

A *model reference* (the `source` of a transfer run) is one of:
  scratch              random initialisation
  imagenet             the standard Keras ResNet-50 notop weight file
  <dataset key>        `rssc-resnet50-<key>`, pre-trained from scratch on it (`pretrain`)
  imagenet+<key>       `rssc-resnet50-imagenet-<key>`, ImageNet adapted to it (`adapt`)
  models:/...          any MLflow model URI
  path/to/file.keras   a local Keras model file (.keras or .h5), loaded in safe mode
The input preprocessing a model expects is stored as a tag on its registered version and read
back here, so it travels with the model.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from rssc_mlflow import config, models, protocol
from rssc_mlflow.data.catalog import CATALOG, DatasetSpec
from rssc_mlflow.errors import ModelError
from rssc_mlflow.files import hash_file
from rssc_mlflow.tracking import pyfunc_model

# Tags on every registered version (read back by `resolve_source`).
MV_PREPROCESSING = "preprocessing"
MV_LINEAGE = "lineage"
MV_PROFILE = "profile"
MV_FINGERPRINT = "fingerprint"
MV_FINGERPRINT_POOLED = "fingerprint_pooled"  # without precision and replicas
MV_SOURCE = "source"
MV_SYNTHETIC = "synthetic"
MV_CROP = "crop"
MV_CLASSES = "classes"  # JSON list, in the order of the model's outputs
MV_TASK = "task"  # single | multi
# Where ImageNet-lineage weights came from, on the run and on every version downstream.
MV_IMAGENET_FILE = "imagenet_weights_file"
MV_IMAGENET_SHA256 = "imagenet_weights_sha256"
MV_IMAGENET_ORIGIN = "imagenet_weights_origin"  # keras-published | synthetic-stand-in | other-file
KERAS_IMAGENET_URI = "keras.applications.ResNet50(weights='imagenet')"

_DOWNLOAD_COMPLETE = "RSSC_DOWNLOADED"  # written last into a cached model download

# Requirements written next to each logged model; MLflow's inference of them imports and
# inspects the environment again for every model logged.
PIP_REQUIREMENTS = [f"keras=={__import__('keras').__version__}",
                    f"tensorflow=={__import__('tensorflow').__version__}"]


def registered_name(source_key: str, init: str = "scratch") -> str:
    """`rssc-resnet50-<key>` (from scratch) or `rssc-resnet50-imagenet-<key>` (adapted)."""
    return f"rssc-resnet50-{source_key}" if init == "scratch" else f"rssc-resnet50-imagenet-{source_key}"


def creating_command(source_key: str, init: str, profile: str) -> str:
    stage = "pretrain" if init == "scratch" else "adapt"
    return f"rssc {stage} --source {source_key} --profile {profile}"


@dataclasses.dataclass
class ResolvedSource:
    """What a model reference turned into, with the lineage a run records."""

    reference: str
    kind: str  # scratch | imagenet | registered | uri | file
    lineage: str  # "scratch" or "imagenet": decides the default preprocessing and peak lr
    preprocessing: str
    model_name: str = ""
    version: str = ""
    run_id: str = ""
    uri: str = ""
    fingerprint: str = ""
    # Its fingerprint without precision and replicas (versions registered before: the same).
    pooled_fingerprint_tag: str = ""
    note: str = ""
    aliases: tuple[str, ...] = ()
    # The ImageNet weights at the root of the lineage (MV_IMAGENET_* keys), when there are any.
    imagenet_weights: dict[str, str] = dataclasses.field(default_factory=dict)
    synthetic: bool = False  # the weights came from synthetic data (a stand-in, a demo model)
    local_file: Path | None = None  # a local weight/model file, when there is one
    download_uri: str = ""  # else the MLflow URI it is downloaded from, on first use

    @property
    def pooled_fingerprint(self) -> str:
        """The upstream key of a pooled cell: old versions' fingerprint had no precision."""
        return self.pooled_fingerprint_tag or self.fingerprint

    @property
    def pretrained(self) -> bool:
        return self.kind != "scratch"

    def describe(self) -> str:
        """One line for the console: what the run starts from and the input it feeds it."""
        if self.kind == "scratch":
            what = "random initialisation (scratch)"
        elif self.kind == "registered":
            aliases = ", ".join("@" + a for a in self.aliases) or "no alias"
            what = f"{self.model_name} version {self.version} ({aliases})"
        elif self.kind == "imagenet":
            origin = {"keras-published": "Keras's published file",
                      "synthetic-stand-in": "NOT Keras's file: a SYNTHETIC stand-in",
                      "other-file": "NOT Keras's published file"}[
                self.imagenet_weights[MV_IMAGENET_ORIGIN]]
            what = (f"ImageNet weights {self.local_file} ({origin}, sha256 "
                    f"{self.imagenet_weights[MV_IMAGENET_SHA256][:12]})")
        else:
            what = self.uri
        return f"{what}, preprocessing {self.preprocessing}"

    @property
    def path(self) -> Path | None:
        """The model or weight file, downloaded from the tracking store the first time."""
        if self.local_file is None and self.download_uri:
            self.local_file = _download(self.download_uri)
        return self.local_file

    def backbone_into(self, model) -> None:
        """Load this source's backbone weights into `model`'s backbone (any crop size)."""
        if self.kind == "scratch":
            return
        backbone = models.backbone_of(model)
        if self.kind == "imagenet":
            models.load_backbone_weights(backbone, self.path)
            return
        source = models.load_model_file(self.path)
        models.copy_backbone_weights(models.backbone_of(source), backbone)


@functools.lru_cache(maxsize=16)
def _digests(path: str, size: int, mtime_ns: int) -> tuple[str, str]:
    _, (sha256, md5) = hash_file(Path(path), "sha256", "md5")
    return sha256, md5


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, computed once per process while it is unchanged."""
    stat = Path(path).stat()
    return _digests(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def keras_imagenet_notop_md5() -> str:
    """The md5 Keras checks its downloaded ResNet-50 notop ImageNet file against."""
    from keras.src.applications.resnet import WEIGHTS_HASHES

    return WEIGHTS_HASHES["resnet50"][1]


def imagenet_origin(path: Path) -> dict[str, str]:
    """Which ImageNet weights a file holds: Keras's published file (its known md5), a synthetic
    stand-in (a JSON next to it saying `"synthetic": true`, as `rssc demo` writes), or another
    file. Keys: MV_IMAGENET_FILE, MV_IMAGENET_SHA256, MV_IMAGENET_ORIGIN."""
    sha256, md5 = file_digests(path)
    if md5 == keras_imagenet_notop_md5():
        origin = "keras-published"
    else:
        try:
            marker = json.loads(Path(path).with_suffix(".json").read_text())
        except (OSError, ValueError):
            marker = {}
        origin = "synthetic-stand-in" if marker.get("synthetic") is True else "other-file"
    return {MV_IMAGENET_FILE: str(Path(path).resolve()), MV_IMAGENET_SHA256: sha256,
            MV_IMAGENET_ORIGIN: origin}


def _client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def _model_file_in(artifact_dir: Path) -> Path:
    for pattern in ("data/model.keras", "**/*.keras", "**/*.h5"):
        found = sorted(artifact_dir.glob(pattern))
        if found:
            return found[0]
    raise ModelError(f"No Keras model file found in the model artifacts at {artifact_dir}.")


def _download(uri: str) -> Path:
    """The model file of `uri`, downloaded once into `<cache dir>/models/` and reused.

    A registered version (models:/name/N) or a logged model id never changes within one
    tracking store, so the cache is keyed by (tracking URI, model URI): a grid of transfer runs
    downloads each source model once, and nothing piles up in the system temp folder. The
    download goes to a temporary sibling first and is renamed into place whole, so a crash or
    a concurrent worker never leaves a half-written model that looks complete.
    """
    key = hashlib.sha256(f"{mlflow.get_tracking_uri()}|{uri}".encode()).hexdigest()[:24]
    root = config.cache_dir() / "models"
    final = root / key
    if (final / _DOWNLOAD_COMPLETE).is_file():
        return _model_file_in(final)
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        mlflow.artifacts.download_artifacts(uri, dst_path=str(partial))
        _model_file_in(partial)  # refuse artifacts without a model file before caching them
        (partial / _DOWNLOAD_COMPLETE).write_text(uri + "\n")
        try:
            partial.rename(final)
        except OSError:  # another process cached it first (or a stale incomplete folder)
            if not (final / _DOWNLOAD_COMPLETE).is_file():
                shutil.rmtree(final, ignore_errors=True)
                partial.rename(final)
    except MlflowException as exc:
        raise ModelError(f"Could not download model {uri}: {exc.message}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return _model_file_in(final)


def find_version(name: str, profile: str, *, creating: str = "",
                 allow_any_version: bool = False) -> tuple[object, str]:
    """The version carrying alias @profile; without one, an error naming the versions there
    are, or (`allow_any_version`) the newest version and a note saying so."""
    client = _client()
    try:
        return client.get_model_version_by_alias(name, profile), ""
    except MlflowException:
        pass
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        versions = []
    if not versions:
        hint = f" Create it with `{creating}`." if creating else ""
        raise ModelError(
            f"Model '{name}' is not registered yet in the tracking store at "
            f"{mlflow.get_tracking_uri()}.{hint}"
        )
    versions = sorted(versions, key=lambda v: int(v.version))
    newest = versions[-1]
    # search_model_versions leaves aliases out; the registered model has them all.
    by_version: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    aliases = lambda v: ", ".join("@" + a for a in sorted(by_version.get(str(v.version), [])))  # noqa: E731
    listed = ", ".join(f"{v.version} ({aliases(v) or 'no alias'})" for v in versions)
    if not allow_any_version:
        other = next((a for v in reversed(versions) for a in sorted(by_version.get(str(v.version), []))), None)
        raise ModelError(
            f"No version of '{name}' has alias @{profile}, the profile of this run; its "
            f"versions: {listed}. Profiles are never mixed silently: create the @{profile} "
            f"version with `{creating}`"
            + (f", run with --profile {other} to use @{other}" if other else "")
            + f", or pass --allow-any-version to use the newest (version {newest.version})."
        )
    newest = client.get_model_version(name, newest.version)  # with its aliases
    return newest, (f"no version of '{name}' has alias @{profile}; --allow-any-version: using "
                    f"the newest, version {newest.version} ({aliases(newest) or 'no alias'})")


def _from_version(reference: str, mv, note: str, override: str | None) -> ResolvedSource:
    tags = mv.tags or {}
    lineage = tags.get(MV_LINEAGE, "scratch")
    recorded = tags.get(MV_PREPROCESSING) or models.preprocessing_for(lineage, None)
    return ResolvedSource(
        reference=reference, kind="registered", lineage=lineage,
        preprocessing=override or recorded, model_name=mv.name, version=str(mv.version),
        run_id=mv.run_id or "", uri=f"models:/{mv.name}/{mv.version}",
        fingerprint=tags.get(MV_FINGERPRINT, ""), note=note,
        pooled_fingerprint_tag=tags.get(MV_FINGERPRINT_POOLED, ""),
        aliases=tuple(sorted(mv.aliases or [])), download_uri=f"models:/{mv.name}/{mv.version}",
        imagenet_weights={k: tags[k] for k in (MV_IMAGENET_FILE, MV_IMAGENET_SHA256,
                                               MV_IMAGENET_ORIGIN) if k in tags},
        synthetic=tags.get(MV_SYNTHETIC, "false") == "true",
    )


def resolve_source(reference: str, *, profile: str, preprocessing: str | None = None,
                   allow_any_version: bool = False) -> ResolvedSource:
    """Turn a model reference into weights to start from and the preprocessing they expect.

    A dataset key (or imagenet+key) takes the registered version with alias @profile; without
    one it is an error, unless `allow_any_version` (then the newest, with a note).
    """
    ref = reference.strip()
    if ref == "scratch":
        return ResolvedSource(ref, "scratch", "scratch", models.preprocessing_for("scratch", preprocessing))
    if ref == "imagenet":
        path = models.imagenet_weights_path()
        weights = imagenet_origin(path)
        origin = weights[MV_IMAGENET_ORIGIN]
        return ResolvedSource(ref, "imagenet", "imagenet",
                              models.preprocessing_for("imagenet", preprocessing),
                              uri=KERAS_IMAGENET_URI if origin == "keras-published"
                              else path.resolve().as_uri(),
                              imagenet_weights=weights,
                              synthetic=origin == "synthetic-stand-in", local_file=path,
                              note="" if origin == "keras-published" else
                              f"the ImageNet weight file {path} is not Keras's published "
                              f"{models.IMAGENET_WEIGHTS_FILE} (md5 differs)"
                              + ("; it is a SYNTHETIC stand-in" if origin == "synthetic-stand-in"
                                 else ""))
    if ref.startswith("models:/"):
        m = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", ref)
        if m:
            name, version, alias = m.groups()
            client = _client()
            try:
                mv = (client.get_model_version(name, version) if version
                      else client.get_model_version_by_alias(name, alias))
            except MlflowException as exc:
                raise ModelError(f"Model reference {ref} not found: {exc.message}") from None
            return _from_version(ref, mv, "", preprocessing)
        # A logged model id (models:/m-...): no registry tags, so the lineage is unknown.
        return ResolvedSource(ref, "uri", "scratch", models.preprocessing_for("scratch", preprocessing),
                              uri=ref, note="no registry tags: preprocessing defaults to 'unit'",
                              download_uri=ref)
    init, _, key = ref.partition("+") if "+" in ref else ("scratch", "", ref)
    if init in ("scratch", "imagenet") and _is_dataset_key(key):
        name = registered_name(key, init)
        mv, note = find_version(name, profile, creating=creating_command(key, init, profile),
                                allow_any_version=allow_any_version)
        return _from_version(ref, mv, note, preprocessing)
    path = Path(ref).expanduser()
    if path.suffix in (".keras", ".h5"):
        if not path.is_file():
            raise ModelError(f"Model file {path} does not exist.")
        return ResolvedSource(ref, "file", "scratch", models.preprocessing_for("scratch", preprocessing),
                              uri=str(path.resolve()), local_file=path,
                              note="local file: preprocessing defaults to 'unit' unless given")
    raise ModelError(
        f"Unknown source {reference!r}. A source is 'scratch', 'imagenet', a dataset key "
        f"({', '.join(CATALOG)}), 'imagenet+<key>', a models:/ URI, or a .keras/.h5 file."
    )


PREPROCESSING_IN_WORDS = {
    "unit": "pixels divided by 255 (values in [0, 1])",
    "imagenet-rgb": "the ImageNet means {means} subtracted in RGB order (the authors' code)",
    "imagenet-caffe": "Keras's ResNet-50 preprocess_input: RGB to BGR, then the ImageNet means "
                      "subtracted in BGR order",
}


@dataclasses.dataclass
class ModelCard:
    """What a logged model says about itself: its classes, input and held-out result."""

    spec: DatasetSpec
    crop: int
    preprocessing: str
    synthetic: bool
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    test_images: int = 0
    split_role: str = "source"
    head: bool = True  # False: a backbone (an imported notop weight file), features out
    imagenet_weights: dict[str, str] = dataclasses.field(default_factory=dict)  # MV_IMAGENET_*

    def config(self) -> dict:
        return pyfunc_model.model_config(
            classes=list(self.spec.classes) if self.head else [],
            task=self.spec.task if self.head else "features", crop=self.crop,
            preprocessing=self.preprocessing)

    def preprocessing_in_words(self) -> str:
        return PREPROCESSING_IN_WORDS[self.preprocessing].format(
            means=tuple(protocol.IMAGENET_MEANS_RGB))

    def result(self) -> str:
        if not self.metrics:
            return "not evaluated by rssc (imported)"
        key = "test_accuracy" if "test_accuracy" in self.metrics else next(iter(self.metrics))
        fraction = "20%" if self.split_role == "source" else "80%"
        return (f"{key} {100 * self.metrics[key]:.2f}% on the held-out {fraction} of "
                f"{self.spec.key} ({self.test_images} images)")

    def describe(self, *, name: str, init: str, profile: str, uri: str) -> str:
        """The version's description (markdown): the model card."""
        started = "from scratch" if init == "scratch" else "from ImageNet weights"
        resize = protocol.resize_for_crop(self.crop)
        lines = [
            f"ResNet-50 pre-trained {started} on {self.spec.title} (`{self.spec.key}`, "
            f"{self.spec.task}-label, {self.spec.num_classes} classes) by rssc-mlflow, profile "
            f"`{profile}`.",
        ]
        if self.synthetic:
            lines.append("**SYNTHETIC**: trained on synthetic stand-in images; its numbers are "
                         "not comparable to the paper.")
        lines += [
            "",
            f"- source dataset: `{self.spec.key}`; init: {init}; profile: {profile}",
            f"- input: resized to {resize} x {resize} px, central crop {self.crop} x {self.crop} "
            f"px; preprocessing `{self.preprocessing}`: {self.preprocessing_in_words()}",
            f"- held-out result: {self.result()}",
            *([f"- ImageNet weights at the root of its lineage: "
               f"{self.imagenet_weights[MV_IMAGENET_ORIGIN]}, sha256 "
               f"{self.imagenet_weights[MV_IMAGENET_SHA256]}"] if self.imagenet_weights else []),
            (f"- classes ({self.spec.num_classes}, in output order): "
             + ", ".join(self.spec.classes)) if self.head else
            "- no classification head (imported backbone): outputs the 2048 pooled features",
            "",
            f"`mlflow.pyfunc.load_model(\"{uri}\").predict(images)` takes decoded uint8 RGB "
            "images of any size, shape (n, height, width, 3), and does the resize, crop and "
            "preprocessing itself; it returns a DataFrame with "
            + ("the features f0 .. f2047" if not self.head else
               ("`labels` (the labels above 0.5)" if self.spec.multilabel else "`class`")
               + " and one probability column per class") + ". "
            f"`mlflow.keras.load_model(\"{uri}\")` gives the Keras model, whose input is float32 "
            f"(n, {self.crop}, {self.crop}, 3) already preprocessed as above.",
        ]
        return "\n".join(lines)


def log_model(model, *, card: ModelCard, registered_model_name: str | None = None):
    """Log `model` as the run's `model` artifact (keras + pyfunc, `pyfunc_model`), without its
    optimizer state.

    Keras saves a compiled model with Adam's two moment slots per weight: three times the
    weights (~270 MB instead of ~95 MB for ResNet-50). Transfer runs only read the weights, so
    an uncompiled copy with the same architecture and weights is logged.
    """
    import keras

    logged = model
    if getattr(model, "optimizer", None) is not None:
        logged = keras.models.clone_model(model)
        logged.set_weights(model.get_weights())
    return pyfunc_model.log_model(logged, config=card.config(),
                                  pip_requirements=PIP_REQUIREMENTS,
                                  registered_model_name=registered_model_name)


def register(model, *, card: ModelCard, source_key: str, init: str, profile: str,
             fingerprint: str, pooled_fingerprint: str = "") -> tuple[str, str]:
    """Log `model` to the active run, register it, give it the profile as alias, its tags and
    its model card (the version's description)."""
    name = registered_name(source_key, init)
    info = log_model(model, card=card, registered_model_name=name)
    version = str(info.registered_model_version)
    client = _client()
    tags = {MV_PREPROCESSING: card.preprocessing, MV_LINEAGE: init, MV_PROFILE: profile,
            MV_FINGERPRINT: fingerprint, MV_FINGERPRINT_POOLED: pooled_fingerprint or fingerprint,
            MV_SOURCE: source_key,
            MV_SYNTHETIC: str(card.synthetic).lower(), MV_CROP: str(card.crop),
            MV_CLASSES: json.dumps(card.config()["classes"]), MV_TASK: card.config()["task"]}
    tags.update(card.imagenet_weights)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, profile, version)
    client.update_model_version(name, version, description=card.describe(
        name=name, init=init, profile=profile, uri=f"models:/{name}@{profile}"))
    started = "from scratch" if init == "scratch" else "from ImageNet weights"
    client.update_registered_model(name, description=(
        f"ResNet-50 backbones pre-trained {started} on {card.spec.title} "
        f"(`{source_key}`) by rssc-mlflow (`{creating_command(source_key, init, profile)}`). "
        "One version per training run; its alias is the profile it was trained with (@paper: "
        "the paper's protocol; @demo and @smoke: small CPU runs). Each version's description "
        f"is its model card. Load one with `mlflow.pyfunc.load_model(\"models:/{name}@paper\")`."))
    return name, version


def _is_dataset_key(key: str) -> bool:
    """A catalog key or a user dataset's (`rssc datasets add`)."""
    from rssc_mlflow.data.catalog import get_spec

    try:
        get_spec(key)
    except Exception:  # noqa: BLE001 - DatasetError/ValueError: not a key
        return False
    return True


def list_models() -> list[dict]:
    """Every rssc-resnet50-* registered version with its aliases and tags (`rssc weights list`).

    Aliases come from the registered models: `search_model_versions` leaves them out."""
    client = _client()
    aliases: dict[tuple[str, str], list[str]] = {}
    for model in client.search_registered_models("name LIKE 'rssc-resnet50-%'"):
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault((model.name, str(version)), []).append(alias)
    rows = []
    for mv in client.search_model_versions("name LIKE 'rssc-resnet50-%'"):
        rows.append({"name": mv.name, "version": str(mv.version),
                     "aliases": sorted(aliases.get((mv.name, str(mv.version)), [])),
                     "run_id": mv.run_id, **(mv.tags or {})})
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))


def download(reference: str, out: Path, *, profile: str,
             allow_any_version: bool = False) -> list[Path]:
    """Write `model.keras` and a Keras notop backbone weight file for a registered model."""
    resolved = resolve_source(reference, profile=profile, allow_any_version=allow_any_version)
    if resolved.path is None or resolved.kind == "imagenet":
        raise ModelError(f"{reference!r} is not a registered model; pass KEY, imagenet+KEY or a "
                         "models:/ URI.")
    out.mkdir(parents=True, exist_ok=True)
    model = models.load_model_file(resolved.path)
    stem = (resolved.model_name or "model") + (f"-v{resolved.version}" if resolved.version else "")
    model_path = out / f"{stem}.keras"
    model.save(model_path)
    weights_path = out / f"{stem}_notop.weights.h5"
    models.save_notop_weights(model, weights_path)
    (out / f"{stem}.json").write_text(
        json.dumps({"reference": reference, "uri": resolved.uri,
                                  "preprocessing": resolved.preprocessing,
                                  "lineage": resolved.lineage}, indent=1))
    return [model_path, weights_path, out / f"{stem}.json"]


def import_model(path: Path, *, source_key: str, init: str, profile: str,
                 preprocessing: str | None) -> tuple[str, str]:
    """Register an external model file (e.g. the authors' released .h5) in its own run."""
    from rssc_mlflow.data.catalog import get_spec
    from rssc_mlflow.tracking import runs

    spec = get_spec(source_key)
    if init not in ("scratch", "imagenet"):
        raise ModelError(f"--init must be 'scratch' or 'imagenet', not {init!r}.")
    if not Path(path).is_file():
        raise ModelError(f"Model file {path} does not exist.")
    model = models.load_model_file(Path(path))  # safe mode; refuses Lambda/custom layers
    models.check_resnet50(models.backbone_of(model))
    mode = models.preprocessing_for(init, preprocessing)
    crop = int(model.input_shape[1] or 256)
    outputs = int(model.outputs[0].shape[-1])
    head = outputs != models.FEATURE_DIM or model.layers[-1].name != models.POOL_NAME
    if head and outputs != spec.num_classes:
        raise ModelError(
            f"{path} has {outputs} outputs, but {source_key} has {spec.num_classes} classes: "
            f"import the classifier trained on {source_key} (with its head), or its backbone "
            "as a notop weight file.")
    card = ModelCard(spec=spec, crop=crop, preprocessing=mode, synthetic=False, head=head)
    with runs.tracked_run("import", source_key, tags={"rssc.imported_file": str(Path(path).name)}):
        mlflow.log_params({"file": Path(path).name, "init": init, "profile": profile,
                           "preprocessing": mode, "num_classes": spec.num_classes})
        return register(model, card=card, source_key=source_key, init=init, profile=profile,
                        fingerprint="imported")
