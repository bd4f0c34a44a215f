"""The "Transfer to NAME" tables of `summarize`: does pre-training pay off on a dataset outside
the paper, and which pre-training should one use there?

For every target in the store that is not one of the paper's (`paper.FIGURE_TARGETS`), e.g. a
dataset of your own run with `rssc transfer NAME`, the table has one row per pre-training
source found in the runs (scratch and ImageNet-1k always shown) and two columns, the probe
(frozen features) and fine-tuning, each ranked. Cells are filled exactly as the paper's
(`summarize.build_table`: one fingerprint group, a seed counted once, quick profiles marked
†). Each source's gain over ImageNet-1k (same stage) and over training from scratch
(fine-tuning from scratch, the baseline) is A - B in points with the Findings' paired
bootstrap 95 % interval over the test images (`findings.compare_cells`: runs paired by seed on
the same images; the verdict of "A > B" is holds, contradicted or inconclusive).

The answer paragraph uses only cells of meaningful profiles: it names the fine-tuning source
with the highest value and its margin over ImageNet-1k (or, when ImageNet-1k is best, its
margin over the runner-up), and says whether "ImageNet pre-training pays off" (fine-tuning from
ImageNet-1k > from scratch) holds, is contradicted or is inconclusive. Intervals of quick
cells are shown, marked †, and never used for it.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import html
import io
from collections.abc import Iterable, Mapping, Sequence

from rssc_mlflow.data.catalog import CATALOG, get_spec
from rssc_mlflow.errors import DatasetError
from rssc_mlflow.results import findings as fl
from rssc_mlflow.results import paper
from rssc_mlflow.results import summarize as sm
from rssc_mlflow.results.paper import Axis, CellSpec, Layout
from rssc_mlflow.settings import TRANSFER_RESULT_STAGES as STAGES  # the table's columns

SCRATCH, IMAGENET = "scratch", "imagenet"
STAGE_LABELS = {"probe": "Probe", "finetune": "Fine-tune"}
BASELINES = (IMAGENET, SCRATCH)
PAPER_TARGETS = frozenset(paper.FIGURE_TARGETS)
NOT_ANSWERED = "not answered"


def transfer_targets(records: Iterable[sm.RunRecord]) -> list[str]:
    """Targets of probe/finetune runs that are not one of the paper's, sorted."""
    return sorted({r.target for r in records if r.stage in STAGES and r.target
                   and r.target not in PAPER_TARGETS})


def source_label(source: str) -> str:
    """How a row is named: the paper's names, catalog titles, your datasets' keys."""
    if source == SCRATCH:
        return "Scratch (no pre-training)"
    if source in paper.PAPER_NAMES:
        return paper.PAPER_NAMES[source]
    if source in CATALOG:
        return CATALOG[source].title
    if source.startswith("imagenet+"):
        return f"ImageNet-1k adapted on {source_label(source.partition('+')[2])}"
    if source.startswith("models:/rssc-resnet50-"):
        name = source.removeprefix("models:/rssc-resnet50-").partition("@")[0]
        name = name.partition("/")[0]
        if name.startswith("imagenet-"):
            return f"ImageNet-1k adapted on {name.removeprefix('imagenet-')}"
        return f"{name} (pre-trained from scratch)"
    return source


@dataclasses.dataclass(frozen=True)
class _Cell(CellSpec):
    """A transfer cell: its multi-label flag is given (the target may no longer be registered)."""

    is_multilabel: bool = False

    @property
    def multilabel(self) -> bool:  # type: ignore[override]
        return self.is_multilabel


@dataclasses.dataclass
class Gain:
    """A row's A - B against one baseline, with the label that seeded its bootstrap."""

    baseline: str  # "imagenet" or "scratch"
    label: str
    outcome: fl.Outcome

    @property
    def counted(self) -> bool:
        return self.outcome.status in fl.TESTED and not self.outcome.quick

    def text(self) -> str:
        o = self.outcome
        if o.difference is None:
            return ""
        mark = sm.QUICK_MARK if o.quick else ""
        if o.low is None:
            return f"{o.difference:+.2f}{mark} ({o.status})"
        return f"{o.difference:+.2f} [{o.low:+.2f}, {o.high:+.2f}]{mark} {o.status}"


