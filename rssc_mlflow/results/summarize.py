"""Tables II-IV and Figures 1-3 of the paper, rebuilt from the tracking store alone.

`summarize` fetches every FINISHED run once (paged), puts each run into the cell its tags name
(`paper.LAYOUTS`), and writes Markdown, CSV, LaTeX, heatmap PNGs, one self-contained HTML page
and a console rendering; then it logs them all as artifacts of a new `summarize` run.

Which runs a cell shows (documented, because a cell must never mix incomparable runs):
1. Runs are grouped by (synthetic, quick profile, protocol fingerprint). The fingerprint holds
   precision and replica count (a mixed-precision or a 4-GPU run is another group than a
   float32 one-GPU run); `--pool-precision` groups by the fingerprint without them, and the
   footnote says which precisions and replica counts a pooled cell holds. Only one group is
   shown: real data before synthetic; then a meaningful profile before a quick one (a profile
   that fills cells cheaply on a CPU, `protocol.Profile.quick`); then the group with the most
   seeds; on a tie, the group holding the most recent run. The other groups are listed in a
   footnote with their run counts. A cell filled by a quick profile is marked † and
   footnoted with the profile's name, and no finding counts it.
2. Inside the group, a seed counts once: a re-run with the same seed replaces the older run
   (latest start time wins). Runs without a seed tag count as distinct seeds.
3. One run: its value. Several: `mean ± std (n=K)`, sample std (ddof=1).
Values are percentages with two decimals; multi-label datasets use `test_<multilabel_metric>`,
single-label ones `test_accuracy`.

For every target of probe/finetune runs that is not one of the paper's (`rssc transfer NAME`),
a "Transfer to NAME" table (`results.transfer_table`) ranks the pre-training sources and answers
whether pre-training pays off there, in every format; the summary page links to each.

The Findings section (`results.findings`) re-checks the paper's claims on the cells shown,
with paired bootstrap intervals from the runs' per-image predictions. Every CSV is plain (one
header line, then rows): where the data are synthetic, a `synthetic` column says so, and the
banner is in the md, html, tex and console outputs.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import html
import io
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import mlflow
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

# The pager behind mlflow.search_runs; called here with `client`, whose store may not be
# the global tracking URI that the fluent search functions read.
from mlflow.utils import get_results_from_paginated_fn

from rssc_mlflow import __version__, protocol
from rssc_mlflow.errors import RsscError
from rssc_mlflow.results import findings as findings_lib
from rssc_mlflow.results.paper import LAYOUTS, CellSpec, Layout
from rssc_mlflow.settings import RESULT_STAGES, SOURCE_STAGES
from rssc_mlflow.tracking import predictions as predictions_lib
from rssc_mlflow.tracking import runs as tracking

MULTILABEL_METRICS = ("f1_micro", "f1_macro", "f1_weighted", "f1_samples", "map")
SINGLE_LABEL_METRIC = "test_accuracy"
SUMMARY_STAGE = "summarize"
BANNER = protocol.SYNTHETIC_BANNER
PAGE_SIZE = 1000  # runs per search page; the sqlite store answers 1,000 runs in about a second
QUICK_MARK = "†"
DEFAULT_SETUP = "float32 x1"  # precision and replica count of the paper's runs


def is_quick(profile: str) -> bool:
    """Whether `profile` only fills cells cheaply (unknown profiles count as meaningful)."""
    return bool(getattr(protocol.PROFILES.get(profile), "quick", False))

CellStatus = Literal["value", "missing", "n/a"]


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What summarize needs of one finished run, read from its tags and final metrics."""

    run_id: str
    stage: str
    source: str
    target: str
    fingerprint: str
    synthetic: bool
    seed: str
    start_time: int
    metrics: dict[str, float]
    profile: str = ""
    has_predictions: bool = False  # tagged as carrying evaluation/predictions.npz
    artifact_uri: str = ""
    pooled_fingerprint: str = ""  # without precision and replicas ("": logged before them)
    precision: str = "float32"
    replicas: str = "1"

    @property
    def quick(self) -> bool:
        return is_quick(self.profile)

    @property
    def setup(self) -> str:
        """Precision and replica count, e.g. "mixed x4"."""
        return f"{self.precision} x{self.replicas}"

    def group_key(self, pool_precision: bool = False) -> str:
        """The fingerprint a cell groups by; `pool_precision`: the one without precision and
        replicas (a run logged before they joined the fingerprint: its fingerprint)."""
        if pool_precision:
            return self.pooled_fingerprint or self.fingerprint
        if self.pooled_fingerprint or self.setup == DEFAULT_SETUP:
            return self.fingerprint
        # Logged before precision joined the fingerprint: kept apart all the same.
        return f"{self.fingerprint}/{self.setup}"

    @classmethod
    def from_run(cls, run: Run) -> RunRecord:
        tags, params = run.data.tags, tracking.effective_params(run.data.params)
        stage = tags.get(tracking.TAG_STAGE, "")
        return cls(
            run_id=run.info.run_id,
            stage=stage,
            source=tags.get(tracking.TAG_SOURCE, ""),
            # pretrain/adapt have no target; ignore whatever the tag says.
            target="" if stage in SOURCE_STAGES else tags.get(tracking.TAG_TARGET, ""),
            fingerprint=tags.get(tracking.TAG_FINGERPRINT, ""),
            synthetic=tags.get(tracking.TAG_SYNTHETIC, "false").strip().lower() == "true",
            seed=tags.get(tracking.TAG_SEED, ""),
            start_time=int(run.info.start_time or 0),
            metrics=dict(run.data.metrics),
            profile=tags.get(tracking.TAG_PROFILE, ""),
            has_predictions=predictions_lib.TAG_PREDICTIONS in tags,
            artifact_uri=run.info.artifact_uri or "",
            pooled_fingerprint=tags.get(tracking.TAG_FINGERPRINT_POOLED, ""),
            precision=params.get("precision", "float32"),
            replicas=params.get("replicas", "1"),
        )


