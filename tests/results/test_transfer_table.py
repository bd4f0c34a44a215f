"""The "Transfer to NAME" table on constructed runs: values, ranks, gains with their paired
bootstrap intervals (checked against exact binomial quantiles), the answer's verdicts, quick
profiles kept out of the answer, and every output format. No training, no tracking store."""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import pytest
from scipy import stats

from rssc_mlflow.results import findings as fl
from rssc_mlflow.results import transfer_table as tt
from rssc_mlflow.results.summarize import RunRecord
from rssc_mlflow.tracking.predictions import make

TARGET = "rsscn7"  # a catalog key outside the paper: 7 classes, single-label
N = 400


def _predictions(correct: np.ndarray, run_id: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, len(correct))
    pred = np.where(correct, y, (y + 1) % 7)
    probs = np.full((len(correct), 7), 0.05, np.float32)
    probs[np.arange(len(correct)), pred] = 0.7
    return make(probs, y, [f"c/{i:04d}.jpg" for i in range(len(correct))],
                split_digest="split-a", dataset_digest="data-a", run_id=run_id)


def _world(correct: dict[tuple[str, str], np.ndarray], profile: str = "paper"):
    """(records, loader) for runs whose per-image correctness is `correct[(stage, source)]`."""
    records, preds = [], {}
    for i, ((stage, source), ok) in enumerate(correct.items()):
        run_id = f"r{i}-{stage}-{source}"
        preds[run_id] = _predictions(ok, run_id)
        records.append(RunRecord(run_id=run_id, stage=stage, source=source, target=TARGET,
                                 fingerprint=f"fp-{stage}-{source}", synthetic=False, seed="42",
                                 start_time=i, metrics={"test_accuracy": float(ok.mean())},
                                 profile=profile, has_predictions=True))
    return records, preds.get


def _mask(*ranges: tuple[int, int]) -> np.ndarray:
    out = np.zeros(N, bool)
    for a, b in ranges:
        out[a:b] = True
    return out


# Fine-tuning: scratch right on 200, ImageNet-1k on 320 (a superset), RESISC45 on 360 (a
# superset of ImageNet's). Probes: ImageNet-1k 240, RESISC45 280.
HOLDS_WORLD = {
    ("finetune", "scratch"): _mask((0, 200)),
    ("finetune", "imagenet"): _mask((0, 320)),
    ("finetune", "resisc45"): _mask((0, 360)),
    ("probe", "imagenet"): _mask((0, 240)),
    ("probe", "resisc45"): _mask((0, 280)),
}


def _binomial_interval(k: int) -> tuple[float, float]:
    """A - B when A is right on exactly k more images than B and never wrong where B is
    right: each resample's difference is 100 * Binomial(N, k/N) / N."""
    return tuple(100 * stats.binom.ppf(q, N, k / N) / N for q in (0.025, 0.975))


def test_values_ranks_gains_and_the_answer():
    records, load = _world(HOLDS_WORLD)
    t = tt.build(TARGET, records, load, multilabel_metric="f1_micro")
    assert [r.source for r in t.rows] == ["resisc45", "imagenet", "scratch"]
    by = {r.source: r for r in t.rows}
    assert by["resisc45"].cells["finetune"].mean == pytest.approx(90.0)
    assert by["scratch"].cells["probe"] is None  # n/a: no probe of a random network
    assert by["resisc45"].ranks == {"probe": 1, "finetune": 1}
    assert by["imagenet"].ranks == {"probe": 2, "finetune": 2}
    assert by["scratch"].ranks == {"probe": None, "finetune": 3}

    gain = by["resisc45"].gains[("finetune", "imagenet")].outcome
    assert gain.difference == pytest.approx(10.0)
    low, high = _binomial_interval(40)
    assert gain.low == pytest.approx(low, abs=100 / N)
    assert gain.high == pytest.approx(high, abs=100 / N)
    assert gain.status == fl.HOLDS and gain.pairs == 1 and gain.images == N
    # Probe gains over scratch compare with fine-tuning from scratch.
    probe = by["resisc45"].gains[("probe", "scratch")].outcome
    assert probe.difference == pytest.approx(100 * (280 - 200) / N)
    assert probe.run_ids_b == by["scratch"].cells["finetune"].run_ids
    # ImageNet over scratch, exactly 120 more images right.
    pays = by["imagenet"].gains[("finetune", "scratch")].outcome
    low, high = _binomial_interval(120)
    assert pays.low == pytest.approx(low, abs=100 / N)
    assert pays.high == pytest.approx(high, abs=100 / N)
    # The interval is the Findings' bootstrap with the seed named by the comparison.
    again = fl.paired_bootstrap(
        [(load(by["imagenet"].cells["finetune"].run_ids[0]),
          load(by["scratch"].cells["finetune"].run_ids[0]))], "accuracy",
        seed=tt.bootstrap_seed(fl.BOOTSTRAP_SEED,
                               tt.bootstrap_label(TARGET, "finetune", "imagenet", "scratch")))
    assert (again.low, again.high) == (pays.low, pays.high)

    assert t.pays_off == fl.HOLDS and t.best == "resisc45"
    assert "fine-tuning from RESISC45 is best, 90.00 %" in t.answer
    assert f"+10.00 points [95 % CI {gain.low:+.2f}, {gain.high:+.2f}] over ImageNet-1k" in t.answer
    assert ("ImageNet pre-training pays off (fine-tuning from ImageNet-1k > from scratch): "
            "holds") in t.answer
    assert "As a frozen feature extractor (probe), RESISC45 is best, 70.00 %" in t.answer


