"""The plan of `reproduce`: from the paper's layouts and the datasets' sizes to the runs, with
no MLflow and no TensorFlow (so `rssc reproduce --plan` and the tests need neither).

The plan comes only from `paper.LAYOUTS` (every non-n/a cell is one `(stage, source, target)`),
de-duplicated across tables, plus the runs those depend on:
  transfer from dataset key K      needs `pretrain K`
  transfer from `imagenet+K`       needs `adapt K`
  `imagenet` (and every `adapt`)   needs the Keras ImageNet weight file (no run)
Every run is repeated once per seed. Order: all pretrain/adapt runs (level 0), then the
transfers (level 1).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from rssc_mlflow import protocol
from rssc_mlflow.data import splits
from rssc_mlflow.data.catalog import CATALOG, get_spec
from rssc_mlflow.errors import DatasetError, RsscError
from rssc_mlflow.naming import run_name
from rssc_mlflow.results import paper
from rssc_mlflow.settings import SOURCE_STAGES, resolve_settings

Status = Literal["todo", "done", "ran", "failed", "blocked"]
RunKey = tuple[str, str, str, int]  # (stage, source, target, seed)

# The names `--only` accepts, and the layouts each one stands for.
SELECTIONS: dict[str, tuple[str, ...]] = {
    "table2": ("table2",), "table3": ("table3",), "table4": ("table4",),
    "fig1": ("figure1",), "fig2": ("figure2",), "fig3": ("figure3a", "figure3b"),
    "figure1": ("figure1",), "figure2": ("figure2",), "figure3": ("figure3a", "figure3b"),
    "figure3a": ("figure3a",), "figure3b": ("figure3b",),
}


@dataclasses.dataclass
class PlannedRun:
    """One run of the plan, and what became of it."""

    stage: str
    source: str
    target: str
    seed: int
    level: int  # 0: pretrain/adapt, 1: transfers (need level 0)
    cells: list[str]  # "table3 mlrsnet_half/ucm", or "needed by ..." for a dependency
    depends_on: list[RunKey]
    train_images: int
    eval_images: int
    epochs: int
    image_steps: int
    gpu_hours: float
    exact: bool  # image counts from the prepared dataset (else the catalog's expected counts)
    needs_imagenet_weights: bool
    status: Status = "todo"
    run_id: str = ""
    fingerprint: str = ""
    seconds: float = 0.0
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    reason: str = ""
    resume_id: str = ""  # an interrupted run of this cell that this machine can continue

    @property
    def key(self) -> RunKey:
        return (self.stage, self.source, self.target, self.seed)

    @property
    def label(self) -> str:
        return f"{run_name(self.stage, self.source, self.target)} (seed {self.seed})"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["depends_on"] = [list(k) for k in self.depends_on]
        return out


def split_list(text: str | Iterable[str] | None) -> list[str]:
    """'a,b' or ['a', 'b,c'] -> ['a', 'b', 'c'] (blank items dropped)."""
    if text is None:
        return []
    items = [text] if isinstance(text, str) else list(text)
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def selected_layouts(only: Sequence[str] | None) -> list[paper.Layout]:
    """The layouts `only` names (all when None/empty), in the paper's order."""
    names = split_list(only)
    unknown = [n for n in names if n.lower() not in SELECTIONS]
    if unknown:
        raise RsscError(f"Unknown table or figure {', '.join(map(repr, unknown))} in --only. "
                        "Choose from: table2, table3, table4, fig1, fig2, fig3.")
    keys = {k for n in names for k in SELECTIONS[n.lower()]}
    return [lay for lay in paper.LAYOUTS if not keys or lay.key in keys]


def upstream_of(source: str) -> tuple[str, str, str] | None:
    """The pretrain/adapt run whose registered model a transfer from `source` loads."""
    init, plus, key = source.partition("+")
    if plus and init == "imagenet" and key in CATALOG:
        return ("adapt", key, "")
    if source in CATALOG:
        return ("pretrain", source, "")
    return None  # scratch, imagenet (a weight file), models:/..., a file