@dataclasses.dataclass(frozen=True)
class Variant:
    """One (synthetic, quick, fingerprint) group of a cell, and how many seeds it has."""

    synthetic: bool
    fingerprint: str
    n: int
    quick: bool = False
    profiles: tuple[str, ...] = ()
    setups: tuple[tuple[str, int], ...] = ()  # (precision and replicas, runs) it holds

    @property
    def pooled(self) -> str:
        """What a pooled group holds, e.g. "float32 x1 (n=2), mixed x4 (n=1)"; "" if one kind."""
        if len(self.setups) < 2:
            return ""
        return ", ".join(f"{setup} (n={n})" for setup, n in self.setups)

    def describe(self) -> str:
        data = "synthetic" if self.synthetic else "real"
        quick = f"quick profile {', '.join(self.profiles)}, " if self.quick else ""
        setup = next((s for s, _ in self.setups), DEFAULT_SETUP)
        kind = (f"pooled {self.pooled}, " if self.pooled else
                f"{setup}, " if setup != DEFAULT_SETUP else "")
        fingerprint = self.fingerprint.split("/")[0][:12] or "(none)"
        return f"{data} data, {quick}{kind}fingerprint {fingerprint}, n={self.n}"


@dataclasses.dataclass
class CellResult:
    """One cell as shown: its spec (None = n/a), the values behind it, and its text."""

    row: str
    col: str
    spec: CellSpec | None
    metric: str = ""
    values: list[float] = dataclasses.field(default_factory=list)  # %, one per seed
    run_ids: list[str] = dataclasses.field(default_factory=list)
    records: list[RunRecord] = dataclasses.field(default_factory=list)  # the runs shown
    shown: Variant | None = None
    others: list[Variant] = dataclasses.field(default_factory=list)
    skipped: int = 0  # finished runs lacking the metric

    @property
    def status(self) -> CellStatus:
        if self.spec is None:
            return "n/a"
        return "value" if self.values else "missing"

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None  # sample std, ddof=1

    @property
    def paper(self) -> float | None:
        return self.spec.paper if self.spec else None

    @property
    def diff(self) -> float | None:
        """Reproduced minus published, in percentage points."""
        if self.mean is None or self.paper is None:
            return None
        return self.mean - self.paper

    @property
    def synthetic(self) -> bool:
        return bool(self.shown and self.shown.synthetic)

    @property
    def quick(self) -> bool:
        return bool(self.shown and self.shown.quick)

    @property
    def profiles(self) -> tuple[str, ...]:
        return self.shown.profiles if self.shown else ()

    @property
    def command(self) -> str | None:
        return self.spec.command if self.status == "missing" and self.spec else None

    @property
    def text(self) -> str:
        if self.status == "n/a":
            return "n/a"
        if self.mean is None:
            return "-"
        mark = QUICK_MARK if self.quick else ""
        if self.std is None:
            return f"{self.mean:.2f}{mark}"
        return f"{self.mean:.2f}{mark} ± {self.std:.2f} (n={self.n})"

    @property
    def paper_text(self) -> str:
        return "" if self.paper is None else f"{self.paper:.2f}"

    @property
    def diff_text(self) -> str:
        return "" if self.diff is None else f"{self.diff:+.2f}"