@dataclasses.dataclass
class Row:
    source: str
    label: str
    cells: dict[str, sm.CellResult | None]  # by stage; None: n/a (no probe of scratch)
    ranks: dict[str, int | None]
    gains: dict[tuple[str, str], Gain]  # (stage, baseline)


@dataclasses.dataclass
class TransferTable:
    target: str
    title: str
    table: sm.TableResult
    rows: list[Row]
    metric: str
    answer: str
    pays_off: str  # holds / contradicted / inconclusive / not answered
    best: str  # the fine-tuning source the answer recommends ('' when not answered)
    synthetic: bool
    hrrs: bool

    @property
    def key(self) -> str:
        return f"transfer_{self.target}"

    @property
    def anchor(self) -> str:
        return f"transfer-{self.target}"


def bootstrap_label(target: str, stage: str, source: str, baseline: str) -> str:
    """What seeds a gain's bootstrap (with the base seed): stable, unique per comparison."""
    base_stage = "finetune" if baseline == SCRATCH else stage
    return f"transfer {target}: {stage} {source} vs {base_stage} {baseline}"


def bootstrap_seed(base: int, label: str) -> list[int]:
    return [base, int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "big")]


def _multilabel(target: str, records: Sequence[sm.RunRecord]) -> bool:
    try:
        return get_spec(target).multilabel
    except DatasetError:  # removed since its runs: the metrics tell
        return not any(sm.SINGLE_LABEL_METRIC in r.metrics for r in records)


def _hrrs(target: str) -> bool:
    try:
        return get_spec(target).hrrs
    except DatasetError:
        return True


def _sources(records: Sequence[sm.RunRecord]) -> list[str]:
    found = {r.source for r in records}
    order = [SCRATCH, IMAGENET, *paper.FIGURE1_SOURCES, *paper.FIGURE3_SOURCES]
    first = [s for s in dict.fromkeys(order) if s in found or s in (SCRATCH, IMAGENET)]
    return first + sorted(found - set(first))


def _layout(target: str, sources: Sequence[str], multilabel: bool) -> Layout:
    rows = tuple(Axis(s, source_label(s)) for s in sources)
    cols = tuple(Axis(stage, STAGE_LABELS[stage]) for stage in STAGES)
    cells = {(s, stage): None if (s == SCRATCH and stage == "probe")
             else _Cell(stage, s, target, is_multilabel=multilabel)  # type: ignore[arg-type]
             for s in sources for stage in STAGES}
    return Layout(f"transfer_{target}", "figure", f"Transfer to {target}",
                  f"Accuracies/F1-measures (%) on {target}'s 80 % test split of a linear probe on "
                  "frozen features (`rssc probe`) and of fine-tuning (`rssc finetune`) from each "
                  "pre-training source (`rssc transfer`).", "Source", rows, cols, cells)


def _ranks(cells: Mapping[str, sm.CellResult | None]) -> dict[str, int]:
    filled = sorted(((c.mean, s) for s, c in cells.items() if c is not None and c.mean is not None),
                    key=lambda t: (-t[0], t[1]))
    return {s: i for i, (_, s) in enumerate(filled, start=1)}


