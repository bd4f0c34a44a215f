"""ResNet-50 classifiers and the primitives to load, check and save pre-trained backbones.

The network is the paper's: Keras's ResNet-50 v1 without its top, global average pooling, and
one Dense layer (softmax for single-label, sigmoid for multi-label). Saved and registered models
take preprocessed float32 input and hold no preprocessing layer, so they load in Keras's safe
mode without this package. Training and feature extraction feed uint8 batches to a wrapper
(`with_preprocessing`: uint8 -> `Preprocess` -> the model) so that the preprocessing runs on
the accelerator, not in the input pipeline; the wrapper shares the model's weights and is never
saved as a model.

Layout of a classifier built here (and of any model after `replace_head`):

    image (crop, crop, 3) -> "resnet50" (nested keras ResNet50, include_top=False)
                          -> "avg_pool" (GlobalAveragePooling2D, 2048-d)
                          -> "predictions" (Dense, float32)

Models made elsewhere are accepted when their ResNet-50 layers carry Keras's names, either flat
(the authors' style: conv layers at the top level) or nested as one sub-model.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import h5py
import keras
import numpy as np
import tensorflow as tf

from rssc_mlflow import model_safety, protocol
from rssc_mlflow.data import pipeline
from rssc_mlflow.data.catalog import Task
from rssc_mlflow.errors import ModelError

BACKBONE_NAME = "resnet50"
POOL_NAME = "avg_pool"
HEAD_NAME = "predictions"
FEATURE_DIM = 2048

IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_WEIGHTS_FILE
)
IMAGENET_WEIGHTS_ENV = "RSSC_IMAGENET_WEIGHTS"

# Which input preprocessing a model expects follows from where its weights started.
DEFAULT_PREPROCESSING: dict[str, str] = {"imagenet": "imagenet-rgb", "scratch": "unit"}

# The conv layer every Keras ResNet-50 starts with: used to find the backbone inside a model.
_FIRST_CONV = "conv1_conv"
# ResNet50 refuses inputs under 32 px; weights do not depend on the input size, so reference
# and scratch models are built at this size.
_MIN_CROP = 32
RESIDUAL_BLOCKS = 16  # ResNet-50: 3 + 4 + 6 + 3 bottleneck blocks


# --- Building -------------------------------------------------------------------------------


def _head(num_classes: int, task: Task) -> keras.layers.Dense:
    if task not in ("single", "multi"):
        raise ValueError(f"task must be 'single' or 'multi', got {task!r}.")
    return keras.layers.Dense(
        num_classes,
        activation="softmax" if task == "single" else "sigmoid",
        # Probabilities in float32 even under a mixed policy: the losses need them stable.
        dtype="float32",
        name=HEAD_NAME,
    )


def _resnet50_notop(crop: int) -> keras.Model:
    return keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(crop, crop, 3), pooling=None,
        name=BACKBONE_NAME,
    )


def build_classifier(
    num_classes: int,
    task: Task,
    *,
    crop: int,
    backbone_weights: str | Path | None = None,
    name: str = "rssc_resnet50",
    bn_momentum: float | None = None,
    zero_init_residual: bool = False,
) -> keras.Model:
    """ResNet-50 (nested, named "resnet50") -> "avg_pool" -> Dense "predictions".

    Args:
        num_classes: classes (single-label) or labels (multi-label).
        task: "single" (softmax) or "multi" (sigmoid).
        crop: input side in pixels (256 in the paper; at least 32).
        backbone_weights: None (random init), "imagenet" (the Keras notop file found by
            `imagenet_weights_path`), or a notop weight file (see `load_backbone_weights`).
        name: model name.
        bn_momentum: momentum of every BatchNormalization layer (None: Keras's 0.99); a layer
            setting, not a weight, so loading weights keeps it.
        zero_init_residual: start the last BatchNormalization of every residual block at
            gamma 0 (`zero_init_residual`); loaded backbone weights replace it.
    """
    head = _head(num_classes, task)
    backbone = _resnet50_notop(crop)
    if bn_momentum is not None:
        set_bn_momentum(backbone, bn_momentum)
    if zero_init_residual:
        zero_init_residual_gammas(backbone)
    if backbone_weights is not None:
        path = imagenet_weights_path() if backbone_weights == "imagenet" else backbone_weights
        load_backbone_weights(backbone, path)
    inputs = keras.Input(shape=(crop, crop, 3), name="image")
    features = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(backbone(inputs))
    return keras.Model(inputs, head(features), name=name)


def set_bn_momentum(model: keras.Model, momentum: float) -> None:
    """Set the moving-average momentum of every BatchNormalization layer, before tracing."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"BatchNorm momentum must be in [0, 1), got {momentum!r}.")
    for layer in model_safety.walk(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)


def zero_init_residual_gammas(backbone: keras.Model) -> None:
    """Set gamma to 0 in the BatchNormalization that ends each residual block's branch
    (`convS_blockN_3_bn`), so every block starts as its shortcut alone (Goyal et al. 2017,
    torchvision's `zero_init_residual`): a network trained from scratch for a few hundred
    steps then learns from the first epoch. Raises when Keras names the layers otherwise,
    rather than silently doing nothing.
    """
    layers = [layer for layer in backbone.layers
              if isinstance(layer, keras.layers.BatchNormalization)
              and re.fullmatch(r"conv\d_block\d+_3_bn", layer.name)]
    if len(layers) != RESIDUAL_BLOCKS:
        raise ModelError(f"zero_init_residual: expected {RESIDUAL_BLOCKS} residual-branch "
                         f"BatchNormalization layers named convS_blockN_3_bn in the ResNet-50, "
                         f"found {len(layers)}. Received: {backbone.name!r}.")
    for layer in layers:
        layer.gamma.assign(keras.ops.zeros_like(layer.gamma))


class Preprocess(keras.layers.Layer):
    """uint8 images -> float32 network input (`pipeline.preprocess`), inside the traced step.

    Always float32, whatever the dtype policy: the same arithmetic as the pipeline's, so a run
    is bit-identical either way; the next layer casts to the compute dtype as before.
    """

    def __init__(self, mode: str, **kwargs: Any):
        pipeline.check_preprocessing(mode)
        super().__init__(dtype="float32", **kwargs)
        self.mode = mode

    def call(self, images: Any) -> Any:
        return pipeline.preprocess(images, self.mode)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


def with_preprocessing(model: keras.Model, mode: str) -> keras.Model:
    """uint8 images -> `Preprocess(mode)` -> `model`: the same weights, for uint8 pipelines
    (`pipeline.make_dataset(preprocessing=None)`). `unwrap` gives `model` back."""
    inputs = keras.Input(shape=model.inputs[0].shape[1:], dtype="uint8", name="image_uint8")
    outputs = model(Preprocess(mode, name="preprocess")(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_uint8")


def unwrap(model: keras.Model) -> keras.Model:
    """The model inside a `with_preprocessing` wrapper; any other model as it is."""
    if len(model.layers) == 3 and isinstance(model.layers[1], Preprocess):
        return model.layers[2]
    return model


def _find_core(model: keras.Model) -> keras.Model | None:
    """The (sub-)model whose layers are the ResNet-50 layers, flat or nested one level or more."""
    names = {layer.name for layer in model.layers}
    if _FIRST_CONV in names:
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            core = _find_core(layer)
            if core is not None:
                return core
    return None


def _core(model: keras.Model) -> keras.Model:
    core = _find_core(model)
    if core is None:
        raise ModelError(
            f"Model {model.name!r} is not a Keras ResNet-50: it has no layer named "
            f"{_FIRST_CONV!r}. Use a model built by keras.applications.ResNet50 (or by rssc) "
            "whose layer names were not changed."
        )
    return core


def _inputs(model: keras.Model) -> Any:
    # A single tensor, not a one-element list: Keras warns when called models get a bare tensor
    # but were built with a list.
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def backbone_of(model: keras.Model) -> keras.Model:
    """The ResNet-50 up to the pooled 2048-d features: model input -> "avg_pool" output.

    Works on classifiers built here, on models whose top level has a GlobalAveragePooling2D
    (the authors' layout), and on bare ResNet-50s (pooling is added). A model that already
    ends in the pooled features is returned as is.
    """
    pools = [x for x in model.layers if isinstance(x, keras.layers.GlobalAveragePooling2D)]
    pool = next((x for x in pools if x.name == POOL_NAME), pools[0] if pools else None)
    if pool is not None:
        if model.outputs[0] is pool.output:
            return model
        return keras.Model(_inputs(model), pool.output, name=f"{model.name}_backbone")
    core = _core(model)
    if len(core.output.shape) == 2:  # built with pooling="avg"/"max"
        return core
    features = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(core.output)
    return keras.Model(_inputs(core), features, name=f"{model.name}_backbone")


def replace_head(
    model_or_backbone: keras.Model, num_classes: int, task: Task, *, name: str = "rssc_resnet50"
) -> keras.Model:
    """A new classifier on the same (shared, not copied) backbone layers with a fresh head."""
    backbone = backbone_of(model_or_backbone)
    return keras.Model(_inputs(backbone), _head(num_classes, task)(backbone.output), name=name)


# --- Checking ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _reference_layers() -> tuple[tuple[str, tuple[tuple[str, tuple[int, ...]], ...]], ...]:
    """Every layer of a fresh Keras ResNet-50 notop, in Keras's order, with its weights as
    (name, shape) pairs in the legacy order (trainable first) the Keras .h5 format uses.

    Built once per process: it is the yardstick for `check_resnet50` and the layout that
    `save_notop_weights` writes.
    """
    reference = _resnet50_notop(_MIN_CROP)
    return tuple(
        (
            layer.name,
            tuple(
                (w.name, tuple(w.shape))
                for w in layer.trainable_weights + layer.non_trainable_weights
            ),
        )
        for layer in reference.layers
    )


def _reference_shapes() -> tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]:
    """(layer name, weight shapes in legacy order) of every weighted layer of a ResNet-50 notop."""
    return tuple(
        (name, tuple(shape for _, shape in weights))
        for name, weights in _reference_layers()
        if weights
    )


def check_resnet50(model_or_backbone: keras.Model) -> None:
    """Raise ModelError unless the model holds a Keras ResNet-50 with the expected weights.

    Every weighted layer of a fresh `keras.applications.ResNet50(include_top=False)` must be
    present under the same name with the same weight shapes (the input size does not change
    them); the first layer that differs is named. Extra layers (heads, pooling) are allowed.
    """
    core = _core(model_or_backbone)
    layers = {layer.name: layer for layer in core.layers}
    for name, shapes in _reference_shapes():
        layer = layers.get(name)
        if layer is None:
            raise ModelError(
                f"Model {model_or_backbone.name!r} is not a Keras ResNet-50: layer {name!r} is "
                "missing. Use a ResNet-50 from keras.applications (v1) with its layer names."
            )
        found = tuple(tuple(w.shape) for w in layer.trainable_weights + layer.non_trainable_weights)
        if found != shapes:
            raise ModelError(
                f"Model {model_or_backbone.name!r} is not a Keras ResNet-50: layer {name!r} has "
                f"weight shapes {list(found)} where ResNet-50 has {list(shapes)}. Use a ResNet-50 "
                "from keras.applications (v1) with 3-channel input."
            )


# --- Weight files ----------------------------------------------------------------------------


def imagenet_weights_path() -> Path:
    """The Keras ImageNet notop weight file, found without any download.

    Looked up in order: `$RSSC_IMAGENET_WEIGHTS` (must exist when set), then the Keras cache
    `$KERAS_HOME/models/` or `~/.keras/models/` (Keras falls back to /tmp/.keras when the home
    directory is not writable, so that is looked at too in that case).
    """
    override = os.environ.get(IMAGENET_WEIGHTS_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelError(
                f"{IMAGENET_WEIGHTS_ENV} points at {path}, which does not exist. Point it at "
                f"the file {IMAGENET_WEIGHTS_FILE} (download: {IMAGENET_WEIGHTS_URL}) or unset it "
                "to use the Keras cache."
            )
        return path
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    candidates = [home / "models" / IMAGENET_WEIGHTS_FILE]
    if not os.access(home if home.exists() else home.parent, os.W_OK):
        candidates.append(Path(tempfile.gettempdir()) / ".keras" / "models" / IMAGENET_WEIGHTS_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise ModelError(
        f"ImageNet weights not found (looked at {', '.join(str(p) for p in candidates)}): "
        f"download {IMAGENET_WEIGHTS_FILE} from {IMAGENET_WEIGHTS_URL} and put it in "
        f"~/.keras/models/ or point {IMAGENET_WEIGHTS_ENV} at it."
    )


def _h5_weight_group(f: h5py.File) -> h5py.Group:
    # Full legacy models keep their weights under "model_weights"; weight files at the root.
    if "layer_names" not in f.attrs and "model_weights" in f:
        return f["model_weights"]
    return f


def _decode(names: Any) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def _read_legacy_weights(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {weight name (e.g. "kernel"): array}} from a Keras 2 style .h5 file."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        group = _h5_weight_group(f)
        for layer_name in group.keys():
            layer_group = group[layer_name]
            if not isinstance(layer_group, h5py.Group):
                continue
            weight_names = _decode(layer_group.attrs.get("weight_names", []))
            # "conv1_conv/kernel:0" -> "kernel" (Keras 2 names end in ":0"; Keras 3 not).
            out[layer_name] = {
                n.split("/")[-1].split(":")[0]: np.asarray(layer_group[n]) for n in weight_names
            }
    return out


def _assign_by_name(core: keras.Model, weights: dict[str, dict[str, np.ndarray]], source: str) -> None:
    """Set every weighted layer of `core` from `weights`; all must be present with same shapes."""
    for layer in core.layers:
        if not layer.weights:
            continue
        saved = weights.get(layer.name)
        if saved is None:
            raise ModelError(
                f"{source} has no weights for layer {layer.name!r}. Give a ResNet-50 notop weight "
                "file (like Keras's ImageNet file or one written by save_notop_weights)."
            )
        for variable in layer.weights:
            value = saved.get(variable.name)
            if value is None or tuple(value.shape) != tuple(variable.shape):
                found = "is missing" if value is None else f"has shape {tuple(value.shape)}"
                raise ModelError(
                    f"{source}: weight {layer.name}/{variable.name} {found}, the model expects "
                    f"shape {tuple(variable.shape)}. Give a ResNet-50 notop weight file (like "
                    "Keras's ImageNet file or one written by save_notop_weights)."
                )
        for variable in layer.weights:
            variable.assign(saved[variable.name])


def _weights_of(core: keras.Model) -> dict[str, dict[str, np.ndarray]]:
    return {
        layer.name: {v.name: keras.ops.convert_to_numpy(v) for v in layer.weights}
        for layer in core.layers
        if layer.weights
    }


def load_backbone_weights(model_or_backbone: keras.Model, path: str | Path) -> None:
    """Load a ResNet-50 notop weight file into the model's ResNet-50 layers, by layer name.

    Accepts the Keras 2 style `.h5` format of Keras's ImageNet file (and full legacy `.h5`
    models, whose other layers are ignored) and Keras 3 `.weights.h5` files of a
    `ResNet50(include_top=False)`. Any input size works: conv weights do not depend on it.
    Every ResNet-50 layer must get its weights, else ModelError (no silent partial load).

    The `.h5` files are read here, not by `model.load_weights(path, by_name=True)`: Keras's
    by-name loader sets the same arrays from a complete file but silently skips a layer the
    file lacks, leaving it at its random init, and matches a layer's weights by position,
    not by name.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Weight file {path} does not exist. Check the path.")
    core = _core(model_or_backbone)
    if path.name.endswith(".weights.h5"):
        # Keras 3 format is keyed by model structure: load into a reference ResNet-50 first.
        reference = _resnet50_notop(_MIN_CROP)
        try:
            reference.load_weights(path)
        except Exception as exc:  # Keras raises ValueError/KeyError variants here
            raise ModelError(
                f"{path} is not a Keras 3 weight file of ResNet50(include_top=False): {exc}. "
                "Save backbones with save_notop_weights."
            ) from exc
        weights = _weights_of(reference)
    elif path.suffix in (".h5", ".hdf5"):
        try:
            weights = _read_legacy_weights(path)
        except OSError as exc:
            raise ModelError(f"{path} is not a readable HDF5 file: {exc}.") from exc
    else:
        raise ModelError(
            f"{path}: unsupported weight file type. Use a .h5 notop file (Keras ImageNet format) "
            "or a .weights.h5 file."
        )
    _assign_by_name(core, weights, str(path))


def copy_backbone_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy the ResNet-50 weights of `source` into `target` by layer name (any crops)."""
    _assign_by_name(_core(target), _weights_of(_core(source)), f"model {source.name!r}")


def save_notop_weights(model_or_backbone: keras.Model, path: str | Path) -> Path:
    """Write the model's ResNet-50 weights as a notop file that Keras itself loads.

    `path` ending in `.weights.h5` gives Keras 3's format; any other `.h5` gives the Keras 2
    layout of Keras's ImageNet file (what `ResNet50(weights=<file>)` loads by topology, since
    Keras picks the format from the suffix). Both load with
    `keras.applications.ResNet50(include_top=False, weights=<file>)` and with
    `load_backbone_weights`. Heads and pooling layers are not written.
    """
    path = Path(path)
    if path.suffix not in (".h5", ".hdf5"):
        raise ValueError(f"Weight files end in .h5 or .weights.h5, got {path.name!r}.")
    check_resnet50(model_or_backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".weights.h5"):
        # Keras 3's format follows the saving model's structure: save from a fresh ResNet-50,
        # whatever the source layout (flat, nested, with a head).
        reference = _resnet50_notop(_MIN_CROP)
        copy_backbone_weights(model_or_backbone, reference)
        reference.save_weights(path)
        return path
    # Keras 2 layout, written in the layer order of a fresh Keras ResNet-50 (Keras's loader
    # matches layers by position), all layers listed as in Keras's own file.
    core = _core(model_or_backbone)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode("utf8") for name, _ in _reference_layers()]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = keras.__version__.encode("utf8")
        for name, weights in _reference_layers():
            group = f.create_group(name)
            # Weightless layers are listed but left empty (their names, e.g. of the input layer,
            # differ between models and do not matter to the loaders).
            variables = {v.name: v for v in core.get_layer(name).weights} if weights else {}
            names = [f"{name}/{weight_name}:0" for weight_name, _ in weights]
            group.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for full_name, (weight_name, _) in zip(names, weights):
                value = keras.ops.convert_to_numpy(variables[weight_name]).astype("float32")
                group.create_dataset(full_name, data=value)
    return path


# --- Loading whole models --------------------------------------------------------------------


def _weights_only(path: Path, crop: int) -> keras.Model:
    backbone = backbone_of(_resnet50_notop(crop))
    load_backbone_weights(backbone, path)
    return backbone


def load_model_file(path: str | Path, *, crop: int = protocol.PAPER_CROP) -> keras.Model:
    """Load a model file safely and check that it holds a Keras ResNet-50.

    - `.keras`: the whole model, through `model_safety.load_model` (its config scanned for
      Lambda and non-Keras layers before anything is deserialised, then `safe_mode=True`,
      then the built model scanned again; ModelError naming the layer), uncompiled.
    - `.h5`/`.hdf5` with a model config: the whole legacy model, the same way.
    - `.h5` without one, or `.weights.h5`: a notop weight file, returned as a backbone
      (ResNet-50 + "avg_pool", 2048-d output) at input size `crop`; only arrays are read.

    Then `check_resnet50` runs.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"Model file {path} does not exist. Check the path.")
    if path.name.endswith(".weights.h5"):
        model = _weights_only(path, crop)
    elif path.suffix in (".keras", ".h5", ".hdf5"):
        try:
            config = model_safety.read_config(path)
            model = (_weights_only(path, crop) if config is None
                     else model_safety.load_model(path, config))
        except model_safety.ModelFileError as exc:
            raise ModelError(str(exc)) from exc
    else:
        raise ModelError(
            f"{path}: unsupported model file type {path.suffix!r}. Save models as .keras (or "
            "legacy .h5), or backbone weights as .h5/.weights.h5."
        )
    check_resnet50(model)
    return model


# --- Preprocessing lineage ---------------------------------------------------------------------


def preprocessing_for(lineage: str, override: str | None = None) -> str:
    """Input preprocessing for a model whose weights started at `lineage`.

    ImageNet lineage (Keras ImageNet weights and everything fine-tuned from them) defaults to
    "imagenet-rgb" (means subtracted in RGB order, as the authors did); "imagenet-caffe" (Keras's
    own BGR preprocessing, what the weights were trained with) and "unit" may be chosen. Every
    other lineage (scratch, ImageNet-100 from scratch, ...) uses "unit" ([0, 1] pixels); an
    ImageNet mode is refused there, since such weights never saw mean-subtracted inputs.
    """
    if override is not None:
        pipeline.check_preprocessing(override)
    if lineage == "imagenet":
        return override or DEFAULT_PREPROCESSING["imagenet"]
    if override not in (None, "unit"):
        raise ValueError(
            f"Preprocessing {override!r} is for ImageNet-lineage models; lineage {lineage!r} "
            "uses 'unit'."
        )
    return "unit"


# --- Precision and distribution --------------------------------------------------------------


def enable_op_determinism() -> None:
    """TensorFlow's op determinism (`RSSC_OP_DETERMINISM`): same seed, same bits, resumed or not.

    Our tf.data pipelines and augmentation are already seeded and ordered; this makes the
    kernels deterministic too (on a GPU: slower ones, or an error naming an op without one).
    """
    tf.config.experimental.enable_op_determinism()


def set_precision(precision: Literal["float32", "mixed"]) -> str:
    """Set Keras's global dtype policy and return its name.

    "mixed" is mixed_float16 when a GPU is visible (tensor cores) and mixed_bfloat16 on CPU
    (float16 is slow or unsupported there). The head stays float32 either way.
    """
    if precision == "float32":
        policy = "float32"
    elif precision == "mixed":
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    else:
        raise ValueError(f"precision must be 'float32' or 'mixed', got {precision!r}.")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def make_strategy(
    kind: Literal["auto", "mirrored", "multiworker"] = "auto",
) -> tf.distribute.Strategy:
    """auto: MirroredStrategy with more than one GPU, else the default (no-op) strategy."""
    if kind == "auto":
        if len(tf.config.list_physical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be 'auto', 'mirrored' or 'multiworker', got {kind!r}.")
