"""`rssc transfer NAME`: the whole transfer row for one target dataset, resumable.

Does pre-training pay off on NAME, and which pre-training? The row holds:
  finetune scratch -> NAME                    the from-scratch baseline
  probe SOURCE -> NAME, finetune SOURCE -> NAME   for every backbone of the profile
on NAME's 20/80 target split, once per seed. The backbones of profile P are ImageNet-1k (when
the Keras weight file is found, `models.imagenet_weights_path`) and every registered
`rssc-resnet50-*` model with a version aliased @P: pre-trained from scratch (`pretrain`) or
domain-adapted from ImageNet (`adapt`), on a catalog dataset or on another of your datasets.
A backbone trained on NAME's own images (or, for MLRSNet, on any of its views) is left out.
`--sources` names the backbones instead (model references: imagenet, KEY, imagenet+KEY, one of
your datasets' keys, models:/...).

The paper's pre-training sources that are not available are listed as missing, each with the
command that makes it (`registry.creating_command`); with an explicit `--sources`, a missing
one stops the command before any run. The runs go through `reproduce.run_planned`, so a run is
skipped when the store holds a FINISHED run with the same protocol fingerprint, and an
interrupted training run continues from its checkpoint. `summarize` turns the runs into the
"Transfer to NAME" table (`results.summarize`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rssc_mlflow import protocol
from rssc_mlflow.data.catalog import CATALOG, get_spec
from rssc_mlflow.errors import RsscError
from rssc_mlflow.results import paper, reproduce
from rssc_mlflow.results.reproduce import PlannedRun, Progress, ReproduceReport, split_list
from rssc_mlflow.settings import TRANSFER_RESULT_STAGES

SCRATCH = "scratch"
IMAGENET = "imagenet"
CELL = "transfer"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A pre-trained starting point: the reference a run's --source takes, and how to make it."""

    reference: str
    model_name: str = ""  # the registered model ('' for ImageNet-1k)
    trained_on: str = ""  # the dataset key it was (pre-)trained on
    command: str = ""  # what registers it, when it is missing
    available: bool = True
    why: str = ""  # why it is missing


@dataclasses.dataclass
class TransferReport:
    """The plan (or the outcome) of `rssc transfer`: the runs, the backbones used and missing."""

    target: str
    runs: ReproduceReport
    backbones: list[Backbone]
    missing: list[Backbone]

    @property
    def ok(self) -> bool:
        return self.runs.ok

    def table(self) -> str:
        lines = [f"Transfer to {self.target}: {len(self.runs.planned)} runs "
                 f"(profile {self.runs.profile}; seeds {','.join(map(str, self.runs.seeds))})",
                 "backbones: " + (", ".join(b.reference for b in self.backbones) or "none")
                 + f" (and {SCRATCH}, the baseline)", self.runs.table()]
        if self.missing:
            lines.append(f"missing backbones ({len(self.missing)}, not run):")
            lines += [f"  {b.reference}: {b.why} -> {b.command}" for b in self.missing]
        lines.append(f"then: rssc summarize (the 'Transfer to {self.target}' table)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, **self.runs.to_json(),
                "backbones": [dataclasses.asdict(b) for b in self.backbones],
                "missing": [dataclasses.asdict(b) for b in self.missing]}


# --- Which backbones --------------------------------------------------------------------------


def _base_key(reference: str) -> str:
    """The dataset a backbone reference was trained on ('' for scratch/imagenet/URIs)."""
    return reference.partition("+")[2] if "+" in reference else reference


def _shares_images(reference: str, target: str, trained_on: str = "") -> bool:
    base = trained_on or _base_key(reference)
    return base == target or paper.shares_images(base, target)


def _reference_of(row: dict[str, Any], profile: str) -> str:
    """The --source that loads registered version `row` (from `registry.list_models`)."""
    key, lineage = row.get("source", ""), row.get("lineage", "scratch")
    if key in CATALOG:  # the registry resolves catalog keys by name and alias
        return f"imagenet+{key}" if lineage == "imagenet" else key
    return f"models:/{row['name']}@{profile}"


def _imagenet() -> Backbone:
    from rssc_mlflow import models

    try:
        models.imagenet_weights_path()
    except RsscError as exc:
        return Backbone(IMAGENET, available=False, why=str(exc).split(". ")[0],
                        command=f"export {models.IMAGENET_WEIGHTS_ENV}=/path/to/"
                                f"{models.IMAGENET_WEIGHTS_FILE}")
    return Backbone(IMAGENET)


def registered_backbones(profile: str) -> list[Backbone]:
    """Every registered rssc-resnet50-* model with a version aliased @profile.

    Aliases are read from the registered models: `search_model_versions` (what
    `registry.list_models` uses) does not return them."""
    import mlflow

    from rssc_mlflow.tracking import registry

    client = mlflow.MlflowClient()
    found: dict[str, Backbone] = {}
    # Without max_results the fluent search pages through every match itself.
    for model in mlflow.search_registered_models(filter_string="name LIKE 'rssc-resnet50-%'"):
        version = (model.aliases or {}).get(profile)
        if version is None:
            continue
        tags = client.get_model_version(model.name, str(version)).tags or {}
        row = {"name": model.name, "source": tags.get(registry.MV_SOURCE, ""),
               "lineage": tags.get(registry.MV_LINEAGE, "scratch")}
        ref = _reference_of(row, profile)
        found[ref] = Backbone(ref, model_name=model.name, trained_on=row["source"])
    return list(found.values())


def _paper_sources() -> list[tuple[str, str]]:
    """(reference, init) of the paper's pre-trained sources (Figures 1 and 3)."""
    out = [(s, "scratch") for s in paper.FIGURE1_SOURCES if s != IMAGENET]
    return out + [(s, "imagenet") for s in paper.FIGURE3_SOURCES]