def build(target: str, records: Sequence[sm.RunRecord], load: fl.Loader, *,
          multilabel_metric: str, resamples: int = fl.DEFAULT_RESAMPLES,
          seed: int = fl.BOOTSTRAP_SEED, pool_precision: bool = False) -> TransferTable:
    """The table of `target` from its probe/finetune runs (`records`: FINISHED runs)."""
    mine = [r for r in records if r.stage in STAGES and r.target == target]
    multilabel = _multilabel(target, mine)
    sources = _sources(mine)
    table = sm.build_table(_layout(target, sources, multilabel), sm._index(mine),
                           multilabel_metric, pool_precision)
    metric = f"test_{multilabel_metric}" if multilabel else sm.SINGLE_LABEL_METRIC

    def compare(stage: str, source: str, baseline: str) -> Gain:
        base_stage = "finetune" if baseline == SCRATCH else stage
        label = bootstrap_label(target, stage, source, baseline)
        outcome = fl.compare_cells(
            table.cell(source, stage), table.cell(baseline, base_stage), load, claim="greater",
            table_metric=multilabel_metric, resamples=resamples, seed=bootstrap_seed(seed, label),
            labels=(f"{STAGE_LABELS[stage]} {source_label(source)}",
                    f"{STAGE_LABELS[base_stage]} {source_label(baseline)}"),
            allow_quick=True)
        return Gain(baseline, label, outcome)

    per_stage = {stage: {s: table.cell(s, stage) for s in sources
                         if table.layout.cell(s, stage) is not None} for stage in STAGES}
    ranks = {stage: _ranks(cells) for stage, cells in per_stage.items()}
    rows = []
    for s in sources:
        gains = {(stage, b): compare(stage, s, b) for stage in STAGES for b in BASELINES
                 if table.layout.cell(s, stage) is not None and b != s}
        rows.append(Row(s, source_label(s),
                        {st: per_stage[st].get(s) for st in STAGES},
                        {st: ranks[st].get(s) for st in STAGES}, gains))
    rows.sort(key=lambda r: (r.ranks["finetune"] or 10**6, r.ranks["probe"] or 10**6))
    result = TransferTable(target, f"Transfer to {target}", table, rows, metric, "", NOT_ANSWERED,
                           "", any(c.synthetic for c in table.cells.values()), _hrrs(target))
    result.answer, result.pays_off, result.best = _answer(result, table, compare)
    return result


def _points(o: fl.Outcome) -> str:
    return (f"{o.difference:+.2f} points [95 % CI {o.low:+.2f}, {o.high:+.2f}]"
            if o.low is not None else f"{o.difference:+.2f} points")


def _answer(t: TransferTable, table: sm.TableResult, compare) -> tuple[str, str, str]:
    """(the paragraph, the 'ImageNet pays off' verdict, the recommended source)."""
    name = t.target
    meaningful = {s: c for s in (r.source for r in t.rows)
                  if (c := table.cell(s, "finetune")).mean is not None and not c.quick}
    quick = sorted({p for c in table.cells.values() if c.quick for p in c.profiles})
    lead = f"Answer for {name} ({t.metric}, fine-tuning on its 20 %, tested on its 80 %): "
    if not meaningful:
        why = (f"every run comes from the quick profile {', '.join(quick)} ({sm.QUICK_MARK}), "
               "whose cells are never used for the answer" if quick
               else "no fine-tuning run has finished yet")
        return (lead + f"not answered: {why}. Run `rssc transfer {name} --profile paper` (or "
                "`--profile demo` on a CPU), then `rssc summarize`.", NOT_ANSWERED, "")
    best = max(meaningful, key=lambda s: (meaningful[s].mean, s == IMAGENET))
    cb = meaningful[best]
    parts = [f"fine-tuning from {source_label(best)} is best, {cb.mean:.2f} %"]
    if best != IMAGENET and IMAGENET in meaningful:
        g = next(r for r in t.rows if r.source == best).gains.get(("finetune", IMAGENET))
        if g is not None and g.counted:
            parts.append(f"{_points(g.outcome)} over ImageNet-1k ({_claim(g.outcome.status)})")
        elif g is not None:
            parts.append(f"its margin over ImageNet-1k is not tested "
                         f"({g.outcome.note or g.outcome.status})")
    elif best == IMAGENET:
        others = [s for s in meaningful if s != IMAGENET]
        if others:
            runner = max(others, key=lambda s: meaningful[s].mean)
            o = compare("finetune", IMAGENET, runner).outcome
            if o.status in fl.TESTED:
                parts.append(f"{_points(o)} over the runner-up, {source_label(runner)} "
                             f"({_claim(o.status)})")
    if best != SCRATCH and SCRATCH in meaningful:
        g = next(r for r in t.rows if r.source == best).gains.get(("finetune", SCRATCH))
        if g is not None and g.counted:
            parts.append(f"{_points(g.outcome)} over training from scratch")
    text = lead + "; ".join(parts) + ". "
    imagenet = next((r for r in t.rows if r.source == IMAGENET), None)
    g = imagenet.gains.get(("finetune", SCRATCH)) if imagenet else None
    if g is not None and g.counted:
        pays = g.outcome.status
        text += (f"ImageNet pre-training pays off (fine-tuning from ImageNet-1k > from "
                 f"scratch): {pays}, {_points(g.outcome)}.")
    else:
        pays = NOT_ANSWERED
        why = g.outcome.note if g is not None and g.outcome.note else "a cell is missing"
        text += f"ImageNet pre-training pays off: not tested ({why})."
    probes = {s: c for s in (r.source for r in t.rows)
              if (c := table.cell(s, "probe")).mean is not None and not c.quick}
    if probes:
        bp = max(probes, key=lambda s: probes[s].mean)
        text += (f" As a frozen feature extractor (probe), {source_label(bp)} is best, "
                 f"{probes[bp].mean:.2f} %.")
    if quick:
        text += f" Cells of the quick profile {', '.join(quick)} ({sm.QUICK_MARK}) are left out."
    if not t.hrrs:
        text += (f" {name} is medium resolution ({get_spec(name).resolution}), outside the "
                 "paper's question (high-resolution scenes).")
    if t.synthetic:
        text += " Computed on synthetic stand-in data: not evidence about real imagery."
    return text, pays, best


