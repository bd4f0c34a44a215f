"""The paper's findings as comparisons between cells, re-checked on the runs with intervals.

Each `Finding` is a claim of the paper (its source sentence is kept as data) made of
`Comparison`s between two cells of `paper.LAYOUTS`: "A > B" or "A = B" (no difference).
`evaluate` checks every comparison on the cells `summarize` filled, from the runs' per-image
predictions (`tracking.predictions`):

- Pairing. Two runs are paired when they have the same seed and were evaluated on the same
  test images: the same split digest and dataset digest, and the same set of file names
  (rows are aligned by file name). Anything else is refused with the reason.
- Paired bootstrap. One replicate resamples the test images with replacement, the same images
  for both runs of a pair, recomputes the metric of each run on the resample and takes the
  difference A - B. With several seeds, each replicate resamples images within each seed's
  pair independently and averages the per-seed differences over the seeds. The interval is
  the percentile interval of the replicates (95 %, `DEFAULT_RESAMPLES` replicates, a seeded
  numpy Generator; the seed is derived from the comparison, so adding a comparison changes
  no other). The reported difference is the mean over seeds of the full-sample differences.
- Metrics. Single-label: accuracy. Multi-label: the tables' metric, recomputed on each
  resample: f1_micro from per-image TP and FP + FN counts at threshold 0.5 (summed with the
  resample's weights), f1_samples from per-image F1. f1_macro, f1_weighted and map need
  per-label counts over every image (or a ranking) per resample, too slow over MLRSNet's test
  images, so their comparisons are made on f1_micro, and the output says so.
- Verdicts. A > B: holds when the whole interval is above 0, contradicted when it is all
  below 0, inconclusive when it contains 0 (an interval touching 0 contains it). A = B (the
  paper reports no difference, e.g. Table IV's 92.38 vs 92.38): consistent when the interval
  contains 0, differs otherwise.
- Not tested, never counted: a missing cell, runs without per-image predictions (the
  difference of the cell means is still shown), runs that cannot be paired, cells filled by a
  quick profile (`protocol.Profile.quick`), and real data against synthetic.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import io
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from rssc_mlflow import protocol
from rssc_mlflow.data.catalog import get_spec
from rssc_mlflow.errors import RsscError
from rssc_mlflow.results import paper
from rssc_mlflow.tracking.predictions import Predictions

if TYPE_CHECKING:
    from rssc_mlflow.results.summarize import CellResult, RunRecord, TableResult

Claim = Literal["greater", "equal"]
DEFAULT_RESAMPLES = 2000
MIN_RESAMPLES = 1000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0

HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive"
CONSISTENT, DIFFERS = "consistent", "differs"
MISSING, NO_PREDICTIONS, NOT_PAIRED = "missing", "no per-image predictions", "not paired"
QUICK, MIXED, MISMATCH = "quick profile", "real vs synthetic", "predictions disagree"
TESTED = (HOLDS, CONTRADICTED, INCONCLUSIVE, CONSISTENT, DIFFERS)
NOT_TESTED = (MISSING, NO_PREDICTIONS, NOT_PAIRED, QUICK, MIXED, MISMATCH)

# Metrics the bootstrap recomputes exactly per resample; the others fall back to f1_micro.
RESAMPLED = ("accuracy", "f1_micro", "f1_samples")
# Logged metric vs the same metric recomputed from the artifact: float32 probabilities
# reproduce the logged value to ~1e-7; more means the artifact is not that run's evaluation.
_LOGGED_TOLERANCE = 1e-6


class PairingError(RsscError):
    """Two runs' predictions are not on the same test images."""


# --- Claims, as data -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CellRef:
    layout: str  # paper.LAYOUTS key
    row: str
    col: str

    @property
    def label(self) -> str:
        layout = paper.get_layout(self.layout)
        row = next(r.label for r in layout.rows if r.key == self.row)
        col = next(c.label for c in layout.cols if c.key == self.col)
        if layout.kind == "figure":
            return f"{layout.title}: {row.partition('-')[2]} -> {col.partition('-')[2]}"
        return f"{layout.title}: {row}" + (f", {col}" if len(layout.cols) > 1 else "")


@dataclasses.dataclass(frozen=True)
class Comparison:
    a: CellRef
    b: CellRef
    claim: Claim  # "greater": A > B; "equal": the paper reports no difference
    scope: str = ""  # a part of the finding with its own claim, e.g. "smaller targets"

    @property
    def claim_text(self) -> str:
        return "A > B" if self.claim == "greater" else "A = B"

    @property
    def label(self) -> str:
        return f"{self.a.label} vs {self.b.label}"


