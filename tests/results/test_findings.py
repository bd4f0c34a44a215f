"""The paired bootstrap and the verdicts of `results.findings`, on constructed predictions.

Intervals are checked against scipy.stats.bootstrap (paired, percentile), against exact
binomial quantiles where the construction makes the bootstrap distribution binomial, and
against scikit-learn's F1 on explicit resamples. Two Monte Carlo estimates of the same
percentile differ by sampling noise: with R resamples the 2.5 % quantile of a distribution of
spread sigma has a standard error of about sqrt(0.025 * 0.975 / R) / phi(1.96) * sigma
(~0.03 sigma at R = 20,000, ~0.085 sigma at R = 1,000), and the differences of accuracies move
in steps of 100 / n points; the tolerances below allow four standard errors plus one step.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from rssc_mlflow.data.catalog import get_spec
from rssc_mlflow.results import findings as fl
from rssc_mlflow.results import paper
from rssc_mlflow.tracking.predictions import Predictions, make


def _single(correct: np.ndarray, classes: int = 4, *, files=None, split="split-1",
            seed: int = 0) -> Predictions:
    """Predictions right exactly where `correct` is True (labels drawn at random)."""
    rng = np.random.default_rng(seed)
    n = len(correct)
    y = rng.integers(0, classes, n)
    wrong = (y + rng.integers(1, classes, n)) % classes
    pred = np.where(correct, y, wrong)
    probs = np.full((n, classes), 0.1)
    probs[np.arange(n), pred] = 0.7
    names = files if files is not None else [f"img_{i:04d}.jpg" for i in range(n)]
    return make(probs, y, names, split_digest=split, dataset_digest="data-1")


def _multi(n: int, labels: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < 0.25).astype(np.uint8)
    y[0] = 0  # an image without labels: f1_samples scores it 0 when nothing is predicted
    probs = np.clip(y * 0.8 + rng.normal(0, noise, (n, labels)), 0, 1)
    probs[0] = 0.1
    return y, probs


@pytest.fixture(params=["unique-rows", "index"])
def resampling_path(request, monkeypatch):
    """Both ways of drawing resamples: a multinomial over unique per-image rows, or indices."""
    if request.param == "index":
        monkeypatch.setattr(fl, "_UNIQUE_FRACTION", 0.0)
    return request.param


# --- The interval ------------------------------------------------------------------------------


def test_interval_agrees_with_scipy_paired_percentile_bootstrap(resampling_path):
    rng = np.random.default_rng(1)
    n = 200
    ca, cb = rng.random(n) < 0.8, rng.random(n) < 0.7
    a, b = _single(ca), _single(cb)
    ours = fl.paired_bootstrap([(a, b)], "accuracy", resamples=20_000, seed=3)
    ref = stats.bootstrap((ca.astype(float), cb.astype(float)),
                          lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
                          paired=True, method="percentile", n_resamples=20_000,
                          vectorized=True, rng=np.random.default_rng(4))
    sigma = 100 * ref.standard_error
    tol = 4 * 0.03 * sigma + 100 / n
    assert ours.difference == pytest.approx(100 * (ca.mean() - cb.mean()), abs=1e-9)
    assert ours.low == pytest.approx(100 * ref.confidence_interval.low, abs=tol)
    assert ours.high == pytest.approx(100 * ref.confidence_interval.high, abs=tol)
    assert (ours.pairs, ours.images, ours.resamples) == (1, n, 20_000)


def test_b_right_on_k_more_images_gives_the_exact_binomial_interval(resampling_path):
    n, k = 400, 30
    ca = np.zeros(n, bool)
    ca[:250] = True
    cb = ca.copy()
    cb[250:250 + k] = True  # B is right on exactly k more images, A never on one B misses
    interval = fl.paired_bootstrap([(_single(ca), _single(cb))], "accuracy", resamples=20_000,
                                   seed=5)
    assert interval.difference == pytest.approx(-100 * k / n, abs=1e-9)
    # Each resample's A - B is -(discordant images drawn)/n, discordant ~ Binomial(n, k/n).
    low = -100 * stats.binom.ppf(0.975, n, k / n) / n
    high = -100 * stats.binom.ppf(0.025, n, k / n) / n
    assert interval.low == pytest.approx(low, abs=100 / n + 1e-9)
    assert interval.high == pytest.approx(high, abs=100 / n + 1e-9)
    assert fl.verdict(interval.low, interval.high, "greater") == fl.CONTRADICTED


def test_several_seeds_resample_within_each_and_average(resampling_path):
    # Seed 1: 300 images, B right on 24 more; seed 2: 100 images, B right on 2 more.
    (n1, k1), (n2, k2) = (300, 24), (100, 2)
    pairs = []
    for n, k, s in ((n1, k1, 1), (n2, k2, 2)):
        ca = np.zeros(n, bool)
        ca[: n // 2] = True
        cb = ca.copy()
        cb[n // 2: n // 2 + k] = True
        pairs.append((_single(ca, split=f"split-{s}", seed=s),
                      _single(cb, split=f"split-{s}", seed=s)))
    interval = fl.paired_bootstrap(pairs, "accuracy", resamples=20_000, seed=7)
    assert interval.difference == pytest.approx(-100 * (k1 / n1 + k2 / n2) / 2, abs=1e-9)
    assert interval.difference != pytest.approx(-100 * (k1 + k2) / (n1 + n2))  # not pooled
    assert (interval.pairs, interval.images) == (2, n1 + n2)
    # Independently: the average of two binomial draws per replicate.
    rng = np.random.default_rng(11)
    reps = -100 * (rng.binomial(n1, k1 / n1, 200_000) / n1
                   + rng.binomial(n2, k2 / n2, 200_000) / n2) / 2
    low, high = np.quantile(reps, [0.025, 0.975])
    sigma = reps.std()
    assert interval.low == pytest.approx(low, abs=4 * 0.03 * sigma + 50 / n2)
    assert interval.high == pytest.approx(high, abs=4 * 0.03 * sigma + 50 / n2)


@pytest.mark.parametrize("metric", ["f1_micro", "f1_samples"])
def test_multilabel_metric_from_weighted_sums_is_sklearns(metric):
    y, probs = _multi(60, 7, seed=2, noise=0.35)
    pred = make(probs, y, [f"m{i}" for i in range(60)], split_digest="s", dataset_digest="d")
    rows = fl.per_image(pred, metric)
    average = metric.removeprefix("f1_")
    full = fl.metric_from_sums(rows.sum(axis=0), 60, metric)
    assert full == pytest.approx(f1_score(y, probs > 0.5, average=average, zero_division=0),
                                 abs=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(25):  # a resample is integer weights on the images
        w = np.bincount(rng.integers(0, 60, 60), minlength=60)
        ours = fl.metric_from_sums(w @ rows, 60, metric)
        assert ours == pytest.approx(f1_score(y, probs > 0.5, average=average,
                                              zero_division=0, sample_weight=w), abs=1e-12)


@pytest.fixture(scope="module")
def multilabel_pair():
    """Two multi-label runs on 150 images and the sklearn reference interval, computed once:
    A - B in f1_micro on 1,000 explicit resamples, each scored by sklearn's f1_score."""
    n = 150
    y, pa = _multi(n, 6, seed=3, noise=0.30)
    _, pb = _multi(n, 6, seed=3, noise=0.42)
    pb = np.clip(pb + np.random.default_rng(9).normal(0, 0.1, pb.shape), 0, 1)
    files = [f"m{i}" for i in range(n)]
    a = make(pa, y, files, split_digest="s", dataset_digest="d")
    b = make(pb, y, files, split_digest="s", dataset_digest="d")
    rng = np.random.default_rng(2)
    reps = []
    for _ in range(1000):
        idx = rng.integers(0, n, n)
        reps.append(f1_score(y[idx], pa[idx] > 0.5, average="micro", zero_division=0)
                    - f1_score(y[idx], pb[idx] > 0.5, average="micro", zero_division=0))
    reps = 100 * np.asarray(reps)
    point = 100 * (f1_score(y, pa > 0.5, average="micro")
                   - f1_score(y, pb > 0.5, average="micro"))
    return a, b, point, reps