def _class_counts(key: str) -> tuple[dict[str, int], bool]:
    """Images per split class of `key`: from the prepared dataset, else the catalog (approx.)."""
    spec = get_spec(key)
    try:
        from rssc_mlflow.data.prepare import load_prepared

        records = load_prepared(key).records
        # Splits stratify by category where a record has one (MLRSNet), else by label.
        return dict(collections.Counter(
            str(r.category) if r.category is not None else str(r.label) for r in records)), True
    except DatasetError:
        pass
    per_class = spec.expected_per_class
    if per_class is None and spec.is_mlrsnet:  # subsets and the multi-label view: same images
        per_class = get_spec("mlrsnet_sl").expected_per_class
    if per_class is None:
        return {"*": spec.expected_images}, False  # one pseudo-class: fraction of the total
    keep = spec.categories or tuple(per_class)
    return {c: (per_class[c] // 2 if spec.fraction < 1 else per_class[c]) for c in keep}, False


def _split_sizes(key: str, role: str, cache: dict[str, tuple[dict[str, int], bool]]
                 ) -> tuple[int, int, bool]:
    if key not in cache:
        cache[key] = _class_counts(key)
    counts, exact = cache[key]
    train = sum(splits.n_train_for(n, role) for n in counts.values())
    return train, sum(counts.values()) - train, exact


def plan(profile: str = protocol.DEFAULT_PROFILE, *, only: Sequence[str] | None = None,
         seeds: Sequence[int] = (protocol.SEED,), throughput: float = 2500.0,
         targets: Sequence[str] | None = None) -> list[PlannedRun]:
    """Every run the selected tables/figures need, in dependency order (no store access).

    `targets` keeps only the transfer cells on those target datasets (Table II's cells, which
    have none, always stay), e.g. `("ucm",)` for the UCM column of the figures.

    Image-steps: training images x epochs + evaluation images x epochs (the protocol evaluates
    the held-out split after every epoch; the demo profile does not) + one final evaluation; a probe extracts features of
    all target images once (its epochs on 2048-d features cost ~nothing).
    """
    protocol.get_profile(profile)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise RsscError("reproduce needs at least one seed.")
    if throughput <= 0:
        raise RsscError(f"Invalid throughput {throughput!r}: images per second must be positive.")
    wanted = set(split_list(targets)) if targets is not None else None
    unknown = sorted(wanted - set(CATALOG)) if wanted else []
    if unknown:
        raise RsscError(f"Unknown target dataset {', '.join(map(repr, unknown))}. Targets are "
                        f"dataset keys: {', '.join(CATALOG)}.")
    cells: dict[tuple[str, str, str], list[str]] = {}
    for layout in selected_layouts(only):
        for (row, col), spec in layout.cells.items():
            if spec is not None and wanted is not None and spec.target and spec.target not in wanted:
                continue
            if spec is not None:  # n/a cells: no run
                cells.setdefault((spec.stage, spec.source, spec.target), []).append(
                    f"{layout.key} {row}/{col}")
    for (stage, source, target) in list(cells):
        up = upstream_of(source) if stage not in SOURCE_STAGES else None
        if up is not None:
            cells.setdefault(up, []).append(f"needed by {run_name(stage, source, target)}")
    bases = sorted(cells, key=lambda b: b[0] not in SOURCE_STAGES)  # stable: level 0 first
    sizes: dict[str, tuple[dict[str, int], bool]] = {}
    out: list[PlannedRun] = []
    for level in (0, 1):
        for seed in seeds:
            for stage, source, target in bases:
                if (stage in SOURCE_STAGES) != (level == 0):
                    continue
                up = upstream_of(source) if level == 1 else None
                out.append(planned_run(
                    stage, source, target, seed, level=level,
                    cells=cells[(stage, source, target)],
                    depends_on=[(*up, s) for s in seeds] if up else [], profile=profile,
                    throughput=throughput, sizes=sizes))
    return out


def planned_run(stage: str, source: str, target: str, seed: int, *, level: int,
                cells: list[str], depends_on: list[RunKey], profile: str, throughput: float,
                sizes: dict[str, tuple[dict[str, int], bool]]) -> PlannedRun:
    """One run of a plan with its image-steps and GPU-hours (see `plan`); `sizes` caches the
    datasets' class counts across calls."""
    key = target or source
    role = "source" if stage in SOURCE_STAGES else "target"
    train, test, exact = _split_sizes(key, role, sizes)
    epochs = resolve_settings(stage, source=source, target=target, profile=profile).epochs
    validated = protocol.get_profile(profile).validate_every_epoch
    steps = (train + test if stage == "probe"
             else (train + (test if validated else 0)) * epochs + test)
    return PlannedRun(stage, source, target, seed, level, cells, depends_on, train, test,
                      epochs, steps, steps / throughput / 3600, exact,
                      stage == "adapt" or source == "imagenet")


# --- The report ----------------------------------------------------------------------------------


@dataclasses.dataclass
class ReproduceReport:
    """The runs of one `reproduce` (or `transfer`) call and what became of each: the console
    table (`table`) and the JSON (`to_json`) that `rssc reproduce --json` writes."""

    profile: str
    backend: str
    seeds: list[int]
    throughput: float
    plan_only: bool
    planned: list[PlannedRun]
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ran(self) -> list[PlannedRun]:
        return [r for r in self.planned if r.status == "ran"]

    @property
    def skipped(self) -> list[PlannedRun]:
        """Already done (with the run id found), or blocked by a failed dependency."""
        return [r for r in self.planned if r.status in ("done", "blocked")]

    @property
    def failed(self) -> list[PlannedRun]:
        return [r for r in self.planned if r.status == "failed"]

    @property
    def todo(self) -> list[PlannedRun]:
        return [r for r in self.planned if r.status == "todo"]

    @property
    def ok(self) -> bool:
        """False when a run failed or was blocked (a plan is always ok; see `warnings`)."""
        if self.plan_only:
            return True
        return not self.failed and not any(r.status == "blocked" for r in self.planned)

    @property
    def total_image_steps(self) -> int:
        return sum(r.image_steps for r in self.planned)

    @property
    def total_gpu_hours(self) -> float:
        return sum(r.gpu_hours for r in self.planned)

    @property
    def todo_gpu_hours(self) -> float:
        return sum(r.gpu_hours for r in self.planned if r.status in ("todo", "failed", "blocked"))

    def table(self) -> str:
        head = (f"{'#':>4}  {'stage':<8} {'source':<20} {'target':<11} {'seed':>5}  "
                f"{'status':<7} {'run':<12} {'image-steps':>14} {'GPU-h':>8}")
        lines = [head, "-" * len(head)]
        for i, r in enumerate(self.planned, start=1):
            steps = f"{'' if r.exact else '~'}{r.image_steps:,}"
            lines.append(f"{i:>4}  {r.stage:<8} {r.source:<20} {r.target or '-':<11} "
                         f"{r.seed:>5}  {r.status:<7} {r.run_id[:12] or '-':<12} {steps:>14} "
                         f"{r.gpu_hours:>8.2f}")
            if r.reason and r.status in ("failed", "blocked"):
                lines.append(f"        {r.status}: {r.reason[:300]}")
        count = collections.Counter(r.status for r in self.planned)
        lines.append("-" * len(head))
        lines.append(
            f"{len(self.planned)} runs ({', '.join(f'{n} {s}' for s, n in count.items())}); "
            f"{self.total_image_steps:,} image-steps = {self.total_gpu_hours:,.2f} GPU-hours at "
            f"{self.throughput:,.0f} images/s, {self.todo_gpu_hours:,.2f} still to run "
            f"(profile {self.profile}, seeds {','.join(map(str, self.seeds))}; '~' = catalog "
            "estimate, dataset not prepared)")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile, "backend": self.backend, "seeds": self.seeds,
            "plan_only": self.plan_only, "ok": self.ok, "warnings": self.warnings,
            "total_image_steps": self.total_image_steps, "total_gpu_hours": self.total_gpu_hours,
            "todo_gpu_hours": self.todo_gpu_hours,
            "planned": [r.to_json() for r in self.planned],
            "ran": [list(r.key) for r in self.ran], "skipped": [list(r.key) for r in self.skipped],
            "failed": [list(r.key) for r in self.failed],
        }