@dataclasses.dataclass
class TableResult:
    layout: Layout
    cells: dict[tuple[str, str], CellResult]
    footnotes: dict[tuple[str, str], int]  # cell -> footnote number
    footnote_texts: list[str]

    def cell(self, row: str, col: str) -> CellResult:
        return self.cells[(row, col)]

    @property
    def missing(self) -> list[str]:
        return [c.command for c in self.cells.values() if c.command]


@dataclasses.dataclass
class SummaryResult:
    out: Path
    run_id: str
    console: str
    tables: dict[str, TableResult]  # by layout key: table2, ..., figure3b
    missing: list[str]  # commands that would fill the missing cells, in layout order
    synthetic: bool
    files: list[Path]
    multilabel_metric: str
    findings: list[findings_lib.FindingResult] = dataclasses.field(default_factory=list)
    # "Transfer to NAME" tables (results.transfer_table), one per target outside the paper.
    transfers: list = dataclasses.field(default_factory=list)


# --- Reading the store ---------------------------------------------------------------------------


def _check_metric(multilabel_metric: str) -> str:
    metric = multilabel_metric.strip().lower().removeprefix("test_")
    if metric not in MULTILABEL_METRICS:
        raise RsscError(
            f"Unknown multi-label metric {multilabel_metric!r}. Choose one of: "
            f"{', '.join(MULTILABEL_METRICS)}."
        )
    return metric


def experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    """The ids of the experiment named `experiment` (None: every active one)."""
    if experiment is None:
        found_all = get_results_from_paginated_fn(
            lambda count, token: client.search_experiments(
                view_type=ViewType.ACTIVE_ONLY, max_results=count, page_token=token),
            1000)
        return [e.experiment_id for e in found_all]
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return [found.experiment_id]
    if experiment == tracking.DEFAULT_EXPERIMENT:
        return []  # nothing run yet: an all-missing summary tells what to run
    names = [e.name for e in client.search_experiments(max_results=100)]
    raise RsscError(
        f"No experiment named {experiment!r} in the tracking store at "
        f"{client.tracking_uri}. Experiments there: {', '.join(names) or '(none)'}."
    )


def fetch_runs(client: MlflowClient, experiment_ids: Sequence[str]) -> list[RunRecord]:
    """All FINISHED runs of the transfer stages, in one paged pass over the store."""
    if not experiment_ids:
        return []
    found = get_results_from_paginated_fn(
        lambda count, token: client.search_runs(
            experiment_ids=list(experiment_ids),
            filter_string="attributes.status = 'FINISHED'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=count,
            page_token=token,
        ),
        PAGE_SIZE,
    )
    return [RunRecord.from_run(run) for run in found
            if run.data.tags.get(tracking.TAG_STAGE) in RESULT_STAGES]


# --- Filling the cells ---------------------------------------------------------------------------


def _metric_key(spec: CellSpec, multilabel_metric: str) -> str:
    return f"test_{multilabel_metric}" if spec.multilabel else SINGLE_LABEL_METRIC


def _latest_per_seed(records: Iterable[RunRecord]) -> list[RunRecord]:
    """A re-run with the same seed replaces the earlier run; runs without a seed all count."""
    by_seed: dict[str, RunRecord] = {}
    for rec in sorted(records, key=lambda r: (r.start_time, r.run_id)):
        by_seed[rec.seed or f"run:{rec.run_id}"] = rec
    return sorted(by_seed.values(), key=lambda r: (r.start_time, r.run_id))


Group = tuple[bool, bool, str]  # (synthetic, quick, fingerprint)


def _choose_group(groups: dict[Group, list[RunRecord]]) -> Group:
    """Real before synthetic, meaningful before quick, then most seeds, then the group holding
    the most recent run."""
    return min(groups, key=lambda g: (g[0], g[1], -len(groups[g]),
                                      -max(r.start_time for r in groups[g])))


def _variant(key: Group, recs: Sequence[RunRecord]) -> Variant:
    setups = collections.Counter(r.setup for r in recs)
    return Variant(key[0], key[2], len(recs), key[1],
                   tuple(sorted({r.profile for r in recs})) if key[1] else (),
                   tuple(sorted(setups.items(), key=lambda s: (s[0] != DEFAULT_SETUP, s[0]))))


def fill_cell(row: str, col: str, spec: CellSpec | None, records: Sequence[RunRecord],
              multilabel_metric: str, pool_precision: bool = False) -> CellResult:
    if spec is None:
        return CellResult(row, col, None)
    metric = _metric_key(spec, multilabel_metric)
    usable = [r for r in records if metric in r.metrics and math.isfinite(r.metrics[metric])]
    cell = CellResult(row, col, spec, metric=metric, skipped=len(records) - len(usable))
    grouped: dict[Group, list[RunRecord]] = defaultdict(list)
    for rec in usable:
        grouped[(rec.synthetic, rec.quick, rec.group_key(pool_precision))].append(rec)
    if not grouped:
        return cell
    groups = {key: _latest_per_seed(recs) for key, recs in grouped.items()}
    chosen = _choose_group(groups)
    shown = groups[chosen]
    cell.values = [100.0 * r.metrics[metric] for r in shown]
    cell.run_ids = [r.run_id for r in shown]
    cell.records = list(shown)
    cell.shown = _variant(chosen, shown)
    cell.others = [_variant(k, v) for k, v in sorted(groups.items()) if k != chosen]
    return cell