@dataclasses.dataclass(frozen=True)
class Finding:
    key: str
    title: str
    source: str  # the paper's section and sentence(s)
    comparisons: tuple[Comparison, ...]
    note: str = ""
    short: str = ""  # the console's name for it

    @property
    def name(self) -> str:
        return self.short or self.title


HRRS_SOURCES = tuple(s for s in paper.FIGURE1_SOURCES if s not in ("imagenet", "imagenet100"))
# "Smaller" targets for Figure 3b: by the catalog's image counts. MLRSNet (109,161 images, both
# variants) is what IV.D calls the larger case; every other target has at most 31,500.
SMALLER_TARGET_MAX_IMAGES = 50_000


def _smaller(target: str) -> bool:
    return get_spec(target).expected_images < SMALLER_TARGET_MAX_IMAGES


def _defined(layout: str, row: str, col: str) -> bool:
    return paper.get_layout(layout).cell(row, col) is not None


def _findings() -> tuple[Finding, ...]:
    table2 = tuple(Comparison(CellRef("table2", s, "adapt"), CellRef("table2", s, "pretrain"),
                              "greater") for s in protocol.TABLE2)
    fig1 = tuple(Comparison(CellRef("figure1", s, t), CellRef("figure1", base, t), "greater")
                 for s in HRRS_SOURCES for t in paper.FIGURE_TARGETS
                 if _defined("figure1", s, t) for base in ("imagenet", "imagenet100"))
    fig2 = tuple(Comparison(CellRef("figure2", "imagenet", t), CellRef("figure2", s, t),
                            "greater")
                 for s in ("scratch", *HRRS_SOURCES) for t in paper.FIGURE_TARGETS
                 if _defined("figure2", s, t))
    fig3a = tuple(Comparison(CellRef("figure3a", s, t),
                             CellRef("figure1", s.partition("+")[2], t), "greater")
                  for s in paper.FIGURE3_SOURCES for t in paper.FIGURE3_TARGETS
                  if _defined("figure3a", s, t))
    fig3b = tuple(Comparison(CellRef("figure3b", s, t), CellRef("figure2", "imagenet", t),
                             "greater" if _smaller(t) else "equal",
                             "smaller targets" if _smaller(t) else "larger targets")
                  for t in paper.FIGURE3_TARGETS for s in paper.FIGURE3_SOURCES
                  if _defined("figure3b", s, t))
    smaller = ", ".join(f"{paper.PAPER_NAMES[t]} ({get_spec(t).expected_images:,})"
                        for t in paper.FIGURE3_TARGETS if _smaller(t))
    larger = ", ".join(f"{paper.PAPER_NAMES[t]} ({get_spec(t).expected_images:,})"
                       for t in paper.FIGURE3_TARGETS if not _smaller(t))
    sub = lambda layout, a, b, claim: Comparison(  # noqa: E731
        CellRef(layout, a, "ucm"), CellRef(layout, b, "ucm"), claim)
    return (
        Finding(
            "table2", "Table II: fine-tuning from ImageNet beats training from scratch on "
            "every source", "IV.A: \"From these results we can observe that fine tuning the "
            "ImageNet pretrained models outperforms training from scratch in all the cases.\"",
            table2),
        Finding(
            "figure1", "Figure 1: every HRRS-pre-trained feature extractor beats ImageNet-1k "
            "and ImageNet-100 on every target", "IV.B: \"We can see that feature extractors "
            "pre-trained on remote sensing datasets outperform feature extractors pre-trained "
            "on both ImageNet-100 and ImageNet-1k in all the cases.\"", fig1),
        Finding(
            "figure2", "Figure 2: fine-tuning from ImageNet-1k beats fine-tuning from every "
            "HRRS-pre-trained model, and from scratch, on every target", "IV.C: \"We see "
            "that pre-training on ImageNet-1k outperforms training from scratch and "
            "pre-training on HRRS datasets in all the cases, with pre-training on multi-label "
            "MLRSNet being worse by around 1%.\"", fig2,
            "The sentence names training from scratch too: its comparisons are included."),
        Finding(
            "figure3a", "Figure 3a vs Figure 1: domain-adaptive pre-training beats HRRS-only "
            "pre-training for the probe on every target", "IV.D: \"In comparison with the "
            "results in Fig. 1 we can see that, in all the cases the classification "
            "accuracies are higher than when pre-training on only HRRS images is used\"",
            fig3a, "A: the ImageNet model adapted on X (Figure 3a); B: the model pre-trained "
            "on X alone (Figure 1), same target."),
        Finding(
            "figure3b", "Figure 3b vs Figure 2: for fine-tuning, domain-adaptive pre-training "
            "improves on ImageNet-1k only on the smaller targets", "Introduction, finding 4: "
            "\"Domain-adaptive pre-training is always beneficial in the case of feature "
            "extraction, while when fine-tuning is used it improves performance only for "
            "smaller target datasets.\" IV.D: \"In both scenarios when MLRSNet is the target "
            "dataset ... the accuracies after the fine-tuning are comparable to the case when "
            "only ImageNet-1k is used for pre-training. ... Nevertheless, the best results "
            "outperform pre-training on ImageNet-1k only, although the improvements are less "
            "than 2%.\"", fig3b,
            f"B is fine-tuning from ImageNet-1k (Figure 2), the baseline IV.D compares with. "
            f"Smaller targets (fewer than {SMALLER_TARGET_MAX_IMAGES:,} images in the "
            f"catalog): {smaller}; claimed A > B (IV.D claims it for the best domain-adapted "
            f"model of each; every one is checked here). Larger targets: {larger}; claimed "
            f"no difference (\"comparable\")."),
        Finding(
            "table3", "Table III: same classes beat different classes, and all classes (half "
            "the images) beat same classes (probe on UCM)", "IV.B: \"pre-training the "
            "feature extractor on the subset with the classes present in UCM results in "
            "better classification accuracy compared to pre-training on the subset with "
            "different classes.\" ... \"When the subset with all the classes is used, the "
            "classification accuracy is additionally improved\"",
            (sub("table3", "mlrsnet_ucm_same", "mlrsnet_ucm_other", "greater"),
             sub("table3", "mlrsnet_half", "mlrsnet_ucm_same", "greater"))),
        Finding(
            "table4", "Table IV: same classes beat different classes; all classes (half the "
            "images) equal same classes (fine-tuning on UCM)", "IV.C: \"Similarly to the "
            "feature extraction case, pre-training on the subset with the same classes "
            "outperforms pre-training on the subset with different classes. However, more "
            "diversity in the subset with all MLRSNet classes does not bring additional "
            "improvement.\" (Table IV: 92.38 and 92.38)",
            (sub("table4", "mlrsnet_ucm_same", "mlrsnet_ucm_other", "greater"),
             sub("table4", "mlrsnet_half", "mlrsnet_ucm_same", "equal"))),
    )


