"""The demo's checks: each threshold at its edge, means over seeds, missing runs never pass."""

from __future__ import annotations

import pytest

from rssc_mlflow.results.demo_checks import Check, demo_checks, render
from rssc_mlflow.results.summarize import RunRecord


def record(stage: str, source: str, target: str = "", profile: str = "demo", seed: str = "42",
           **metrics: float) -> RunRecord:
    return RunRecord(run_id=f"{stage}-{source}-{target}-{seed}", stage=stage, source=source,
                     target=target, fingerprint="f", synthetic=True, seed=seed, start_time=0,
                     metrics=metrics, profile=profile)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.what: c for c in checks}


def test_thresholds_at_their_edges() -> None:
    records = [
        record("pretrain", "resisc45", test_accuracy=0.50),  # exactly 50 %: passes
        record("pretrain", "aid", test_accuracy=0.4999),
        record("pretrain", "mlrsnet_ml", test_f1_micro=0.60, test_prior_f1_micro=0.45),
        record("adapt", "mlrsnet_ml", test_f1_micro=0.59, test_prior_f1_micro=0.45),
        record("finetune", "scratch", "ucm", test_accuracy=0.10),
        record("finetune", "aid", "ucm", test_accuracy=0.30),  # +20 points: passes
        record("finetune", "resisc45", "ucm", test_accuracy=0.29),
        record("probe", "aid", "ucm", test_accuracy=3 / 21),  # 3x chance of 21 classes
        record("probe", "resisc45", "ucm", test_accuracy=3 / 21 - 1e-6),
        record("pretrain", "patternnet", profile="smoke", test_accuracy=0.0),  # other profile
    ]
    checks = by_name(demo_checks(records, standin_accuracy=0.5))
    assert checks["ImageNet stand-in: held-out accuracy"].ok
    assert checks["pretrain resisc45: held-out accuracy"].ok
    assert not checks["pretrain aid: held-out accuracy"].ok
    ml = "held-out F1-micro over the label prior"
    assert checks[f"pretrain mlrsnet_ml: {ml}"].measured == pytest.approx(0.15)
    assert checks[f"pretrain mlrsnet_ml: {ml}"].ok
    assert not checks[f"adapt mlrsnet_ml: {ml}"].ok  # 14 points
    assert checks["finetune aid -> ucm minus scratch"].ok
    assert not checks["finetune resisc45 -> ucm minus scratch"].ok
    assert checks["probe aid -> ucm (3x chance)"].ok
    assert not checks["probe resisc45 -> ucm (3x chance)"].ok
    assert not any("patternnet" in name for name in checks)  # another profile's run


def test_seeds_are_averaged_and_missing_values_fail() -> None:
    records = [record("pretrain", "aid", seed="1", test_accuracy=0.40),
               record("pretrain", "aid", seed="2", test_accuracy=0.62),
               record("finetune", "aid", "ucm", test_accuracy=0.9),  # no scratch run
               record("pretrain", "mlrsnet_ml", test_f1_micro=0.9)]  # no prior logged
    checks = by_name(demo_checks(records, standin_accuracy=None))
    assert checks["pretrain aid: held-out accuracy"].measured == pytest.approx(0.51)
    for name in ("ImageNet stand-in: held-out accuracy", "finetune aid -> ucm minus scratch",
                 "pretrain mlrsnet_ml: held-out F1-micro over the label prior"):
        assert checks[name].measured is None and not checks[name].ok
    text = render(list(checks.values()))
    assert "3 of 4 checks FAILED" in text and "missing" in text
    assert "51.0 %" in text and ">= 50.0 %" in text


def test_render_all_pass() -> None:
    text = render([Check("finetune aid -> ucm minus scratch", 0.25, 0.20, "pts")])
    assert "+25.0 pts" in text and ">= +20.0 pts" in text and text.endswith("all 1 checks pass")