def build_table(layout: Layout, index: dict[tuple[str, str, str], list[RunRecord]],
                multilabel_metric: str, pool_precision: bool = False) -> TableResult:
    cells: dict[tuple[str, str], CellResult] = {}
    footnotes: dict[tuple[str, str], int] = {}
    texts: list[str] = []
    for row in layout.rows:
        for col in layout.cols:
            spec = layout.cell(row.key, col.key)
            recs = index.get((spec.stage, spec.source, spec.target), []) if spec else []
            cell = fill_cell(row.key, col.key, spec, recs, multilabel_metric, pool_precision)
            cells[(row.key, col.key)] = cell
            notes = []
            if cell.quick:
                notes.append(f"{QUICK_MARK} filled by the quick profile "
                             f"{', '.join(cell.profiles)} (cheap CPU settings): not comparable "
                             "with the paper, never pooled with a meaningful profile's runs, "
                             "not counted in any finding")
            if cell.shown and cell.shown.pooled:
                notes.append(f"pooled by --pool-precision: {cell.shown.pooled}")
            if cell.others:
                notes.append(f"shown: {cell.shown.describe()}; other variants not mixed in: "
                             + "; ".join(v.describe() for v in cell.others))
            if cell.skipped:
                notes.append(f"{cell.skipped} finished run(s) without {cell.metric} ignored")
            if notes:
                texts.append(f"{row.label} / {col.label}: " + "; ".join(notes) + ".")
                footnotes[(row.key, col.key)] = len(texts)
    return TableResult(layout, cells, footnotes, texts)


# --- Rendering -----------------------------------------------------------------------------------


def _metric_note(metric: str) -> str:
    return (f"Values in %. Single-label: test_accuracy; multi-label (MLRSNet multi-label): "
            f"test_{metric}. Several seeds: mean ± sample std (n=seeds).")


def grid(table: TableResult, markers: bool = True) -> tuple[list[str], list[list[str]]]:
    """The table as the paper lays it out: a header and rows of strings."""
    layout = table.layout

    def mark(cell: CellResult) -> str:
        num = table.footnotes.get((cell.row, cell.col))
        return f"{cell.text} [{num}]" if markers and num else cell.text

    header = [layout.row_header]
    if layout.kind == "table":
        for col in layout.cols:
            prefix = "" if len(layout.cols) == 1 else f"{col.label}: "
            header += [f"{prefix}Paper", f"{prefix}Reproduced", f"{prefix}Difference"]
    else:
        header += [c.label for c in layout.cols]
    rows = []
    for row in layout.rows:
        line = [row.label]
        for col in layout.cols:
            cell = table.cell(row.key, col.key)
            line += ([cell.paper_text, mark(cell), cell.diff_text] if layout.kind == "table"
                     else [mark(cell)])
        rows.append(line)
    return header, rows


PRIOR_METRIC = "test_prior_f1_micro"  # logged by multi-label evaluations (commands.py)


def _prior_notes(table: TableResult) -> list[str]:
    """Multi-label cells: the label-prior baseline their runs logged, to read the F1 against."""
    out = []
    for cell in table.cells.values():
        priors = [r.metrics[PRIOR_METRIC] for r in cell.records if PRIOR_METRIC in r.metrics]
        if priors and cell.mean is not None:
            label = f"{cell.row}" + (f" -> {cell.col}" if table.layout.kind == "figure" else
                                     f" / {cell.col}")
            out.append(f"{label}: label-prior baseline F1-micro "
                       f"{100 * statistics.fmean(priors):.2f} (every image gets the labels that "
                       "most training images carry)")
    return out


CONSOLE_MISSING = 5  # the console lists this many fill commands per table; the files list all


def _notes(table: TableResult, code: str = "", max_missing: int | None = None) -> list[str]:
    """Footnotes, label-prior baselines, then the commands that fill the missing cells (quoted
    with `code`; at most `max_missing` of them, then a count)."""
    lines = [f"[{i}] {t}" for i, t in enumerate(table.footnote_texts, start=1)]
    lines += _prior_notes(table)
    missing = table.missing
    if max_missing is not None and len(missing) > max_missing:
        lines += [f"to fill: {code}{cmd}{code}" for cmd in missing[:max_missing]]
        lines.append(f"... and {len(missing) - max_missing} more missing cells: summary.md lists "
                     "the command for each")
        return lines
    lines += [f"to fill: {code}{cmd}{code}" for cmd in missing]
    return lines