def test_imagenet_not_paying_off_is_contradicted_and_a_tie_inconclusive():
    world = dict(HOLDS_WORLD)
    world[("finetune", "scratch")] = _mask((0, 340))  # scratch beats ImageNet's 320
    t = tt.build(TARGET, *_world(world), multilabel_metric="f1_micro")
    assert t.pays_off == fl.CONTRADICTED
    assert "): contradicted, -5.00 points" in t.answer

    world[("finetune", "scratch")] = _mask((0, 318), (330, 332))  # 320 right, 2 elsewhere
    t = tt.build(TARGET, *_world(world), multilabel_metric="f1_micro")
    assert t.pays_off == fl.INCONCLUSIVE
    imagenet = next(r for r in t.rows if r.source == "imagenet")
    o = imagenet.gains[("finetune", "scratch")].outcome
    assert o.difference == pytest.approx(0.0) and o.low < 0 < o.high


def test_imagenet_best_reports_its_lead_over_the_runner_up():
    world = dict(HOLDS_WORLD)
    world[("finetune", "resisc45")] = _mask((0, 300))
    t = tt.build(TARGET, *_world(world), multilabel_metric="f1_micro")
    assert t.best == "imagenet"
    assert "fine-tuning from ImageNet-1k is best, 80.00 %; +5.00 points" in t.answer
    assert "over the runner-up, RESISC45 (the interval is above 0)" in t.answer


def test_quick_cells_are_marked_shown_and_never_answer():
    records, load = _world(HOLDS_WORLD, profile="smoke")
    t = tt.build(TARGET, records, load, multilabel_metric="f1_micro")
    assert t.pays_off == tt.NOT_ANSWERED and t.best == ""
    assert "not answered: every run comes from the quick profile smoke" in t.answer
    gain = next(r for r in t.rows if r.source == "resisc45").gains[("finetune", "imagenet")]
    assert gain.outcome.quick and gain.outcome.low is not None and not gain.counted
    assert gain.text().startswith("+10.00 [") and "†" in gain.text()
    # Quick and meaningful runs of one cell are never pooled: the meaningful ones answer.
    paper_records, paper_load = _world(HOLDS_WORLD)
    both = records + [dataclasses.replace(r, run_id=r.run_id + "p") for r in paper_records]
    preds = {r.run_id + "p": paper_load(r.run_id) for r in paper_records}
    t = tt.build(TARGET, both, lambda rid: preds.get(rid) or load(rid),
                 multilabel_metric="f1_micro")
    assert t.pays_off == fl.HOLDS and not any(c.quick for c in t.table.cells.values())


def test_missing_predictions_leave_the_margin_untested():
    records, load = _world(HOLDS_WORLD)
    scratch = next(r for r in records if r.source == "scratch")
    t = tt.build(TARGET, records, lambda rid: None if rid == scratch.run_id else load(rid),
                 multilabel_metric="f1_micro")
    assert t.pays_off == tt.NOT_ANSWERED
    assert f"not tested (no per-image predictions in run(s) {scratch.run_id})" in t.answer


def test_only_targets_outside_the_paper_get_a_table():
    records, _ = _world(HOLDS_WORLD)
    ucm = RunRecord("u", "finetune", "imagenet", "ucm", "fp", False, "42", 0,
                    {"test_accuracy": 0.5}, "paper")
    pre = RunRecord("p", "pretrain", "rsscn7", "", "fp", False, "42", 0,
                    {"test_accuracy": 0.5}, "paper")
    assert tt.transfer_targets([*records, ucm, pre]) == [TARGET]


def test_source_labels():
    assert tt.source_label("imagenet+aid") == "ImageNet-1k adapted on AID"
    assert tt.source_label("whu_rs19") == "WHU-RS19"
    assert tt.source_label("models:/rssc-resnet50-my_tiles@demo") == \
        "my_tiles (pre-trained from scratch)"
    assert tt.source_label("models:/rssc-resnet50-imagenet-my_tiles@demo") == \
        "ImageNet-1k adapted on my_tiles"


def test_every_format_carries_the_table():
    records, load = _world(HOLDS_WORLD)
    t = tt.build(TARGET, records, load, multilabel_metric="f1_micro")
    rows = list(csv.DictReader(io.StringIO(tt.render_csv(t))))
    assert len(rows) == 6 and set(rows[0]) == set(tt.CSV_FIELDS)
    ft = next(r for r in rows if r["source"] == "resisc45" and r["stage"] == "finetune")
    gain = next(r for r in t.rows if r.source == "resisc45").gains[("finetune", "imagenet")]
    assert float(ft["value"]) == pytest.approx(90.0)
    assert float(ft["vs_imagenet_low"]) == pytest.approx(gain.outcome.low, abs=1e-4)
    assert ft["vs_imagenet_verdict"] == "holds" and ft["answer_best"] == "resisc45"
    scratch = next(r for r in rows if r["source"] == "scratch" and r["stage"] == "probe")
    assert scratch["status"] == "n/a"
    md = tt.render_markdown(t, 2000)
    assert md.startswith(f"## Transfer to {TARGET}") and gain.text() in md and t.answer in md
    html = "\n".join(tt.render_html(t, 2000))
    assert f"id='transfer-{TARGET}'" in html and "n/a" in html
    tex = tt.render_latex(t, 2000)
    assert "\\begin{tabular}" in tex and "$^\\dagger$" not in tex
    text = tt.render_text(t, 2000)
    assert "Fine-tune - ImageNet-1k [95 % CI]" in text and t.answer in text