SHORT_NAMES = {
    "table2": "Table II: ImageNet fine-tuning > scratch",
    "figure1": "Fig. 1: HRRS probe > ImageNet-1k and -100",
    "figure2": "Fig. 2: ImageNet-1k fine-tuning > HRRS, scratch",
    "figure3a": "Fig. 3a vs 1: adapted probe > HRRS-only",
    "figure3b": "Fig. 3b vs 2: adapted fine-tuning > ImageNet-1k, smaller targets",
    "table3": "Table III: same > different; all > same (probe)",
    "table4": "Table IV: same > different; all = same (fine-tuning)",
}
FINDINGS: tuple[Finding, ...] = tuple(dataclasses.replace(f, short=SHORT_NAMES[f.key])
                                      for f in _findings())


# --- Per-image statistics and the paired bootstrap -------------------------------------------


def resampled_metric(multilabel: bool, table_metric: str) -> str:
    """The metric the bootstrap recomputes for a cell whose table shows `table_metric`."""
    if not multilabel:
        return "accuracy"
    return table_metric if table_metric in RESAMPLED else "f1_micro"


def per_image(pred: Predictions, metric: str) -> np.ndarray:
    """(n, k) per-image statistics whose column sums give `metric` (`metric_from_sums`)."""
    if metric == "accuracy":
        if pred.multilabel:
            raise ValueError("accuracy is the single-label metric; pass a multi-label one")
        return (pred.probs.argmax(axis=1) == pred.y_true)[:, None].astype(np.float64)
    if not pred.multilabel:
        raise ValueError(f"{metric} is a multi-label metric; single-label uses accuracy")
    y = pred.y_true.astype(bool)
    p = pred.probs > protocol.MULTILABEL_THRESHOLD  # strict, as metrics.predict_labels
    tp = (y & p).sum(axis=1)
    fp = (~y & p).sum(axis=1)
    fn = (y & ~p).sum(axis=1)
    if metric == "f1_micro":
        # F1 = 2 TP / (2 TP + FP + FN) needs FP + FN only: fewer distinct rows to resample.
        return np.stack([tp, fp + fn], axis=1).astype(np.float64)
    if metric == "f1_samples":
        denom = 2 * tp + fp + fn  # 0: no true and no predicted label, scored 0 (zero_division)
        f1 = np.divide(2.0 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
        return f1[:, None]
    raise ValueError(f"No per-image statistic for {metric!r}; resampled: {', '.join(RESAMPLED)}")


def metric_from_sums(sums: np.ndarray, n: float, metric: str) -> np.ndarray:
    """The metric of each row of column sums (weights summing to `n` images)."""
    if metric in ("accuracy", "f1_samples"):
        return sums[..., 0] / n
    if metric == "f1_micro":
        tp, errors = sums[..., 0], sums[..., 1]
        denom = 2 * tp + errors
        return np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=np.float64),
                         where=denom > 0)
    raise ValueError(f"Unknown resampled metric {metric!r}")