def test_multilabel_f1_micro_interval_against_sklearn_on_resamples(resampling_path,
                                                                   multilabel_pair):
    a, b, point, reps = multilabel_pair
    ours = fl.paired_bootstrap([(a, b)], "f1_micro", resamples=1000, seed=1)
    low, high = np.quantile(reps, [0.025, 0.975])
    assert ours.difference == pytest.approx(point, abs=1e-9)
    tol = 4 * 0.12 * reps.std()  # two R = 1,000 estimates, each ~0.085 sigma
    assert ours.low == pytest.approx(low, abs=tol) and ours.high == pytest.approx(high, abs=tol)


def test_rows_are_aligned_by_file_name_and_other_images_are_refused():
    rng = np.random.default_rng(4)
    ca, cb = rng.random(120) < 0.75, rng.random(120) < 0.6
    a, b = _single(ca), _single(cb)
    order = rng.permutation(120)
    shuffled = Predictions(b.probs[order], b.y_true[order], b.files[order], b.split_digest,
                           b.dataset_digest, "run-b")
    same = fl.paired_bootstrap([(a, b)], "accuracy", seed=1)
    assert fl.paired_bootstrap([(a, shuffled)], "accuracy", seed=1) == same

    other = _single(cb, files=[f"other_{i}.jpg" for i in range(120)])
    with pytest.raises(fl.PairingError, match="different test images: 120 only in the first"):
        fl.paired_bootstrap([(a, other)], "accuracy")
    with pytest.raises(fl.PairingError, match="different splits"):
        fl.paired_bootstrap([(a, _single(cb, split="split-2"))], "accuracy")
    relabelled = Predictions(b.probs, (b.y_true + 1) % 4, b.files, b.split_digest,
                             b.dataset_digest)
    with pytest.raises(fl.PairingError, match="different true labels"):
        fl.paired_bootstrap([(a, relabelled)], "accuracy")