def _claim(status: str) -> str:
    return {fl.HOLDS: "the interval is above 0", fl.CONTRADICTED: "the interval is below 0",
            fl.INCONCLUSIVE: "inconclusive: the interval contains 0"}.get(status, status)


def build_all(records: Sequence[sm.RunRecord], load: fl.Loader, *, multilabel_metric: str,
              resamples: int = fl.DEFAULT_RESAMPLES, seed: int = fl.BOOTSTRAP_SEED,
              pool_precision: bool = False) -> list[TransferTable]:
    return [build(t, records, load, multilabel_metric=multilabel_metric, resamples=resamples,
                  seed=seed, pool_precision=pool_precision) for t in transfer_targets(records)]


# --- Rendering ---------------------------------------------------------------------------------

HEADER = ("Source", "Probe", "Probe rank", "Probe - ImageNet-1k [95 % CI]",
          "Probe - scratch [95 % CI]", "Fine-tune", "Fine-tune rank",
          "Fine-tune - ImageNet-1k [95 % CI]", "Fine-tune - scratch [95 % CI]")


def _grid(t: TransferTable) -> list[list[str]]:
    out = []
    for r in t.rows:
        line = [r.label]
        for stage in STAGES:
            cell = r.cells[stage]
            num = t.table.footnotes.get((r.source, stage))
            text = "n/a" if cell is None else cell.text + (f" [{num}]" if num else "")
            rank = r.ranks[stage]
            line += [text, str(rank) if rank else ""]
            line += [r.gains[(stage, b)].text() if (stage, b) in r.gains else ""
                     for b in BASELINES]
        out.append(line)
    return out


def method_note(resamples: int) -> str:
    return (f"Values in %; several seeds: mean ± sample std (n=seeds). Ranks: 1 = highest "
            f"in the column. A - B in points with a paired "
            f"bootstrap 95 % interval over the test images ({resamples:,} resamples, runs "
            f"paired by seed); the verdict of A > B: holds (interval above 0), contradicted "
            f"(below 0), inconclusive (contains 0). Scratch has no probe (features of a random "
            f"network are not part of the protocol); every gain over scratch is over "
            f"fine-tuning from scratch. {sm.QUICK_MARK}: a quick profile's cell or interval, "
            "shown for inspection and never used for the answer.")


def _notes(t: TransferTable) -> list[str]:
    return sm._notes(t.table)