def render_text(table: TableResult, metric: str) -> str:
    header, rows = grid(table)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    layout = table.layout
    out = [f"{layout.title}: {layout.caption}", fmt(header),
           "  ".join("-" * w for w in widths), *map(fmt, rows), _metric_note(metric),
           *_notes(table, max_missing=CONSOLE_MISSING)]
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(table: TableResult, metric: str) -> str:
    header, rows = grid(table)
    layout = table.layout
    out = [f"## {layout.title}", "", layout.caption, "",
           "| " + " | ".join(map(_md_escape, header)) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(map(_md_escape, r)) + " |" for r in rows]
    out += ["", _metric_note(metric), ""]
    out += [f"- {_md_escape(n)}" for n in _notes(table, code="`")]
    return "\n".join(out).rstrip() + "\n"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "±": r"$\pm$", QUICK_MARK: r"$^\dagger$"}


def _tex(text: str) -> str:
    """Escape for LaTeX; `code` spans (commands in captions) become \\texttt."""
    parts = text.split("`")
    escaped = ["".join(_TEX_SPECIAL.get(ch, ch) for ch in part) for part in parts]
    return "".join(f"\\texttt{{{e}}}" if i % 2 else e for i, e in enumerate(escaped))


def _tex_tabular(header: list[str], rows: list[list[str]]) -> str:
    """The booktabs tabular, by pandas' Styler (needs jinja2, which MLflow's server brings).
    Cells are escaped by `_tex` first: the Styler's own escaping knows neither ± nor †."""
    import pandas as pd

    frame = pd.DataFrame([[_tex(v) for v in r] for r in rows], columns=[_tex(h) for h in header])
    return frame.style.hide(axis="index").to_latex(
        hrules=True, column_format="l" + "r" * (len(header) - 1))


def render_latex(table: TableResult, metric: str, banner: bool) -> str:
    header, rows = grid(table)
    layout = table.layout
    out = ["% Generated by rssc summarize; needs \\usepackage{booktabs}."]
    if banner:
        out += [f"% {BANNER}", f"\\noindent\\textbf{{{_tex(BANNER)}}}\\par"]
    out += ["\\begin{table}[ht]", "\\centering", "\\small",
            f"\\caption{{{_tex(layout.title + ': ' + layout.caption)}}}",
            f"\\label{{tab:rssc-{layout.key}}}", _tex_tabular(header, rows).rstrip("\n"),
            "\\end{table}", "", f"% {_metric_note(metric)}"]
    out += [f"% {n}" for n in _notes(table)]
    return "\n".join(out) + "\n"


CSV_FIELDS = ("layout", "row", "row_label", "column", "column_label", "status", "stage",
              "source", "target", "metric", "paper", "reproduced", "std", "n", "difference",
              "text", "synthetic", "quick", "profiles", "fingerprint", "run_ids",
              "other_variants", "command", "pooled")


def render_csv(table: TableResult) -> str:
    """One line per cell after one header line (long format: `pandas.read_csv(path)` loads it).

    `synthetic` is true for a cell shown from synthetic runs (the md/html/tex banner's
    counterpart), empty for a cell without runs."""
    import pandas as pd

    layout = table.layout
    num = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    lines = []
    for row in layout.rows:
        for col in layout.cols:
            c = table.cell(row.key, col.key)
            lines.append([
                layout.key, row.key, row.label, col.key, col.label, c.status,
                c.spec.stage if c.spec else "", c.spec.source if c.spec else row.key,
                c.spec.target if c.spec else col.key, c.metric, num(c.paper), num(c.mean),
                num(c.std), c.n, num(c.diff), c.text,
                "true" if c.synthetic else ("false" if c.shown else ""),
                ("true" if c.quick else "false") if c.shown else "", " ".join(c.profiles),
                c.shown.fingerprint.split("/")[0] if c.shown else "", " ".join(c.run_ids),
                "; ".join(v.describe() for v in c.others), c.command or "",
                c.shown.pooled if c.shown else "",
            ])
    # Values are formatted above (4 decimals, "" for none), so pandas only quotes and joins.
    return pd.DataFrame(lines, columns=list(CSV_FIELDS)).to_csv(index=False, lineterminator="\n")


def heatmap_title(table: TableResult, banner: bool) -> str:
    title = f"{table.layout.title}: reproduced values (%)"
    return f"SYNTHETIC DATA - {title}" if banner else title


