"""The layouts of the paper's Tables II-IV and Figures 1-3: rows, columns, stages, labels.

Every cell is a `CellSpec` saying which runs fill it (stage, source reference, target) and, for
the tables, the published value. Rows and columns are in the paper's order with the paper's
labels (the captions number the figure axes: "1-ImageNet-1k", ...). `summarize` only reads
these layouts; it never decides on its own what belongs where.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

from rssc_mlflow import protocol
from rssc_mlflow.data.catalog import CATALOG, get_spec
from rssc_mlflow.settings import Stage

Kind = Literal["table", "figure"]

# The paper's names, which differ from the catalog titles in places ("RSI-CB", "RESISC45").
PAPER_NAMES: dict[str, str] = {
    "scratch": "Scratch",
    "imagenet": "ImageNet-1k",
    "imagenet100": "ImageNet-100",
    "mlrsnet_ml": "MLRSNet (multi-label)",
    "mlrsnet_sl": "MLRSNet (single-label)",
    "resisc45": "RESISC45",
    "aid": "AID",
    "patternnet": "PatternNet",
    "rsicb256": "RSI-CB",
    "ucm": "UCM",
    "mlrsnet_ucm_same": "Same classes",
    "mlrsnet_ucm_other": "Different classes",
    "mlrsnet_half": "All classes",
}


@dataclasses.dataclass(frozen=True)
class Axis:
    """One row or column: `key` is what the runs' tags hold, `label` what the paper prints."""

    key: str
    label: str


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """The runs that fill one cell: finished runs with these tags (target '' = none)."""

    stage: Stage
    source: str
    target: str = ""
    paper: float | None = None  # published value in %, tables only

    @property
    def evaluated(self) -> str:
        """The dataset the metric is measured on: the target, or the source for Table II."""
        return self.target or self.source

    @property
    def multilabel(self) -> bool:
        return get_spec(self.evaluated).multilabel

    @property
    def command(self) -> str:
        """The `rssc` command whose run fills this cell."""
        cmd = f"rssc {self.stage} --source {self.source}"
        return f"{cmd} --target {self.target}" if self.target else cmd


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """A table or figure of the paper. `cells[(row, col)]` is None where the cell is n/a."""

    key: str  # file stem of the outputs: table2, figure1, ...
    kind: Kind
    title: str
    caption: str
    row_header: str
    rows: tuple[Axis, ...]
    cols: tuple[Axis, ...]
    cells: Mapping[tuple[str, str], CellSpec | None]

    def cell(self, row: str, col: str) -> CellSpec | None:
        return self.cells[(row, col)]


def shares_images(source: str, target: str) -> bool:
    """True where the protocol never pairs source and target: same dataset, or both MLRSNet.

    A domain-adapted reference `imagenet+X` counts as X; `scratch`, `imagenet`, ... never clash.
    """
    base = source.partition("+")[2] or source
    if base not in CATALOG or target not in CATALOG:
        return False
    return get_spec(base).family == get_spec(target).family


def _numbered(keys: Sequence[str], names: Mapping[str, str] = PAPER_NAMES) -> tuple[Axis, ...]:
    return tuple(Axis(k, f"{i}-{names[k]}") for i, k in enumerate(keys, start=1))


def _figure(key: str, title: str, caption: str, stage: Stage, sources: Sequence[str],
            targets: Sequence[str], source_names: Mapping[str, str] = PAPER_NAMES) -> Layout:
    rows, cols = _numbered(sources, source_names), _numbered(targets)
    cells = {(s, t): None if shares_images(s, t) else CellSpec(stage, s, t)
             for s in sources for t in targets}
    return Layout(key, "figure", title, caption, "Source \\ Target", rows, cols, cells)


def _table2() -> Layout:
    rows = tuple(Axis(k, PAPER_NAMES[k]) for k in protocol.TABLE2)  # paper's row order
    cols = (Axis("pretrain", "Scratch"), Axis("adapt", "Fine-tuning"))
    stages = {"pretrain": Stage.PRETRAIN, "adapt": Stage.ADAPT}
    paper_col = {"pretrain": "scratch", "adapt": "imagenet"}  # protocol.TABLE2's column names
    cells: dict[tuple[str, str], CellSpec | None] = {
        (r.key, c.key): CellSpec(stages[c.key], r.key, "",
                                 protocol.TABLE2[r.key][paper_col[c.key]])
        for r in rows for c in cols
    }
    return Layout(
        "table2", "table", "Table II",
        "Validation accuracies/F1-measures (%) of models trained on 80% of the images from the "
        "HRRS datasets (Scratch: `rssc pretrain`; Fine-tuning from ImageNet-1k: `rssc adapt`).",
        "Dataset", rows, cols, cells,
    )


