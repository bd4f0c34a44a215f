"""tensorflow-datasets builders for the catalog's datasets (manual download only).

All five MLRSNet keys share one builder (`RsscMlrsnet`): the dataset is stored once and the
keys are views of it (see `rssc_mlflow.data.prepare`). A user's dataset (`rssc datasets add`)
gets a builder class of its own, made from `builders.user.RsscUserBuilder`, stored under
`rssc_user_<name>` so it never shares a folder with a catalog dataset.
"""

from __future__ import annotations

from rssc_mlflow.data.catalog import get_spec

VERSION = "1.0.0"  # of every rssc builder; the prepared data lives in <tfds_dir>/<name>/VERSION

# Builder module and class per stored dataset; imported lazily because TFDS imports TensorFlow.
_BUILDERS: dict[str, tuple[str, str]] = {
    "mlrsnet": ("rssc_mlflow.data.builders.mlrsnet", "RsscMlrsnet"),
    "resisc45": ("rssc_mlflow.data.builders.folder_per_class", "RsscResisc45"),
    "patternnet": ("rssc_mlflow.data.builders.folder_per_class", "RsscPatternnet"),
    "aid": ("rssc_mlflow.data.builders.folder_per_class", "RsscAid"),
    "ucm": ("rssc_mlflow.data.builders.folder_per_class", "RsscUcm"),
    "rsicb256": ("rssc_mlflow.data.builders.folder_per_class", "RsscRsicb256"),
    "imagenet100": ("rssc_mlflow.data.builders.imagenet100", "RsscImagenet100"),
    "whu_rs19": ("rssc_mlflow.data.builders.folder_per_class", "RsscWhuRs19"),
    "rsscn7": ("rssc_mlflow.data.builders.folder_per_class", "RsscRsscn7"),
    "eurosat": ("rssc_mlflow.data.builders.folder_per_class", "RsscEurosat"),
}


def stored_key(key: str) -> str:
    """The stored dataset a catalog key reads: 'mlrsnet' for the five MLRSNet keys."""
    return "mlrsnet" if get_spec(key).is_mlrsnet else key


def tfds_name(key: str) -> str:
    """The TFDS dataset name (folder under `config.tfds_dir()`) that holds `key`'s images."""
    if get_spec(key).origin == "user":
        return f"rssc_user_{key}"
    return f"rssc_{stored_key(key)}"


def builder_class(key: str):  # -> type[RsscBuilder], untyped to keep TFDS out of this import
    import importlib

    if get_spec(key).origin == "user":
        from rssc_mlflow.data.builders.user import builder_for

        return builder_for(key)
    module, name = _BUILDERS[stored_key(key)]
    return getattr(importlib.import_module(module), name)