def test_seeded_and_at_least_1000_resamples():
    rng = np.random.default_rng(5)  # 3,000 images: quantiles fine enough to tell seeds apart
    a, b = _single(rng.random(3000) < 0.7), _single(rng.random(3000) < 0.6)
    assert (fl.paired_bootstrap([(a, b)], "accuracy", seed=[1, 2])
            == fl.paired_bootstrap([(a, b)], "accuracy", seed=[1, 2]))
    assert (fl.paired_bootstrap([(a, b)], "accuracy", seed=1)
            != fl.paired_bootstrap([(a, b)], "accuracy", seed=2))
    with pytest.raises(ValueError, match="at least 1000"):
        fl.paired_bootstrap([(a, b)], "accuracy", resamples=999)


# --- Verdicts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("low, high, greater, equal", [
    (0.5, 2.0, fl.HOLDS, fl.DIFFERS),
    (1e-9, 2.0, fl.HOLDS, fl.DIFFERS),
    (0.0, 2.0, fl.INCONCLUSIVE, fl.CONSISTENT),  # touching 0: 0 is in the interval
    (-1.0, 1.0, fl.INCONCLUSIVE, fl.CONSISTENT),
    (-2.0, 0.0, fl.INCONCLUSIVE, fl.CONSISTENT),
    (-2.0, -1e-9, fl.CONTRADICTED, fl.DIFFERS),
    (0.0, 0.0, fl.INCONCLUSIVE, fl.CONSISTENT),
])
def test_verdict_at_its_edges(low, high, greater, equal):
    assert fl.verdict(low, high, "greater") == greater
    assert fl.verdict(low, high, "equal") == equal


def test_identical_predictions_give_a_zero_interval():
    a = _single(np.random.default_rng(6).random(50) < 0.5)
    interval = fl.paired_bootstrap([(a, a)], "accuracy")
    assert (interval.difference, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert fl.verdict(interval.low, interval.high, "greater") == fl.INCONCLUSIVE
    assert fl.verdict(interval.low, interval.high, "equal") == fl.CONSISTENT


# --- The claims ----------------------------------------------------------------------------------


def test_every_claim_compares_two_defined_cells_of_the_layouts():
    counts = {f.key: len(f.comparisons) for f in fl.FINDINGS}
    # 6 sources; 34 HRRS cells of Figure 1 x 2 ImageNet baselines; 41 Figure 2 cells
    # (scratch and 6 HRRS rows); 14 domain-adapted cells in Figure 3a and in Figure 3b.
    assert counts == {"table2": 6, "figure1": 68, "figure2": 41, "figure3a": 14,
                      "figure3b": 14, "table3": 2, "table4": 2}
    for finding in fl.FINDINGS:
        assert finding.source and finding.title
        for comp in finding.comparisons:
            for ref in (comp.a, comp.b):
                assert paper.get_layout(ref.layout).cell(ref.row, ref.col) is not None, ref
            a = paper.get_layout(comp.a.layout).cell(comp.a.row, comp.a.col)
            b = paper.get_layout(comp.b.layout).cell(comp.b.row, comp.b.col)
            assert a.evaluated == b.evaluated  # the same target: the same test images
    table4 = {c.a.row: c.claim for c in fl.FINDINGS[-1].comparisons}
    assert table4 == {"mlrsnet_ucm_same": "greater", "mlrsnet_half": "equal"}


def test_figure3b_smaller_targets_are_defined_by_image_counts():
    fig3b = next(f for f in fl.FINDINGS if f.key == "figure3b")
    by_target = {c.a.col: (c.claim, c.scope) for c in fig3b.comparisons}
    for target, (claim, scope) in by_target.items():
        small = get_spec(target).expected_images < fl.SMALLER_TARGET_MAX_IMAGES
        assert (claim, scope) == (("greater", "smaller targets") if small
                                  else ("equal", "larger targets"))
    assert {t for t, (c, _) in by_target.items() if c == "equal"} == {"mlrsnet_ml",
                                                                        "mlrsnet_sl"}
    assert all(c.b == fl.CellRef("figure2", "imagenet", c.a.col) for c in fig3b.comparisons)
    assert "RESISC45 (31,500), AID (10,000), UCM (2,100)" in fig3b.note