def _subset_table(key: str, title: str, caption: str, stage: Stage,
                  published: Mapping[str, float]) -> Layout:
    rows = tuple(Axis(k, PAPER_NAMES[k]) for k in published)
    cols = (Axis("ucm", "Accuracy (%)"),)
    cells: dict[tuple[str, str], CellSpec | None] = {
        (r.key, "ucm"): CellSpec(stage, r.key, "ucm", published[r.key]) for r in rows
    }
    return Layout(key, "table", title, caption, "Subset", rows, cols, cells)


FIGURE_TARGETS = ("mlrsnet_ml", "mlrsnet_sl", "resisc45", "aid", "patternnet", "rsicb256", "ucm")
FIGURE1_SOURCES = ("imagenet", "imagenet100", "mlrsnet_ml", "mlrsnet_sl", "resisc45", "aid",
                   "patternnet", "rsicb256")
FIGURE2_SOURCES = ("scratch", *FIGURE1_SOURCES)
FIGURE3_SOURCES = ("imagenet+mlrsnet_ml", "imagenet+mlrsnet_sl", "imagenet+resisc45",
                   "imagenet+aid")
FIGURE3_TARGETS = ("mlrsnet_ml", "mlrsnet_sl", "resisc45", "aid", "ucm")
# Figure 3's caption names the domain-adapted models by the dataset they were adapted on.
_ADAPTED_NAMES = {s: PAPER_NAMES[s.partition("+")[2]] for s in FIGURE3_SOURCES}


def _layouts() -> tuple[Layout, ...]:
    return (
        _table2(),
        _subset_table(
            "table3", "Table III",
            "Classification accuracies on UCM when different subsets of MLRSNet are used for "
            "training the feature extractor (`rssc probe`).",
            Stage.PROBE, protocol.TABLE3,
        ),
        _subset_table(
            "table4", "Table IV",
            "Fine-tuning accuracies on UCM when different subsets of MLRSNet are used for "
            "pre-training (`rssc finetune`).",
            Stage.FINETUNE, protocol.TABLE4,
        ),
        _figure(
            "figure1", "Figure 1",
            "Classification accuracies/F1-measures (%) on the target datasets obtained by "
            "training softmax classifiers on the features extracted using the pre-trained "
            "networks (`rssc probe`).",
            Stage.PROBE, FIGURE1_SOURCES, FIGURE_TARGETS,
        ),
        _figure(
            "figure2", "Figure 2",
            "Classification accuracies/F1-measures (%) on the target datasets obtained by "
            "fine-tuning the pre-trained networks (`rssc finetune`).",
            Stage.FINETUNE, FIGURE2_SOURCES, FIGURE_TARGETS,
        ),
        _figure(
            "figure3a", "Figure 3a",
            "Classification accuracies/F1-measures (%) on the target datasets obtained by "
            "training softmax classifiers on the features extracted using the domain-adapted "
            "models (`rssc probe --source imagenet+X`).",
            Stage.PROBE, FIGURE3_SOURCES, FIGURE3_TARGETS, _ADAPTED_NAMES,
        ),
        _figure(
            "figure3b", "Figure 3b",
            "Classification accuracies/F1-measures (%) on the target datasets obtained by "
            "fine-tuning the domain-adapted models (`rssc finetune --source imagenet+X`).",
            Stage.FINETUNE, FIGURE3_SOURCES, FIGURE3_TARGETS, _ADAPTED_NAMES,
        ),
    )


# In the paper's order. Figure values are only drawn in the paper: no published numbers.
LAYOUTS: tuple[Layout, ...] = _layouts()


def get_layout(key: str) -> Layout:
    for layout in LAYOUTS:
        if layout.key == key:
            return layout
    raise KeyError(f"No layout {key!r}; there are: {', '.join(x.key for x in LAYOUTS)}.")