def _order(reference: str) -> tuple[int, int, str]:
    """ImageNet-1k first, then the paper's sources in its order, then the others by name."""
    paper_refs = [IMAGENET, *(r for r, _ in _paper_sources())]
    if reference in paper_refs:
        return (0, paper_refs.index(reference), reference)
    return (1, 0, reference)


def choose_backbones(target: str, profile: str, sources: str | Sequence[str] = "all"
                     ) -> tuple[list[Backbone], list[Backbone]]:
    """(backbones to run, paper sources or listed ones that are missing), for `target`."""
    from rssc_mlflow.tracking import registry

    wanted = split_list(sources)
    registered = {b.reference: b for b in registered_backbones(profile)}
    imagenet = _imagenet()
    if not wanted or wanted == ["all"]:
        chosen = [b for b in registered.values()
                  if not _shares_images(b.reference, target, b.trained_on)]
        if imagenet.available:
            chosen.append(imagenet)
        missing = [] if imagenet.available else [imagenet]
        for ref, init in _paper_sources():
            if ref not in registered and not _shares_images(ref, target):
                key = _base_key(ref)
                missing.append(Backbone(
                    ref, model_name=registry.registered_name(key, init), available=False,
                    why=f"no version of {registry.registered_name(key, init)} has alias "
                        f"@{profile}", command=registry.creating_command(key, init, profile)))
        return sorted(chosen, key=lambda b: _order(b.reference)), missing
    chosen, missing = [], []
    for ref in dict.fromkeys(wanted):
        if ref == SCRATCH:
            continue  # the baseline is always in the row
        if _shares_images(ref, target, registered[ref].trained_on if ref in registered else ""):
            raise RsscError(f"--sources {ref!r} was trained on the images of {target!r}: the "
                            "protocol never transfers a dataset to itself.")
        if ref == IMAGENET:
            (chosen if imagenet.available else missing).append(imagenet)
        elif ref.startswith("models:/"):
            chosen.append(registered.get(ref, Backbone(ref)))  # resolved when it runs
        else:
            key, init = _base_key(ref), "imagenet" if "+" in ref else "scratch"
            get_spec(key)  # a DatasetError naming the keys there are
            name = registry.registered_name(key, init)
            own = ref if key in CATALOG else f"models:/{name}@{profile}"
            if own in registered:
                chosen.append(registered[own])
            else:
                missing.append(Backbone(own, model_name=name, available=False,
                                        why=f"no version of {name} has alias @{profile}",
                                        command=registry.creating_command(key, init, profile)))
    return chosen, missing


# --- The plan and the run -------------------------------------------------------------------


def plan(target: str, profile: str = protocol.DEFAULT_PROFILE, *,
         sources: str | Sequence[str] = "all", seeds: Sequence[int] = (protocol.SEED,),
         throughput: float = 2500.0) -> tuple[list[PlannedRun], list[Backbone], list[Backbone]]:
    """(the runs, the backbones, the missing backbones) of the transfer row of `target`."""
    protocol.get_profile(profile)
    spec = get_spec(target)  # a DatasetError naming the keys there are
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise RsscError("transfer needs at least one seed.")
    if throughput <= 0:
        raise RsscError(f"Invalid throughput {throughput!r}: images per second must be positive.")
    backbones, missing = choose_backbones(spec.key, profile, sources)
    sizes: dict[str, tuple[dict[str, int], bool]] = {}
    cell = [f"{CELL} {spec.key}"]
    runs: list[PlannedRun] = []
    for seed in seeds:
        pairs = [("finetune", SCRATCH)] + [(stage, b.reference) for b in backbones
                                           for stage in TRANSFER_RESULT_STAGES]
        for stage, source in pairs:
            runs.append(reproduce.planned_run(stage, source, spec.key, seed, level=1,
                                              cells=cell, depends_on=[], profile=profile,
                                              throughput=throughput, sizes=sizes))
    return runs, backbones, missing


def transfer(target: str, profile: str = protocol.DEFAULT_PROFILE, *,
             sources: str | Sequence[str] = "all", seeds: Sequence[int] = (protocol.SEED,),
             plan_only: bool = False, parallel: int = 1, throughput: float = 2500.0,
             log_model_finetune: bool = True, reuse_models: bool = False,
             progress: Progress = print, gpus_per_run: int | None = None) -> TransferReport:
    """Plan the transfer row of `target` and run what is not done (see the module doc).

    Raises RsscError before any run when `target` is not prepared, a run needs ImageNet
    weights that are missing, or a backbone named in `sources` is not registered.
    """
    if parallel < 1:
        raise RsscError(f"Invalid parallel={parallel}: at least 1 run at a time.")
    runs, backbones, missing = plan(target, profile, sources=sources, seeds=seeds,
                                    throughput=throughput)
    explicit = split_list(sources) not in ([], ["all"])
    if missing and explicit and not plan_only:
        raise RsscError("transfer cannot start: backbone(s) not available: " + "; ".join(
            f"{b.reference} ({b.why}; make it with `{b.command}`)" for b in missing)
            + ". Nothing was run.")
    report = ReproduceReport(profile, "local", list(dict.fromkeys(int(s) for s in seeds)),
                             throughput, plan_only, runs)
    for b in missing:
        progress(f"missing backbone {b.reference}: {b.why}; make it with `{b.command}`")
    reproduce.run_planned(report, parallel=parallel, log_model_finetune=log_model_finetune,
                          reuse_models=reuse_models, progress=progress, command="transfer",
                          gpus_per_run=gpus_per_run)
    return TransferReport(get_spec(target).key, report, backbones, missing)