def pair(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """`a` and `b` on the same test images, `b`'s rows put in `a`'s file order."""
    who = f"runs {a.run_id or 'A'} and {b.run_id or 'B'}"
    if a.split_digest != b.split_digest:
        raise PairingError(f"{who} were evaluated on different splits (split digests "
                           f"{a.split_digest[:12]} and {b.split_digest[:12]}).")
    if a.dataset_digest != b.dataset_digest:
        raise PairingError(f"{who} were evaluated on different prepared datasets (dataset "
                           f"digests {a.dataset_digest[:12]} and {b.dataset_digest[:12]}).")
    if a.multilabel != b.multilabel or a.probs.shape[1] != b.probs.shape[1]:
        raise PairingError(f"{who} predict different outputs ({a.probs.shape[1]} and "
                           f"{b.probs.shape[1]} columns).")
    aligned = b
    if not np.array_equal(a.files, b.files):
        index = {f: i for i, f in enumerate(b.files.tolist())}
        only_a = [f for f in a.files.tolist() if f not in index]
        if only_a or len(a) != len(b):
            only_b = sorted(set(b.files.tolist()) - set(a.files.tolist()))
            raise PairingError(f"{who} list different test images: {len(only_a)} only in "
                               f"the first (e.g. {only_a[:2]}), {len(only_b)} only in the "
                               f"second (e.g. {only_b[:2]}).")
        order = np.array([index[f] for f in a.files.tolist()])
        aligned = Predictions(b.probs[order], b.y_true[order], b.files[order], b.split_digest,
                              b.dataset_digest, b.run_id)
    if not np.array_equal(aligned.y_true, a.y_true):
        raise PairingError(f"{who} give the same image different true labels.")
    return a, aligned


@dataclasses.dataclass(frozen=True)
class Interval:
    """A - B in percentage points and its paired bootstrap percentile interval."""

    difference: float
    low: float
    high: float
    metric: str
    pairs: int
    images: int  # test images, summed over the pairs
    resamples: int
    confidence: float = CONFIDENCE


# Unique per-image rows at most this fraction of the images: resample by a multinomial over the
# unique rows (exactly the same distribution as resampling images, far fewer draws).
_UNIQUE_FRACTION = 0.25
_CHUNK_ELEMENTS = 1 << 22  # (replicates x images) weights held at once on the index path


def _replicate_sums(rows: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, k) column sums of `rows` (n, k) over bootstrap resamples of its n rows."""
    n = len(rows)
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    if len(unique) <= _UNIQUE_FRACTION * n:
        weights = rng.multinomial(n, counts / n, size=resamples)
        return weights @ unique
    out = np.empty((resamples, rows.shape[1]))
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        picks = rng.integers(0, n, size=(m, n)) + n * np.arange(m)[:, None]
        weights = np.bincount(picks.ravel(), minlength=m * n).reshape(m, n)
        out[start:start + m] = weights @ rows
    return out


def paired_bootstrap(pairs: Sequence[tuple[Predictions, Predictions]], metric: str, *,
                     resamples: int = DEFAULT_RESAMPLES, seed: int | Sequence[int] = 0,
                     confidence: float = CONFIDENCE) -> Interval:
    """A - B (points) over `pairs` (one per seed, each evaluated on one test set).

    Each pair is aligned with `pair` (PairingError when its runs are not on the same images).
    """
    if not pairs:
        raise ValueError("paired_bootstrap needs at least one pair of predictions")
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"resamples={resamples}: at least {MIN_RESAMPLES} are needed for a "
                         "95 % percentile interval")
    rng = np.random.default_rng(seed)
    point = np.empty(len(pairs))
    replicates = np.zeros(resamples)
    images = 0
    for i, (a, b) in enumerate(pairs):
        a, b = pair(a, b)
        sa, sb = per_image(a, metric), per_image(b, metric)
        n, k = len(a), sa.shape[1]
        total = np.concatenate([sa, sb], axis=1)
        full = total.sum(axis=0)
        point[i] = metric_from_sums(full[:k], n, metric) - metric_from_sums(full[k:], n, metric)
        sums = _replicate_sums(total, resamples, rng)
        replicates += (metric_from_sums(sums[:, :k], n, metric)
                       - metric_from_sums(sums[:, k:], n, metric))
        images += n
    replicates /= len(pairs)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return Interval(100.0 * float(point.mean()), 100.0 * float(low), 100.0 * float(high),
                    metric, len(pairs), images, resamples, confidence)


def verdict(low: float, high: float, claim: Claim) -> str:
    """holds / contradicted / inconclusive for A > B; consistent / differs for A = B."""
    if claim == "greater":
        if low > 0:
            return HOLDS
        return CONTRADICTED if high < 0 else INCONCLUSIVE
    return CONSISTENT if low <= 0 <= high else DIFFERS


def comparison_seed(base: int, comparison: Comparison) -> list[int]:
    """A Generator seed for one comparison: the base seed and a stable hash of its cells."""
    digest = hashlib.sha256(comparison.label.encode()).digest()
    return [base, int.from_bytes(digest[:8], "big")]


# --- Checking the findings on summarize's cells ----------------------------------------------


@dataclasses.dataclass
class ComparisonResult:
    finding: str
    comparison: Comparison
    status: str  # a verdict (TESTED) or why it was not tested (NOT_TESTED)
    difference: float | None = None  # A - B, points
    low: float | None = None
    high: float | None = None
    metric: str = ""
    pairs: int = 0
    images: int = 0
    run_ids_a: list[str] = dataclasses.field(default_factory=list)
    run_ids_b: list[str] = dataclasses.field(default_factory=list)
    paper_difference: float | None = None
    note: str = ""
    synthetic: bool = False

    @property
    def tested(self) -> bool:
        return self.status in TESTED

    @property
    def against(self) -> bool:
        """The runs go against the paper's claim."""
        return self.status in (CONTRADICTED, DIFFERS)


@dataclasses.dataclass
class FindingResult:
    finding: Finding
    comparisons: list[ComparisonResult]

    @property
    def counts(self) -> Counter:
        return Counter(c.status for c in self.comparisons)

    @property
    def contradicting(self) -> list[str]:
        return [c.comparison.label for c in self.comparisons if c.against]

    @property
    def summary(self) -> str:
        """'holds in 31 of 35, contradicted in 1, inconclusive in 3; ...; not tested: ...'."""
        counts = self.counts
        parts = []
        greater = counts[HOLDS] + counts[CONTRADICTED] + counts[INCONCLUSIVE]
        if greater:
            parts.append(f"holds in {counts[HOLDS]} of {greater}, contradicted in "
                         f"{counts[CONTRADICTED]}, inconclusive in {counts[INCONCLUSIVE]}")
        equal = counts[CONSISTENT] + counts[DIFFERS]
        if equal:
            parts.append(f"no difference claimed: consistent in {counts[CONSISTENT]} of "
                         f"{equal}, differs in {counts[DIFFERS]}")
        untested = {s: counts[s] for s in NOT_TESTED if counts[s]}
        if untested:
            parts.append(f"not tested: {sum(untested.values())} ("
                         + ", ".join(f"{s} {k}" for s, k in untested.items()) + ")")
        return "; ".join(parts) or "no comparisons"


Loader = Callable[[str], "Predictions | None"]


def _paper_difference(tables: Mapping[str, TableResult], comp: Comparison) -> float | None:
    a = tables[comp.a.layout].cell(comp.a.row, comp.a.col).paper
    b = tables[comp.b.layout].cell(comp.b.row, comp.b.col).paper
    return None if a is None or b is None else a - b


def _by_seed(records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    return {r.seed: r for r in records if r.seed}


def _logged_value(rec: RunRecord, metric: str) -> float | None:
    key = "test_accuracy" if metric == "accuracy" else f"test_{metric}"
    return rec.metrics.get(key)


def _check_logged(pred: Predictions, rec: RunRecord, metric: str) -> str:
    """'' when the artifact reproduces the run's logged metric, else why not."""
    logged = _logged_value(rec, metric)
    if logged is None:
        return ""
    stats = per_image(pred, metric)
    value = float(metric_from_sums(stats.sum(axis=0), len(pred), metric))
    if abs(value - logged) > _LOGGED_TOLERANCE:
        return (f"run {rec.run_id}: its predictions give {metric} {100 * value:.4f} % but it "
                f"logged {100 * logged:.4f} %; the artifact is not that run's evaluation")
    return ""


@dataclasses.dataclass
class Outcome:
    """A - B of two cells as `compare_cells` finds it: a verdict or why there is none."""

    status: str
    difference: float | None = None  # A - B, points
    low: float | None = None
    high: float | None = None
    metric: str = ""
    pairs: int = 0
    images: int = 0
    run_ids_a: list[str] = dataclasses.field(default_factory=list)
    run_ids_b: list[str] = dataclasses.field(default_factory=list)
    note: str = ""
    synthetic: bool = False
    quick: bool = False  # a quick profile's cell, compared only because `allow_quick`


def compare_cells(ca: CellResult, cb: CellResult, load: Loader, *, claim: Claim,
                  table_metric: str, resamples: int, seed: int | Sequence[int],
                  labels: tuple[str, str] = ("A", "B"), allow_quick: bool = False) -> Outcome:
    """A - B of two filled cells with its paired bootstrap interval and verdict (module doc).

    `labels` name the cells in notes. `allow_quick` compares quick-profile cells too (for
    display; the outcome is marked `quick`) instead of leaving them untested.
    """
    result = Outcome(MISSING, run_ids_a=list(ca.run_ids), run_ids_b=list(cb.run_ids),
                     synthetic=ca.synthetic or cb.synthetic)
    if ca.mean is None or cb.mean is None:
        result.note = "no finished run in " + " and ".join(
            label for label, cell in zip(labels, (ca, cb)) if cell.mean is None)
        return result
    result.difference = ca.mean - cb.mean  # until the bootstrap replaces it
    multilabel = bool(ca.spec and ca.spec.multilabel)
    metric = resampled_metric(multilabel, table_metric)
    result.metric = metric
    quick = "filled by a quick profile (" + ", ".join(
        sorted({p for c in (ca, cb) if c.quick for p in c.profiles})) + ")"
    if (ca.quick or cb.quick) and not allow_quick:
        result.status, result.note = QUICK, f"{quick}, never counted"
        return result
    if ca.synthetic != cb.synthetic:
        result.status, result.note = MIXED, "one cell is real data, the other synthetic"
        return result
    seeds_a, seeds_b = _by_seed(ca.records), _by_seed(cb.records)
    common = sorted(set(seeds_a) & set(seeds_b))
    if not common:
        result.status = NOT_PAIRED
        result.note = (f"no seed in common (A: {', '.join(sorted(seeds_a)) or 'none'}; "
                       f"B: {', '.join(sorted(seeds_b)) or 'none'})")
        return result
    pairs, absent = [], []
    for s in common:
        ra, rb = seeds_a[s], seeds_b[s]
        pa, pb = load(ra.run_id), load(rb.run_id)
        absent += [r.run_id for r, p in ((ra, pa), (rb, pb)) if p is None]
        if pa is not None and pb is not None:
            bad = _check_logged(pa, ra, metric) or _check_logged(pb, rb, metric)
            if bad:
                result.status, result.note = MISMATCH, bad
                return result
            pairs.append((pa, pb))
    if absent:
        result.status = NO_PREDICTIONS
        result.note = f"no per-image predictions in run(s) {', '.join(absent)}"
        return result
    try:
        interval = paired_bootstrap(pairs, metric, resamples=resamples, seed=seed)
    except PairingError as exc:
        result.status, result.note = NOT_PAIRED, str(exc)
        return result
    result.status = verdict(interval.low, interval.high, claim)
    result.difference, result.low, result.high = (interval.difference, interval.low,
                                                  interval.high)
    result.pairs, result.images = interval.pairs, interval.images
    result.run_ids_a = [seeds_a[s].run_id for s in common]
    result.run_ids_b = [seeds_b[s].run_id for s in common]
    notes = []
    if ca.quick or cb.quick:
        result.quick = True
        notes.append(f"{quick}: shown, never counted")
    if multilabel and metric != table_metric:
        notes.append(f"interval on f1_micro: {table_metric} is not resampled")
    unpaired = (len(ca.records) - len(common)) + (len(cb.records) - len(common))
    if unpaired:
        notes.append(f"{unpaired} run(s) without a partner of the same seed left out")
    result.note = "; ".join(notes)
    return result


def evaluate_comparison(finding: str, comp: Comparison, tables: Mapping[str, TableResult],
                        load: Loader, *, table_metric: str, resamples: int = DEFAULT_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> ComparisonResult:
    ca: CellResult = tables[comp.a.layout].cell(comp.a.row, comp.a.col)
    cb: CellResult = tables[comp.b.layout].cell(comp.b.row, comp.b.col)
    o = compare_cells(ca, cb, load, claim=comp.claim, table_metric=table_metric,
                      resamples=resamples, seed=comparison_seed(seed, comp),
                      labels=(comp.a.label, comp.b.label))
    return ComparisonResult(finding, comp, o.status, o.difference, o.low, o.high, o.metric,
                            o.pairs, o.images, o.run_ids_a, o.run_ids_b,
                            _paper_difference(tables, comp), o.note, o.synthetic)


def caching(load: Loader) -> Loader:
    """`load`, called once per run id (a run appears in many comparisons)."""
    cache: dict[str, Predictions | None] = {}

    def cached(run_id: str) -> Predictions | None:
        if run_id not in cache:
            cache[run_id] = load(run_id)
        return cache[run_id]

    return cached


def evaluate(tables: Mapping[str, TableResult], load: Loader, *, table_metric: str,
             resamples: int = DEFAULT_RESAMPLES, seed: int = BOOTSTRAP_SEED,
             findings: Sequence[Finding] = FINDINGS) -> list[FindingResult]:
    """Every finding checked on the cells of `tables` (summarize's), predictions from `load`."""
    load = caching(load)
    return [FindingResult(f, [evaluate_comparison(f.key, c, tables, load,
                                                  table_metric=table_metric,
                                                  resamples=resamples, seed=seed)
                              for c in f.comparisons])
            for f in findings]


# --- Rendering -------------------------------------------------------------------------------

SYNTHETIC_NOTE = ("These Findings are computed on synthetic stand-in data: they show what the "
                  "package measures, not evidence about the paper.")


def method_note(resamples: int, table_metric: str) -> str:
    ml = ("f1_micro (the table shows " + table_metric + ", which is not resampled)"
          if table_metric not in RESAMPLED else table_metric)
    return (f"A vs B: A minus B in percentage points (single-label: accuracy; multi-label: "
            f"{ml}). Interval: paired bootstrap over test images, {resamples:,} resamples, "
            f"95 % percentile, runs paired by seed on the same test images; several seeds: "
            f"images resampled within each seed, differences averaged over seeds. A > B "
            f"holds when the interval is above 0, is contradicted when it is below 0, and is "
            f"inconclusive when it contains 0. A = B (no difference claimed) is consistent "
            f"when the interval contains 0, and differs otherwise. Missing cells, runs without "
            f"per-image predictions, unpaired runs, quick-profile cells and real-vs-synthetic "
            f"pairs are not tested and not counted.")


def _num(v: float | None, fmt: str = "{:+.2f}") -> str:
    return "" if v is None else fmt.format(v)


def _interval_text(c: ComparisonResult) -> str:
    return "" if c.low is None else f"[{c.low:+.2f}, {c.high:+.2f}]"


def render_text(results: Sequence[FindingResult], *, resamples: int, table_metric: str,
                synthetic: bool, banner: str) -> str:
    header = ["Finding", "Comparisons", "Result"]
    rows = [[r.finding.name, str(len(r.comparisons)), r.summary] for r in results]
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(2)]
    lines = ["Findings: the paper's claims re-checked on these runs"]
    if synthetic:
        lines += [banner, SYNTHETIC_NOTE]
    for row in [header, *rows]:
        lines.append(f"{row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  {row[2]}")
    for r in results:
        if r.contradicting:
            lines.append(f"{r.finding.name}: against the paper: {'; '.join(r.contradicting)}")
    lines.append(method_note(resamples, table_metric))
    lines += [f"{r.finding.name}: {r.finding.note}" for r in results if r.finding.note]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


COMPARISON_HEADER = ("A vs B", "Claim", "Paper A-B", "Runs", "Images", "A-B", "95 % interval",
                     "Verdict", "Note")


def _comparison_row(c: ComparisonResult) -> list[str]:
    return [c.comparison.label + (f" ({c.comparison.scope})" if c.comparison.scope else ""),
            c.comparison.claim_text, _num(c.paper_difference), str(c.pairs) if c.pairs else "",
            f"{c.images:,}" if c.images else "", _num(c.difference), _interval_text(c),
            c.status, c.note]


def render_markdown(results: Sequence[FindingResult], *, resamples: int, table_metric: str,
                    synthetic: bool, banner: str) -> str:
    out = ["## Findings", ""]
    if synthetic:
        out += [f"> **{banner}** {SYNTHETIC_NOTE}", ""]
    out += [_md(method_note(resamples, table_metric)), "",
            "| Finding | Comparisons | Result | Against the paper |", "|---|---:|---|---|"]
    out += [f"| {_md(r.finding.title)} | {len(r.comparisons)} | {_md(r.summary)} | "
            f"{_md('; '.join(r.contradicting) or '-')} |" for r in results]
    for r in results:
        out += ["", f"### {_md(r.finding.title)}", "", f"Paper: {_md(r.finding.source)}", ""]
        if r.finding.note:
            out += [_md(r.finding.note), ""]
        out += [f"Result: {_md(r.summary)}.", "",
                "| " + " | ".join(COMPARISON_HEADER) + " |",
                "|" + "|".join(["---", "---"] + ["---:"] * 5 + ["---", "---"]) + "|"]
        out += ["| " + " | ".join(_md(v) for v in _comparison_row(c)) + " |"
                for c in r.comparisons]
    return "\n".join(out) + "\n"


def render_html(results: Sequence[FindingResult], *, resamples: int, table_metric: str,
                synthetic: bool, banner: str, css: str) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           "<title>rssc findings</title>", f"<style>{css}</style></head><body>"]
    if synthetic:
        out.append(f"<div class='banner'>{esc(banner)} {esc(SYNTHETIC_NOTE)}</div>")
    out += ["<p><a href='summary.html'>Back to the summary</a></p>",
            *summary_html(results, resamples=resamples, table_metric=table_metric)]
    for r in results:
        out += [f"<h2 id='{esc(r.finding.key)}'>{esc(r.finding.title)}</h2>",
                f"<p>Paper: {esc(r.finding.source)}</p>"]
        if r.finding.note:
            out.append(f"<p>{esc(r.finding.note)}</p>")
        out += [f"<p>Result: {esc(r.summary)}.</p>", "<table><thead><tr>"]
        out += [f"<th>{esc(h)}</th>" for h in COMPARISON_HEADER]
        out.append("</tr></thead><tbody>")
        for c in r.comparisons:
            cls = " class='against'" if c.against else ""
            out.append(f"<tr{cls}>" + "".join(f"<td>{esc(v)}</td>" for v in _comparison_row(c))
                       + "</tr>")
        out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def summary_html(results: Sequence[FindingResult], *, resamples: int,
                 table_metric: str) -> list[str]:
    """The compact Findings table (also shown on the summary page)."""
    esc = html.escape
    out = ["<h1 id='findings'>Findings</h1>",
           f"<p class='notes'>{esc(method_note(resamples, table_metric))}</p>",
           "<table><thead><tr><th>Finding</th><th>Comparisons</th><th>Result</th>"
           "<th>Against the paper</th></tr></thead><tbody>"]
    out += [f"<tr><td><a href='findings.html#{esc(r.finding.key)}'>{esc(r.finding.title)}</a>"
            f"</td><td>{len(r.comparisons)}</td><td>{esc(r.summary)}</td>"
            f"<td>{esc('; '.join(r.contradicting) or '-')}</td></tr>" for r in results]
    out.append("</tbody></table>")
    return out


CSV_FIELDS = ("finding", "cell_a", "cell_b", "claim", "scope", "paper_difference", "metric",
              "runs", "n_images", "difference", "low", "high", "verdict", "note",
              "run_ids_a", "run_ids_b", "synthetic")


def render_csv(results: Sequence[FindingResult]) -> str:
    """One row per comparison; differences and bounds in percentage points."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    num = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for r in results:
        for c in r.comparisons:
            writer.writerow([r.finding.key, c.comparison.a.label, c.comparison.b.label,
                             c.comparison.claim_text, c.comparison.scope,
                             num(c.paper_difference), c.metric, c.pairs, c.images,
                             num(c.difference), num(c.low), num(c.high), c.status, c.note,
                             " ".join(c.run_ids_a), " ".join(c.run_ids_b),
                             str(c.synthetic).lower()])
    return buf.getvalue()

