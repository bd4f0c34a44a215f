"""The builder of a user's dataset (`rssc datasets add`): one class per registered name.

`filename` is relative to the registered folder ("vegetation/Dense Forest/0001.jpg"). A
multi-label dataset also stores `labels` (multi-hot, in the order of its CSV header) and, as
`label`, its first positive label, which splits stratify by.
"""

from __future__ import annotations

import functools
import types
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from rssc_mlflow.data import user_datasets
from rssc_mlflow.data.builders.base import RsscBuilder
from rssc_mlflow.data.builders.common import BuildPlan, Item


class RsscUserBuilder(RsscBuilder, skip_registration=True):
    """Subclassed per dataset by `builder_for` (KEY and the TFDS name set there)."""

    @classmethod
    def scan(cls, manual_dir: Path | None) -> BuildPlan:
        return user_datasets.scan(cls.KEY, manual_dir)

    def _features(self) -> dict[str, tfds.features.FeatureConnector]:
        features = super()._features()
        if self.spec().multilabel:
            features["labels"] = tfds.features.Tensor(shape=(self.spec().num_classes,),
                                                      dtype=np.uint8)
        return features

    def _example(self, item: Item, encoded: bytes) -> dict[str, Any]:
        example = super()._example(item, encoded)
        if item.labels is not None:
            example["labels"] = np.asarray(item.labels, dtype=np.uint8)
        return example


@functools.cache
def builder_for(key: str) -> type[RsscUserBuilder]:
    """The builder class of user dataset `key`, stored as `rssc_user_<key>`."""
    name = f"{user_datasets.TFDS_PREFIX}{key}"
    return types.new_class(f"RsscUser_{key}", (RsscUserBuilder,), {"skip_registration": True},
                           lambda ns: ns.update({"KEY": key, "name": name, "__module__": __name__}))
