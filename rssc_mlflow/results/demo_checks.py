"""Does the demo demonstrate? Its thresholds as data, checked on the runs it tracked.

On synthetic data the truth is known, so a demo whose backbones learned nothing, or whose
transfer does not show, is a broken pipeline, not a finding. After the grid, `rssc demo`
checks, on the runs of its profile:

- the ImageNet stand-in (trained without a run) scores at least 50 % on its held-out images;
- every pre-trained model (pretrain and adapt) scores at least 50 % accuracy on its held-out
  split; a multi-label one at least 15 points of F1-micro above the label-prior baseline
  (each label predicted from its training frequency), which its run logs;
- on the target (UCM), fine-tuning from every pre-trained source beats fine-tuning from
  scratch by at least 20 points, and every probe reaches at least 3x chance.

A check with several seeds uses their mean. Missing runs are reported as missing, never passed.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence

from rssc_mlflow.data.catalog import get_spec
from rssc_mlflow.results.summarize import PRIOR_METRIC, RunRecord
from rssc_mlflow.settings import SOURCE_STAGES, TRANSFER_RESULT_STAGES

MIN_HELD_OUT_ACCURACY = 0.50
MIN_F1_OVER_PRIOR = 0.15  # multi-label: F1-micro minus the label-prior baseline's
MIN_FINETUNE_GAIN = 0.20  # target: fine-tuned from a source minus from scratch
MIN_PROBE_CHANCE_MULTIPLE = 3.0
TARGET = "ucm"


@dataclasses.dataclass(frozen=True)
class Check:
    what: str
    measured: float | None  # None: no run to measure it
    required: float
    unit: str = "%"  # "%" (a fraction shown in percent) or "pts" (a difference in points)

    @property
    def ok(self) -> bool:
        # The tolerance only absorbs float rounding (0.60 - 0.45 is 0.1499...).
        return self.measured is not None and self.measured >= self.required - 1e-9

    def row(self) -> tuple[str, str, str, str]:
        shown = "missing" if self.measured is None else _show(self.measured, self.unit)
        return (self.what, shown, ">= " + _show(self.required, self.unit),
                "ok" if self.ok else "FAILED")


def _show(value: float, unit: str) -> str:
    return f"{100 * value:.1f} %" if unit == "%" else f"{100 * value:+.1f} pts"


def _means(records: Iterable[RunRecord], profile: str) -> dict[tuple[str, str, str], dict]:
    """(stage, source, target) -> metric -> mean over the profile's runs."""
    values: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for r in records:
        if r.profile == profile:
            for k, v in r.metrics.items():
                values[(r.stage, r.source, r.target)][k].append(v)
    return {cell: {k: statistics.fmean(v) for k, v in m.items()} for cell, m in values.items()}


def _pretrained(cells: dict, stage: str, source: str) -> Check:
    metrics = cells.get((stage, source, ""), {})
    what = f"{stage} {source}: held-out"
    if get_spec(source).multilabel:
        f1, prior = metrics.get("test_f1_micro"), metrics.get(PRIOR_METRIC)
        gain = None if f1 is None or prior is None else f1 - prior
        return Check(f"{what} F1-micro over the label prior", gain, MIN_F1_OVER_PRIOR, "pts")
    return Check(f"{what} accuracy", metrics.get("test_accuracy"), MIN_HELD_OUT_ACCURACY)


def demo_checks(records: Sequence[RunRecord], standin_accuracy: float | None,
                profile: str = "demo", target: str = TARGET) -> list[Check]:
    """Every check of the module doc, on `records` of `profile` (stages as tagged)."""
    cells = _means(records, profile)
    checks = [Check("ImageNet stand-in: held-out accuracy", standin_accuracy,
                    MIN_HELD_OUT_ACCURACY)]
    checks += [_pretrained(cells, stage, source) for stage, source, _ in sorted(cells)
               if stage in SOURCE_STAGES]
    scratch = cells.get(("finetune", "scratch", target), {}).get("test_accuracy")
    for stage, source, tgt in sorted(cells):
        if tgt != target or stage not in TRANSFER_RESULT_STAGES or source == "scratch":
            continue
        accuracy = cells[(stage, source, tgt)].get("test_accuracy")
        if stage == "finetune":
            gain = None if accuracy is None or scratch is None else accuracy - scratch
            checks.append(Check(f"finetune {source} -> {target} minus scratch", gain,
                                MIN_FINETUNE_GAIN, "pts"))
        else:
            chance = 1 / get_spec(target).num_classes
            checks.append(Check(f"probe {source} -> {target} (3x chance)", accuracy,
                                MIN_PROBE_CHANCE_MULTIPLE * chance))
    return checks


def render(checks: Sequence[Check]) -> str:
    rows = [("check", "measured", "required", "")] + [c.row() for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    failed = sum(not c.ok for c in checks)
    verdict = (f"all {len(checks)} checks pass" if not failed else
               f"{failed} of {len(checks)} checks FAILED: the demo does not show what it must")
    return "\n".join(["Demo checks (synthetic data: the truth is known)", *lines, verdict])
