"""`rssc weights list` shows each version's aliases; user dataset keys resolve like catalog keys."""

from __future__ import annotations

import mlflow
import pytest

from rssc_mlflow.errors import ModelError
from rssc_mlflow.tracking import registry


def test_list_models_shows_the_aliases_of_each_version():
    client = mlflow.MlflowClient()
    name = registry.registered_name("ucm")
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source="file:///nowhere/model")
    client.set_registered_model_alias(name, "demo", "1")
    client.set_registered_model_alias(name, "paper", "2")
    client.set_registered_model_alias(name, "smoke", "2")
    rows = {r["version"]: r["aliases"] for r in registry.list_models()}
    assert rows == {"1": ["demo"], "2": ["paper", "smoke"]}


def test_a_key_that_is_no_dataset_is_an_unknown_source():
    assert registry._is_dataset_key("ucm") and not registry._is_dataset_key("nope")
    with pytest.raises(ModelError, match="Unknown source 'nope'"):
        registry.resolve_source("nope", profile="smoke")
