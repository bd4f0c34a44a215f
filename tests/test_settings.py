"""A run's effective parameters and its protocol fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from rssc_mlflow import protocol
from rssc_mlflow.errors import RsscError
from rssc_mlflow.settings import protocol_fingerprint, resolve_settings


def fingerprint(settings, **extra) -> str:
    args = dict(preprocessing="unit", peak_lr=3e-3, synthetic=False, warmup_epochs=5)
    return protocol_fingerprint(settings, **{**args, **extra})


def v1_fingerprint(settings) -> str:
    """Version 1's content, written out: runs logged before the switches keep their cells."""
    comparable = {
        "version": 1, "stage": settings.stage, "epochs": settings.epochs,
        "batch_size": settings.batch_size, "crop": settings.image_size,
        "resize": settings.resize, "peak_lr": 3e-3, "warmup_epochs": 5,
        "decay_epochs": [50, 70, 90], "decay_factor": 0.2, "preprocessing": "unit",
        "train_fraction": {"source": 0.8, "target": 0.2}, "split": "stratified",
        "solver": None, "standardize": None, "synthetic": False, "upstream": "",
    }
    return hashlib.sha256(json.dumps(comparable, sort_keys=True).encode()).hexdigest()[:16]


def test_schedule_steps_is_a_training_parameter() -> None:
    finetune = resolve_settings("finetune", source="scratch", target="ucm")
    assert finetune.schedule_steps == "paper"
    assert finetune.as_params(peak_lr=3e-3, preprocessing="unit")["schedule_steps"] == "paper"
    authors = resolve_settings("pretrain", source="ucm", schedule_steps="authors")
    assert authors.as_params(peak_lr=3e-3, preprocessing="unit")["schedule_steps"] == "authors"
    probe = resolve_settings("probe", source="imagenet", target="ucm")
    assert "schedule_steps" not in probe.as_params(peak_lr=1e-3, preprocessing="unit")


def test_unknown_schedule_steps_is_refused_by_name() -> None:
    with pytest.raises(RsscError, match=r"schedule_steps='author'.*paper, authors"):
        resolve_settings("finetune", source="scratch", target="ucm", schedule_steps="author")


def test_authors_schedule_steps_is_another_cell_and_paper_keeps_old_cells() -> None:
    paper = resolve_settings("finetune", source="scratch", target="ucm")
    authors = resolve_settings("finetune", source="scratch", target="ucm",
                               schedule_steps="authors")
    assert fingerprint(paper) == v1_fingerprint(paper)
    assert fingerprint(authors) != fingerprint(paper)
    assert protocol.SCHEDULE_STEPS == ("paper", "authors")


def test_float32_on_one_replica_keeps_the_old_fingerprint() -> None:
    finetune = resolve_settings("finetune", source="scratch", target="ucm")
    assert fingerprint(finetune) == v1_fingerprint(finetune)
    assert fingerprint(finetune, replicas=1) == v1_fingerprint(finetune)


def test_mixed_precision_and_several_replicas_are_other_cells() -> None:
    float32 = resolve_settings("finetune", source="scratch", target="ucm")
    mixed = resolve_settings("finetune", source="scratch", target="ucm", precision="mixed")
    four_gpus = fingerprint(float32, replicas=4)
    assert len({fingerprint(float32), fingerprint(mixed), four_gpus,
                fingerprint(mixed, replicas=4)}) == 4
    assert fingerprint(float32, replicas=2) != four_gpus


def test_pool_precision_leaves_precision_and_replicas_out() -> None:
    float32 = resolve_settings("finetune", source="scratch", target="ucm")
    mixed = resolve_settings("finetune", source="scratch", target="ucm", precision="mixed")
    pooled = {fingerprint(s, replicas=r, pool_precision=True)
              for s in (float32, mixed) for r in (1, 4)}
    assert pooled == {v1_fingerprint(float32)}


def test_replicas_count_only_for_training_stages() -> None:
    # A probe trains no network on several GPUs: its replicas argument changes nothing.
    probe = resolve_settings("probe", source="imagenet", target="ucm")
    assert fingerprint(probe, replicas=4) == fingerprint(probe)
    mixed = resolve_settings("probe", source="imagenet", target="ucm", precision="mixed")
    assert fingerprint(mixed) != fingerprint(probe)  # mixed-precision features round otherwise


def test_the_stage_lists_are_subsets_of_the_one_stage_enum():
    from rssc_mlflow import settings as s

    assert s.STAGES == tuple(s.Stage) == ("pretrain", "adapt", "extract", "probe", "finetune")
    assert all(isinstance(stage, s.Stage) for group in (
        s.STAGES, s.TRAINING_STAGES, s.TRANSFER_STAGES, s.SOURCE_STAGES, s.RESULT_STAGES,
        s.TRANSFER_RESULT_STAGES) for stage in group)
    assert set(s.SOURCE_STAGES) < set(s.TRAINING_STAGES) < set(s.STAGES)
    assert set(s.TRANSFER_STAGES) < set(s.STAGES)
    assert set(s.RESULT_STAGES) == set(s.STAGES) - {"extract"}
    assert s.TRANSFER_RESULT_STAGES == ("probe", "finetune")  # the transfer table's order


def test_a_stage_is_the_plain_string_that_tags_and_commands_carry():
    import json
    import pickle

    from rssc_mlflow.settings import STAGES, Stage

    for stage in Stage:
        plain = stage.value
        assert stage == plain and str(stage) == f"{stage}" == plain and hash(stage) == hash(plain)
        assert plain in STAGES and {plain: 1}[stage] == 1  # a tag read back finds its member
        assert Stage(plain) is stage and pickle.loads(pickle.dumps(stage)) is stage
    assert json.dumps({Stage.PROBE: [Stage.FINETUNE]}) == '{"probe": ["finetune"]}'
    assert [s.short for s in Stage] == ["pre", "adapt", "feat", "probe", "ft"]


def test_the_demo_profiles_init_choices_are_part_of_its_training_cells(monkeypatch) -> None:
    """BN momentum and zero-init residuals depart from the paper: a training run's cell
    changes with each, a probe's does not (it trains no network), and the paper keeps its."""
    demo = protocol.get_profile("demo")
    assert demo.zero_init_residual and demo.bn_momentum == 0.9
    assert not protocol.get_profile("paper").zero_init_residual
    settings = {stage: resolve_settings(stage, source="scratch", target="ucm", profile="demo")
                for stage in ("finetune", "probe")}
    keys = {stage: fingerprint(s) for stage, s in settings.items()}
    for change in ({"zero_init_residual": False}, {"bn_momentum": None}):
        monkeypatch.setitem(protocol.PROFILES, "demo", dataclasses.replace(demo, **change))
        assert fingerprint(settings["finetune"]) != keys["finetune"], change
        assert fingerprint(settings["probe"]) == keys["probe"], change