def render_heatmap(table: TableResult, banner: bool, xlabel: str = "Target dataset") -> bytes:
    """Source x target heatmap PNG: values in the cells, n/a grey, missing blank with '-'.

    The title (with the synthetic mark when `banner`) is drawn and also stored as the PNG's
    Title text, the caption as its Description."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    layout = table.layout
    rows, cols = layout.rows, layout.cols
    values = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            mean = table.cell(r.key, c.key).mean
            values[i, j] = np.nan if mean is None else mean
    fig = Figure(figsize=(1.25 * len(cols) + 3.2, 0.62 * len(rows) + 2.4), dpi=110)
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 1.0, vmax + 1.0
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax,
                      aspect="auto")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            cell = table.cell(r.key, c.key)
            if cell.status == "n/a":
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#c8c8c8",
                                       edgecolor="white", hatch="//"))
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="#555555")
            elif cell.mean is None:
                ax.text(j, i, "-", ha="center", va="center", fontsize=10, color="black")
            else:
                label = f"{cell.mean:.2f}" + (QUICK_MARK if cell.quick else "")
                if cell.std is not None:
                    label += f"\n±{cell.std:.2f} (n={cell.n})"
                dark = (cell.mean - vmin) / (vmax - vmin) < 0.6  # viridis is dark at the low end
                ax.text(j, i, label, ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), [c.label for c in cols], rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), [r.label for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Source (pre-trained model)")
    title = heatmap_title(table, banner)
    ax.set_title(title, fontsize=11, color="red" if banner else "black")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    if banner:
        fig.suptitle(BANNER, color="red", fontsize=8, fontweight="bold", wrap=True)
    if any(c.quick for c in table.cells.values()):
        fig.text(0.01, 0.0, f"{QUICK_MARK} filled by a quick profile (cheap CPU settings), "
                 "not counted in any finding", fontsize=7, va="top")
    buf = io.BytesIO()
    # bbox_inches="tight" fits the long tick labels in one draw (tight_layout would add one).
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15,
                metadata={"Title": title, "Description": f"{layout.title}: {layout.caption}"})
    return buf.getvalue()


_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 7px}
td{text-align:right}td:first-child{text-align:left}th{background:#eee}
td.na{background:#ddd;color:#666}td.missing{color:#999}
.banner{background:#c00;color:#fff;font-weight:bold;padding:.6em;margin-bottom:1em}
.notes{font-size:.9em;color:#333}img{max-width:100%}code{background:#f4f4f4}
tr.against td{background:#fde2e2}"""