def render_text(t: TransferTable, resamples: int) -> str:
    rows = _grid(t)
    widths = [max(len(x[i]) for x in [list(HEADER), *rows]) for i in range(len(HEADER))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([f"{t.title}: {t.table.layout.caption}", fmt(HEADER),
                      "  ".join("-" * w for w in widths), *map(fmt, rows),
                      f"Metric: {t.metric}. " + method_note(resamples), *_notes(t), t.answer])


def render_markdown(t: TransferTable, resamples: int) -> str:
    esc = sm._md_escape
    out = [f"## {t.title}", ""]
    if t.synthetic:
        out += [f"> **{sm.BANNER}**", ""]
    out += [esc(t.table.layout.caption), "", f"**{esc(t.answer)}**", "",
            "| " + " | ".join(HEADER) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|"]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in _grid(t)]
    out += ["", esc(f"Metric: {t.metric}. " + method_note(resamples)), ""]
    out += [f"- {esc(n)}" for n in sm._notes(t.table, code="`")]
    return "\n".join(out).rstrip() + "\n"


CSV_FIELDS = ("target", "source", "source_label", "stage", "status", "metric", "value", "std",
              "n", "rank", "quick", "synthetic", "run_ids", "vs_imagenet", "vs_imagenet_low",
              "vs_imagenet_high", "vs_imagenet_verdict", "vs_scratch", "vs_scratch_low",
              "vs_scratch_high", "vs_scratch_verdict", "answer_pays_off", "answer_best")


def render_csv(t: TransferTable) -> str:
    """One line per (source, stage), gains in points; loads with `pandas.read_csv(path)`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    num = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for r in t.rows:
        for stage in STAGES:
            c = r.cells[stage]
            gains = []
            for b in BASELINES:
                g = r.gains.get((stage, b))
                o = g.outcome if g else None
                gains += ([num(o.difference), num(o.low), num(o.high), o.status] if o
                          else ["", "", "", ""])
            writer.writerow([
                t.target, r.source, r.label, stage, "n/a" if c is None else c.status, t.metric,
                num(c.mean) if c else "", num(c.std) if c else "", c.n if c else 0,
                r.ranks[stage] or "", str(bool(c and c.quick)).lower(),
                str(bool(c and c.synthetic)).lower(), " ".join(c.run_ids) if c else "",
                *gains, t.pays_off, t.best])
    return buf.getvalue()


def render_latex(t: TransferTable, resamples: int) -> str:
    tex = sm._tex
    out = ["% Generated by rssc summarize; needs \\usepackage{booktabs}."]
    if t.synthetic:
        out += [f"% {sm.BANNER}", f"\\noindent\\textbf{{{tex(sm.BANNER)}}}\\par"]
    out += ["\\begin{table}[ht]", "\\centering", "\\small",
            f"\\caption{{{tex(t.title + ': ' + t.table.layout.caption)}}}",
            f"\\label{{tab:rssc-{t.key.replace('_', '-')}}}",
            "\\begin{tabular}{l" + "r" * (len(HEADER) - 1) + "}", "\\toprule",
            " & ".join(tex(h) for h in HEADER) + " \\\\", "\\midrule"]
    out += [" & ".join(tex(v) for v in r) + " \\\\" for r in _grid(t)]
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", "", tex(t.answer), "",
            f"% Metric: {t.metric}. {method_note(resamples)}"]
    out += [f"% {n}" for n in sm._notes(t.table)]
    return "\n".join(out) + "\n"


def render_html(t: TransferTable, resamples: int, png: bytes | None = None) -> list[str]:
    """A section of the summary page, anchored at `t.anchor` (`png`: its heatmap)."""
    esc = html.escape
    out = [f"<h2 id='{esc(t.anchor)}'>{esc(t.title)}</h2>"]
    if t.synthetic:
        out.append(f"<div class='banner'>{esc(sm.BANNER)}</div>")
    out += [f"<p>{sm._html_text(t.table.layout.caption)}</p>",
            f"<p><strong>{esc(t.answer)}</strong></p>", "<table><thead><tr>"]
    out += [f"<th>{esc(h)}</th>" for h in HEADER]
    out.append("</tr></thead><tbody>")
    for line in _grid(t):
        cells = ("<td class='na'>n/a</td>" if v == "n/a" else f"<td>{esc(v)}</td>" for v in line)
        out.append("<tr>" + "".join(cells) + "</tr>")
    note = f"Metric: {t.metric}. " + method_note(resamples)
    out.append("</tbody></table>")
    if png:
        data = base64.b64encode(png).decode("ascii")
        out.append(f"<p><img alt='{esc(t.title)} heatmap' src='data:image/png;base64,{data}'></p>")
    out.append(f"<div class='notes'><p>{esc(note)}</p><ul>")
    out += [f"<li>{sm._html_text(n)}</li>" for n in sm._notes(t.table, code="`")]
    out.append("</ul></div>")
    return out