def _html_text(text: str) -> str:
    """Escape for HTML; `code` spans become <code>."""
    parts = [html.escape(part) for part in text.split("`")]
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(tables: Sequence[TableResult], pngs: dict[str, bytes], metric: str,
                banner: bool, header_lines: Sequence[str],
                findings_part: Sequence[str] = (),
                transfer_parts: Sequence[tuple[str, str, Sequence[str]]] = ()) -> str:
    """The summary page; `transfer_parts`: (anchor, title, html lines) of each "Transfer to
    NAME" section, linked from the top of the page."""
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           "<title>rssc summary</title>", f"<style>{_CSS}</style></head><body>"]
    if banner:
        out.append(f"<div class='banner'>{esc(BANNER)}</div>")
    out.append("<h1>The Role of Pre-Training in HRRS Scene Classification: reproduction</h1>")
    out += [f"<p>{esc(line)}</p>" for line in header_lines]
    if findings_part:
        out.append("<p><a href='#findings'>Findings</a> (the paper's claims re-checked; every "
                   "comparison: <a href='findings.html'>findings.html</a>)</p>")
    if transfer_parts:
        out.append("<p>Does pre-training pay off on your data? " + ", ".join(
            f"<a href='#{esc(anchor)}'>{esc(title)}</a>" for anchor, title, _ in transfer_parts)
            + "</p>")
    for table in tables:
        layout = table.layout
        header, rows = grid(table)
        out += [f"<h2 id='{layout.key}'>{esc(layout.title)}</h2>",
                f"<p>{_html_text(layout.caption)}</p>", "<table><thead><tr>"]
        out += [f"<th>{esc(h)}</th>" for h in header]
        out.append("</tr></thead><tbody>")
        for row, line in zip(layout.rows, rows):
            out.append("<tr>" + f"<td>{esc(line[0])}</td>")
            per_col = 3 if layout.kind == "table" else 1
            for j, col in enumerate(layout.cols):
                status = table.cell(row.key, col.key).status
                cls = {"n/a": " class='na'", "missing": " class='missing'"}.get(status, "")
                for value in line[1 + j * per_col: 1 + (j + 1) * per_col]:
                    out.append(f"<td{cls}>{esc(value)}</td>")
            out.append("</tr>")
        out.append("</tbody></table>")
        if layout.key in pngs:
            data = base64.b64encode(pngs[layout.key]).decode("ascii")
            out.append(f"<p><img alt='{esc(layout.title)} heatmap' "
                       f"src='data:image/png;base64,{data}'></p>")
        out.append(f"<div class='notes'><p>{esc(_metric_note(metric))}</p><ul>")
        out += [f"<li>{_html_text(n)}</li>" for n in _notes(table, code="`")]
        out.append("</ul></div>")
    for _, _, part in transfer_parts:
        out += part
    if findings_part:
        if banner:
            out.append(f"<div class='banner'>{esc(BANNER)} "
                       f"{esc(findings_lib.SYNTHETIC_NOTE)}</div>")
        out += [*findings_part,
                "<p><a href='findings.html'>Every comparison, with its interval</a></p>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- The command ---------------------------------------------------------------------------------


def _index(records: Iterable[RunRecord]) -> dict[tuple[str, str, str], list[RunRecord]]:
    index: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for rec in records:
        index[(rec.stage, rec.source, rec.target)].append(rec)
    return index


def _summary_experiment_id(client: MlflowClient, experiment: str | None) -> str:
    name = experiment or tracking.DEFAULT_EXPERIMENT
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def _log_summary_run(client: MlflowClient, experiment: str | None, out: Path, metric: str,
                     synthetic: bool, missing: int, filled: int,
                     counts: dict[str, float] | None = None, pool_precision: bool = False) -> str:
    """A new run `summarize` holding every output; inside `mlflow run`, that project's run."""
    tags = {tracking.TAG_STAGE: SUMMARY_STAGE, "mlflow.runName": SUMMARY_STAGE,
            tracking.TAG_SYNTHETIC: str(synthetic).lower(),
            "rssc.multilabel_metric": metric, tracking.TAG_VERSION: __version__,
            tracking.TAG_GIT_COMMIT: tracking.git_commit()}
    attached = os.environ.get("MLFLOW_RUN_ID")  # set by `mlflow run` for the entry point
    if attached:
        run_id = attached
        client.set_tag(run_id, tracking.TAG_STAGE, SUMMARY_STAGE)
        for key, value in tags.items():
            if key != "mlflow.runName":
                client.set_tag(run_id, key, value)
    else:
        run_id = client.create_run(_summary_experiment_id(client, experiment),
                                   run_name=SUMMARY_STAGE, tags=tags).info.run_id
    try:
        client.log_param(run_id, "experiment", experiment or "(all)")
        client.log_param(run_id, "multilabel_metric", metric)
        client.log_param(run_id, "pool_precision", str(pool_precision).lower())
        client.log_metric(run_id, "cells_missing", missing)
        client.log_metric(run_id, "cells_filled", filled)
        for key, value in (counts or {}).items():
            client.log_metric(run_id, key, value)
        client.log_artifacts(run_id, str(out))
    except BaseException:
        if not attached:
            client.set_terminated(run_id, "FAILED")
        raise
    if not attached:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _findings_counts(results: Sequence[findings_lib.FindingResult]) -> dict[str, float]:
    """Comparisons tested and those that go against the paper, for the summary run."""
    comparisons = [c for r in results for c in r.comparisons]
    return {"findings_comparisons": len(comparisons),
            "findings_tested": sum(c.tested for c in comparisons),
            "findings_against": sum(c.against for c in comparisons)}


def summarize(
    experiment: str | None = None,
    out: Path = Path("rssc_outputs/summary"),
    multilabel_metric: str = "f1_micro",
    tracking_uri: str | None = None,
    *,
    resamples: int = findings_lib.DEFAULT_RESAMPLES,
    bootstrap_seed: int = findings_lib.BOOTSTRAP_SEED,
    pool_precision: bool = False,
) -> SummaryResult:
    """Build every table, figure and the Findings from the tracking store, write them to
    `out`, log them. `resamples` and `bootstrap_seed` set the Findings' paired bootstrap.
    `pool_precision`: runs that differ only in precision or replica count share a cell."""
    metric = _check_metric(multilabel_metric)
    if resamples < findings_lib.MIN_RESAMPLES:
        raise RsscError(f"resamples={resamples}: the Findings' 95 % intervals need at least "
                        f"{findings_lib.MIN_RESAMPLES:,} bootstrap resamples.")
    client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
    records = fetch_runs(client, experiment_ids(client, experiment))
    index = _index(records)
    tables = {layout.key: build_table(layout, index, metric, pool_precision)
              for layout in LAYOUTS}
    tagged = {r.run_id: r.artifact_uri for r in records if r.has_predictions}
    load = findings_lib.caching(lambda run_id: (predictions_lib.load_predictions(
        run_id, client, artifact_uri=tagged[run_id]) if run_id in tagged else None))
    results = findings_lib.evaluate(tables, load, table_metric=metric, resamples=resamples,
                                    seed=bootstrap_seed)
    from rssc_mlflow.results import transfer_table  # it imports this module

    transfers = transfer_table.build_all(records, load, multilabel_metric=metric,
                                         resamples=resamples, seed=bootstrap_seed,
                                         pool_precision=pool_precision)

    # Synthetic if any run that lands in some cell used synthetic data, shown or not.
    used = {(s.stage, s.source, s.target) for layout in LAYOUTS
            for s in layout.cells.values() if s is not None}
    synthetic = any(r.synthetic for key in used for r in index.get(key, []))
    missing = list(dict.fromkeys(cmd for t in tables.values() for cmd in t.missing))
    filled = sum(c.status == "value" for t in tables.values() for c in t.cells.values())
    header_lines = [
        f"Tracking store: {client.tracking_uri}; experiment: {experiment or '(all)'}; "
        f"{len(records)} finished runs read; {filled} cells filled, {len(missing)} missing.",
        "A cell shows one (data, profile kind, fingerprint) group only: real data before "
        "synthetic, a meaningful profile before a quick one, then the group with the most "
        "seeds, then the most recent; other groups are footnoted. A re-run with the same seed "
        "replaces the earlier run.",
        ("Precision and replica count: pooled (--pool-precision); a pooled cell's footnote "
         "says what it holds." if pool_precision else
         "Precision and replica count are part of the fingerprint: mixed-precision or "
         "multi-GPU runs are their own group (pool them with --pool-precision)."),
    ]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    def write(name: str, content: str | bytes) -> None:
        path = out / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        files.append(path)

    pngs: dict[str, bytes] = {}
    texts: list[str] = []
    markdowns: list[str] = []
    for key, table in tables.items():
        md = render_markdown(table, metric)
        write(f"{key}.md", (f"> **{BANNER}**\n\n" if synthetic else "") + md)
        write(f"{key}.csv", render_csv(table))
        write(f"{key}.tex", render_latex(table, metric, synthetic))
        if table.layout.kind == "figure":
            pngs[key] = render_heatmap(table, synthetic)
            write(f"{key}.png", pngs[key])
        texts.append(render_text(table, metric))
        markdowns.append(md)
    style = dict(resamples=resamples, table_metric=metric)
    findings_md = findings_lib.render_markdown(results, synthetic=synthetic, banner=BANNER,
                                               **style)
    write("findings.md", findings_md)
    write("findings.csv", findings_lib.render_csv(results))
    write("findings.html", findings_lib.render_html(results, synthetic=synthetic, banner=BANNER,
                                                    css=_CSS, **style))
    transfer_mds: list[str] = []
    transfer_pngs: dict[str, bytes] = {}
    for t in transfers:
        md = transfer_table.render_markdown(t, resamples)
        write(f"{t.key}.md", md)
        write(f"{t.key}.csv", transfer_table.render_csv(t))
        write(f"{t.key}.tex", transfer_table.render_latex(t, resamples))
        transfer_pngs[t.key] = render_heatmap(t.table, t.synthetic, xlabel=f"On {t.target}")
        write(f"{t.key}.png", transfer_pngs[t.key])
        texts.append(transfer_table.render_text(t, resamples))
        transfer_mds.append(md)
    banner_lines = [BANNER, ""] if synthetic else []
    console = "\n\n".join(["\n".join([*banner_lines, *header_lines]), *texts])
    if missing:
        console += "\n\nTo fill the missing cells:\n" + "\n".join(f"  {c}" for c in missing)
    console += "\n\n" + findings_lib.render_text(results, synthetic=synthetic, banner=BANNER,
                                                 **style)
    top = [f"> **{BANNER}**", ""] if synthetic else []
    write("summary.md", "\n".join([*top, "# rssc summary", "", *header_lines, "", *markdowns,
                                   *transfer_mds, findings_md]))
    write("summary.txt", console + "\n")
    write("summary.html", render_html(
        list(tables.values()), pngs, metric, synthetic, header_lines,
        findings_lib.summary_html(results, **style),
        [(t.anchor, t.title, transfer_table.render_html(t, resamples, transfer_pngs[t.key]))
         for t in transfers]))
    run_id = _log_summary_run(client, experiment, out, metric, synthetic, len(missing), filled,
                              {**_findings_counts(results), "transfer_targets": len(transfers)},
                              pool_precision)
    return SummaryResult(out=out, run_id=run_id, console=console, tables=tables,
                         missing=missing, synthetic=synthetic, files=files,
                         multilabel_metric=metric, findings=results, transfers=transfers)
