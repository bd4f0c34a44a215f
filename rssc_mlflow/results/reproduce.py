"""`reproduce`: plan, then run (resumably) every MLflow run that the paper's tables and figures need.

The plan comes only from `paper.LAYOUTS` (every non-n/a cell is one `(stage, source, target)`),
de-duplicated across tables, plus the runs those depend on:
  transfer from dataset key K      needs `pretrain K`
  transfer from `imagenet+K`       needs `adapt K`
  `imagenet` (and every `adapt`)   needs the Keras ImageNet weight file (no run)
Every run is repeated once per seed. Order: all pretrain/adapt runs (level 0), then the
transfers (level 1). A transfer loads its upstream model through the registry alias of the
profile (`rssc-resnet50-K@paper`), which the *last* seed's pretrain/adapt moves: with several
seeds, the transfers of every seed start from the last seed's upstream model.

Resuming: a run counts as done when the store holds a FINISHED run with the same stage, source,
target, seed and protocol fingerprint tags (`commands.fingerprint_for`). A RUNNING or FAILED
training run of a cell, left by a crash, a kill -9 or a pre-empted node, is continued in the
same MLflow run from its last checkpoint (`--resume`) when its checkpoint folder is on this
machine and no process holds it (`commands.can_resume`); otherwise the cell runs anew. The store is read once per level,
and the fingerprints of transfers are computed after level 0 has (re)registered their upstream.

The CLI is `rssc reproduce` (rssc_mlflow/cli.py); `python -m rssc_mlflow.results.reproduce --help` offers the same without the CLI.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import mlflow

from rssc_mlflow import devices, protocol
from rssc_mlflow.data import splits
from rssc_mlflow.data.catalog import CATALOG, get_spec
from rssc_mlflow.errors import DatasetError, RsscError
from rssc_mlflow.results import paper
from rssc_mlflow.settings import resolve_settings
from rssc_mlflow.tracking import runs as tags

Backend = Literal["local", "kubernetes"]
Status = Literal["todo", "done", "ran", "failed", "blocked"]
RunKey = tuple[str, str, str, int]  # (stage, source, target, seed)

# The names `--only` accepts, and the layouts each one stands for.
SELECTIONS: dict[str, tuple[str, ...]] = {
    "table2": ("table2",), "table3": ("table3",), "table4": ("table4",),
    "fig1": ("figure1",), "fig2": ("figure2",), "fig3": ("figure3a", "figure3b"),
    "figure1": ("figure1",), "figure2": ("figure2",), "figure3": ("figure3a", "figure3b"),
    "figure3a": ("figure3a",), "figure3b": ("figure3b",),
}
UPSTREAM_STAGES = ("pretrain", "adapt")
# The MLproject (kubernetes backend) lives at the repository root, beside the package.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The kubernetes backend needs a docker_env project; the root MLproject keeps conda_env for
# `mlflow run .`, so the cluster runs the twin project in kubernetes/ (same entry points).
KUBERNETES_PROJECT = "kubernetes"
DEFAULT_BACKEND_CONFIG = Path("kubernetes") / "backend_config.json"
LOG_DIR = Path("rssc_outputs") / "reproduce" / "logs"  # subprocess logs (parallel > 1)
_POLL_S = 0.5


# --- The plan -----------------------------------------------------------------------------------


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
        return f"{tags.run_name(self.stage, self.source, self.target)} (seed {self.seed})"

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
        up = upstream_of(source) if stage not in UPSTREAM_STAGES else None
        if up is not None:
            cells.setdefault(up, []).append(f"needed by {tags.run_name(stage, source, target)}")
    bases = sorted(cells, key=lambda b: b[0] not in UPSTREAM_STAGES)  # stable: level 0 first
    sizes: dict[str, tuple[dict[str, int], bool]] = {}
    out: list[PlannedRun] = []
    for level in (0, 1):
        for seed in seeds:
            for stage, source, target in bases:
                if (stage in UPSTREAM_STAGES) != (level == 0):
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
    role = "source" if stage in UPSTREAM_STAGES else "target"
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


# --- The store --------------------------------------------------------------------------------


def finished_runs() -> dict[tuple[str, str, str, str, str], str]:
    """{(stage, source, target, seed, fingerprint): run id} of FINISHED runs, in one query.

    All experiments are searched (a run moved or started under another experiment name still
    counts); the earliest run wins so the answer is stable.
    """
    found = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time ASC"])
    index: dict[tuple[str, str, str, str, str], str] = {}
    for run in found:
        t = run.data.tags
        if tags.TAG_STAGE not in t or tags.TAG_FINGERPRINT not in t:
            continue
        key = (t[tags.TAG_STAGE], t.get(tags.TAG_SOURCE, ""), t.get(tags.TAG_TARGET, ""),
               t.get(tags.TAG_SEED, ""), t[tags.TAG_FINGERPRINT])
        index.setdefault(key, run.info.run_id)
    return index


def interrupted_runs() -> dict[tuple[str, str, str, str, str], list[mlflow.entities.Run]]:
    """{(stage, source, target, seed, fingerprint): runs} of RUNNING or FAILED training runs,
    newest first: what a crash, a kill -9 or a pre-empted node left."""
    found = [run for status in ("RUNNING", "FAILED", "KILLED") for run in mlflow.search_runs(
        search_all_experiments=True, output_format="list",
        filter_string=f"attributes.status = '{status}'")]  # IN (...) is for run ids only
    found.sort(key=lambda run: run.info.start_time, reverse=True)
    index: dict[tuple[str, str, str, str, str], list[mlflow.entities.Run]] = {}
    for run in found:
        t = run.data.tags
        if t.get(tags.TAG_STAGE) not in ("pretrain", "adapt", "finetune") or \
                tags.TAG_FINGERPRINT not in t:
            continue
        key = (t[tags.TAG_STAGE], t.get(tags.TAG_SOURCE, ""), t.get(tags.TAG_TARGET, ""),
               t.get(tags.TAG_SEED, ""), t[tags.TAG_FINGERPRINT])
        index.setdefault(key, []).append(run)
    return index


def _find_interrupted(run: PlannedRun,
                      index: dict[tuple[str, str, str, str, str], list[mlflow.entities.Run]],
                      profile: str, replicas: int = 1) -> str:
    """The id of the newest interrupted run of this cell that can continue here, or ""."""
    prefix = (run.stage, run.source, run.target, str(run.seed))
    if not any(k[:4] == prefix for k in index):
        return ""
    from rssc_mlflow import commands

    if not run.fingerprint:
        run.fingerprint = commands.fingerprint_for(run.stage, source=run.source,
                                                   target=run.target, profile=profile,
                                                   seed=run.seed, replicas=replicas)
    for candidate in index.get((*prefix, run.fingerprint), []):
        if commands.can_resume(candidate):
            return candidate.info.run_id
    return ""


def _find_done(run: PlannedRun, index: dict[tuple[str, str, str, str, str], str],
               profile: str, replicas: int = 1) -> str | None:
    """The id of a FINISHED run equal to `run`, or None (fingerprint computed only if needed)."""
    prefix = (run.stage, run.source, run.target, str(run.seed))
    if not any(k[:4] == prefix for k in index):  # nothing to compare with: skip the fingerprint
        return None
    from rssc_mlflow import commands  # TensorFlow: only once there is something to compare

    run.fingerprint = commands.fingerprint_for(run.stage, source=run.source, target=run.target,
                                               profile=profile, seed=run.seed, replicas=replicas)
    return index.get((*prefix, run.fingerprint))


# --- Prerequisites ------------------------------------------------------------------------------


def _missing_prerequisites(planned: list[PlannedRun]) -> list[str]:
    """One message per missing dataset and for missing ImageNet weights (with what to do)."""
    problems: list[str] = []
    missing = sorted({r.target or r.source for r in planned if not r.exact})
    if missing:
        problems.append(
            f"dataset(s) not prepared: {', '.join(missing)}. Prepare each with `rssc prepare KEY "
            "--manual-dir DIR` (see `rssc datasets` for the download pages).")
    needing = [r for r in planned if r.needs_imagenet_weights]
    if needing:
        from rssc_mlflow import models

        try:
            models.imagenet_weights_path()
        except RsscError as exc:
            names = sorted({tags.run_name(r.stage, r.source, r.target) for r in needing})
            problems.append(
                f"{len(needing)} run(s) need the Keras ImageNet weight file "
                f"{models.IMAGENET_WEIGHTS_FILE} (set {models.IMAGENET_WEIGHTS_ENV} to its path), "
                f"e.g. {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}: {exc}")
    return problems


# --- Backends -----------------------------------------------------------------------------------

Progress = Callable[[str], None]


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("test_"))


def _run_stage(stage: str, source: str, target: str, profile: str, seed: int,
               log_model_finetune: bool, resume: str = ""):
    """One grid cell through `commands` (what `rssc STAGE ...` runs), in this process;
    `resume`: the id of an interrupted run of it to continue."""
    from rssc_mlflow import commands

    params: dict[str, Any] = {"profile": profile, "seed": seed}
    if resume:
        params["resume"] = resume
    if stage == "pretrain":
        return commands.pretrain(source, **params)
    if stage == "adapt":
        return commands.adapt(source, **params)
    if stage == "finetune":
        return commands.finetune(source, target, log_model=log_model_finetune, **params)
    return commands.probe(source, target, **params)


class _Local:
    """In-process calls of `commands.*` (TensorFlow imported once), or subprocesses if parallel.

    `slots`: the CUDA_VISIBLE_DEVICES of each of the `parallel` subprocesses (`--gpus-per-run`);
    then every run is a subprocess, even alone, since this process may already hold all GPUs.
    """

    def __init__(self, profile: str, parallel: int, log_model_finetune: bool,
                 slots: list[str] | None = None) -> None:
        self.profile, self.parallel, self.log_model_finetune = profile, parallel, log_model_finetune
        self.slots = slots

    def run_wave(self, wave: list[PlannedRun], say: Callable[[PlannedRun, str], None]) -> None:
        if self.slots is not None or (self.parallel > 1 and len(wave) > 1):
            self._subprocesses(wave, say)
            return
        for run in wave:
            self._in_process(run, say)

    def _in_process(self, run: PlannedRun, say: Callable[[PlannedRun, str], None]) -> None:
        from rssc_mlflow.training import model_pool

        say(run, "...")
        started = time.monotonic()
        try:
            result = _run_stage(run.stage, run.source, run.target, self.profile, run.seed,
                                self.log_model_finetune, run.resume_id)
        except Exception as exc:  # noqa: BLE001 - one failure must not stop independent runs
            _failed(run, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        else:
            run.status, run.run_id, run.metrics = "ran", result.run_id, dict(result.metrics)
            run.seconds = time.monotonic() - started
        finally:
            if not model_pool.is_enabled():  # pooled models are meant to stay
                _release_memory()
        say(run, _outcome(run))

    def argv(self, run: PlannedRun) -> list[str]:
        argv = [sys.executable, "-m", "rssc_mlflow.cli", run.stage, "--source", run.source]
        if run.target:
            argv += ["--target", run.target]
        argv += ["--profile", self.profile, "--seed", str(run.seed)]
        if run.stage == "finetune" and not self.log_model_finetune:
            argv.append("--no-log-model")
        if run.resume_id:
            argv += ["--resume", run.resume_id]
        return argv

    def env(self, slot: int) -> dict[str, str]:
        """The environment of the subprocess that runs in `slot` (0 .. parallel-1)."""
        # The children must write to the store this process reads, even if it was set in code.
        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
        if self.slots is not None:
            env.update(devices.worker_env(self.slots[slot]))
        return env

    def _subprocesses(self, wave: list[PlannedRun], say: Callable[[PlannedRun, str], None]) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        pending, active = list(wave), []
        free = list(range(self.parallel))  # a finished run hands its slot (its GPUs) on
        while pending or active:
            while pending and free:
                run, slot = pending.pop(0), free.pop(0)
                name = f"{run.stage}-{run.source}-{run.target or 'none'}-seed{run.seed}"
                log = LOG_DIR / f"{name}.log"
                with log.open("w") as fh:
                    proc = subprocess.Popen(self.argv(run), stdout=fh, stderr=subprocess.STDOUT,
                                            env=self.env(slot))
                gpus = f", GPUs {self.slots[slot] or 'none'}" if self.slots is not None else ""
                say(run, f"... (pid {proc.pid}{gpus}, log {log})")
                active.append((run, proc, log, time.monotonic(), slot))
            time.sleep(_POLL_S)
            for item in list(active):
                run, proc, log, started, slot = item
                if proc.poll() is None:
                    continue
                active.remove(item)
                free.append(slot)
                text = log.read_text(errors="replace") if log.exists() else ""
                found = re.search(r"^run (\w+) FINISHED(.*)$", text, re.MULTILINE)
                if proc.returncode == 0 and found:
                    run.status, run.run_id = "ran", found.group(1)
                    run.metrics = {k: float(v) for k, v in
                                   re.findall(r"(\w+)=([-\d.eE+]+)", found.group(2))}
                    run.seconds = time.monotonic() - started
                else:
                    tail = " | ".join(text.strip().splitlines()[-3:])
                    _failed(run, f"exit status {proc.returncode} (log {log}): {tail}",
                            time.monotonic() - started)
                say(run, _outcome(run))


class _Workers:
    """`parallel` long-lived worker processes, each running `commands.*` in-process with
    `model_pool` on, so a worker traces each ResNet-50 variant once for all its runs.

    For many short runs (the demo on a CPU, where tracing a new ResNet-50 costs more than a run
    trains); on a GPU server one process per run (`_Local`) isolates runs better. Runs that
    train on the same dataset go to the same worker (same number of classes: same traced
    model); probes, which share one feature extractor, fill up the lighter worker. A run that
    raises fails alone; a worker that dies (out of memory) fails the runs it still held.
    """

    def __init__(self, profile: str, parallel: int, log_model_finetune: bool,
                 slots: list[str] | None = None) -> None:
        self.profile, self.parallel, self.log_model_finetune = profile, parallel, log_model_finetune
        self.slots = slots  # the CUDA_VISIBLE_DEVICES of each worker (`--gpus-per-run`)
        self._executors: list[concurrent.futures.ProcessPoolExecutor] = []

    def initargs(self, i: int) -> tuple[str, str, dict[str, str]]:
        """What worker i starts with: its log file, the store, and its environment."""
        env = devices.worker_env(self.slots[i]) if self.slots is not None else {}
        return (str((LOG_DIR / f"worker-{i + 1}.log").resolve()), mlflow.get_tracking_uri(), env)

    def _start(self) -> None:
        import multiprocessing

        LOG_DIR.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("spawn")  # never fork a process holding TensorFlow
        self._executors = [
            concurrent.futures.ProcessPoolExecutor(
                1, mp_context=context, initializer=_worker_start, initargs=self.initargs(i))
            for i in range(self.parallel)]

    def close(self) -> None:
        for executor in self._executors:
            executor.shutdown(wait=True, cancel_futures=True)
        self._executors = []

    def assign(self, wave: list[PlannedRun]) -> list[list[PlannedRun]]:
        """Split a wave over the workers: training runs grouped by dataset, largest group to the
        least loaded worker; then probes to whichever worker has the fewest runs."""
        queues: list[list[PlannedRun]] = [[] for _ in range(self.parallel)]
        groups: dict[str, list[PlannedRun]] = {}
        probes = []
        for run in wave:
            if run.stage == "probe":
                probes.append(run)
            else:
                groups.setdefault(run.target or run.source, []).append(run)
        for group in sorted(groups.values(), key=len, reverse=True):
            min(queues, key=len).extend(group)
        for run in probes:
            min(queues, key=len).append(run)
        return queues

    def run_wave(self, wave: list[PlannedRun], say: Callable[[PlannedRun, str], None]) -> None:
        if not self._executors:
            self._start()
        futures: dict[concurrent.futures.Future, tuple[PlannedRun, int]] = {}
        for number, (executor, queue) in enumerate(zip(self._executors, self.assign(wave)), 1):
            for run in queue:
                job = (run.stage, run.source, run.target, self.profile, run.seed,
                       self.log_model_finetune, run.resume_id)
                futures[executor.submit(_worker_run, *job)] = (run, number)
        broken = False
        for future in concurrent.futures.as_completed(futures):
            run, number = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - BrokenProcessPool: the worker died
                broken = True
                outcome = {"status": "failed", "seconds": 0.0,
                           "reason": f"worker {number} died ({type(exc).__name__}: {exc}); see "
                                     f"{LOG_DIR / f'worker-{number}.log'}"}
            if outcome["status"] == "ran":
                run.status, run.run_id = "ran", outcome["run_id"]
                run.metrics, run.seconds = outcome["metrics"], outcome["seconds"]
            else:
                _failed(run, outcome["reason"], outcome["seconds"])
            say(run, _outcome(run) + f" [worker {number}]")
        if broken:  # start fresh workers for the next wave
            self.close()


def _worker_start(log_path: str, tracking_uri: str, env: dict[str, str] | None = None) -> None:
    """In each worker: its GPUs, output to its log file, the parent's store, the model pool on.

    `env` first: CUDA reads CUDA_VISIBLE_DEVICES when TensorFlow first initialises it, which
    happens in the first run, after this (a spawned worker has not imported TensorFlow yet).
    """
    import logging

    os.environ.update(env or {})
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)  # TensorFlow's C++ messages too, not only Python's
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the worker
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from rssc_mlflow.training import model_pool

    model_pool.enable_for_process()


def _worker_run(stage: str, source: str, target: str, profile: str, seed: int,
                log_model_finetune: bool, resume: str = "") -> dict[str, Any]:
    started = time.monotonic()
    print(f"--- {stage} {source} {target} seed {seed}", flush=True)
    try:
        result = _run_stage(stage, source, target, profile, seed, log_model_finetune, resume)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, the worker goes on
        import traceback

        traceback.print_exc()
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                "seconds": time.monotonic() - started}
    return {"status": "ran", "run_id": result.run_id, "metrics": dict(result.metrics),
            "seconds": time.monotonic() - started}


class _Kubernetes:
    """One `mlflow.projects.run(..., backend="kubernetes", synchronous=True)` per run."""

    def __init__(self, profile: str, parallel: int, log_model_finetune: bool,
                 backend_config: Path) -> None:
        self.profile, self.parallel, self.log_model_finetune = profile, parallel, log_model_finetune
        self.backend_config = backend_config

    def close(self) -> None:
        """Remove the resolved copy of the backend config (`load_backend_config`)."""
        self.backend_config.unlink(missing_ok=True)

    def parameters(self, run: PlannedRun) -> dict[str, str]:
        params = {"source": run.source, "profile": self.profile, "seed": str(run.seed)}
        if run.target:
            params["target"] = run.target
        if run.stage == "finetune":
            params["log_model"] = str(self.log_model_finetune).lower()
        return params

    def _one(self, run: PlannedRun, say: Callable[[PlannedRun, str], None]) -> None:
        import mlflow.projects

        say(run, "... (kubernetes job)")
        started = time.monotonic()
        try:
            submitted = mlflow.projects.run(
                uri=str(PROJECT_ROOT / KUBERNETES_PROJECT), entry_point=run.stage, parameters=self.parameters(run),
                experiment_name=tags.experiment_name(), backend="kubernetes",
                backend_config=str(self.backend_config), synchronous=True, env_manager="local")
            run.run_id = submitted.run_id
            try:
                run.metrics = dict(mlflow.MlflowClient().get_run(run.run_id).data.metrics)
            except Exception:  # noqa: BLE001 - metrics are only shown; the run is what counts
                run.metrics = {}
            run.status, run.seconds = "ran", time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - ExecutionException, API errors, ...
            _failed(run, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        say(run, _outcome(run))

    def run_wave(self, wave: list[PlannedRun], say: Callable[[PlannedRun, str], None]) -> None:
        if self.parallel <= 1:
            for run in wave:
                self._one(run, say)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.parallel) as pool:
            list(pool.map(lambda r: self._one(r, say), wave))


def _failed(run: PlannedRun, reason: str, seconds: float) -> None:
    run.status, run.reason, run.seconds = "failed", reason, seconds


def _outcome(run: PlannedRun) -> str:
    if run.status == "ran":
        metrics = _format_metrics(run.metrics)
        return f"... {run.seconds:.1f} s{', ' + metrics if metrics else ''} (run {run.run_id})"
    return f"... FAILED after {run.seconds:.1f} s: {run.reason[:500]}"


def _release_memory() -> None:
    """Free the previous run's graphs: a long in-process sequence would otherwise keep them."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


def load_backend_config(path: Path | None) -> Path:
    """Validate a Kubernetes backend config; return a copy whose template path is absolute.

    A relative `kube-job-template-path` is taken relative to the config file (MLflow itself would
    read it relative to the working directory, so the copy spells it out).
    """
    import yaml

    path = Path(path) if path is not None else PROJECT_ROOT / DEFAULT_BACKEND_CONFIG
    if not path.is_file():
        raise RsscError(f"Kubernetes backend config {path} does not exist. Pass --backend-config "
                        f"FILE.json (see {DEFAULT_BACKEND_CONFIG} in the repository).")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RsscError(f"Kubernetes backend config {path} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise RsscError(f"Kubernetes backend config {path} must be a JSON object.")
    for field in ("kube-job-template-path", "repository-uri"):
        if not config.get(field):
            raise RsscError(f"Kubernetes backend config {path} lacks {field!r} (MLflow needs "
                            "kube-job-template-path and repository-uri; kube-context is optional).")
    template = Path(config["kube-job-template-path"]).expanduser()
    if not template.is_absolute():
        template = (path.parent / template).resolve()
    if not template.is_file():
        raise RsscError(f"The job template {config['kube-job-template-path']!r} named in {path} "
                        f"does not exist (looked at {template}).")
    try:
        job = yaml.safe_load(template.read_text())
    except yaml.YAMLError as exc:
        raise RsscError(f"The job template {template} is not valid YAML: {exc}") from None
    if not isinstance(job, dict) or job.get("kind") != "Job" or \
            not (job.get("metadata") or {}).get("namespace"):
        raise RsscError(f"The job template {template} must be a batch/v1 Job with "
                        "metadata.namespace (MLflow creates the job in that namespace).")
    resolved = {**config, "kube-job-template-path": str(template)}
    fd, out = tempfile.mkstemp(prefix="rssc-backend-", suffix=".json")  # MLflow wants .json
    with os.fdopen(fd, "w") as fh:
        json.dump(resolved, fh)
    return Path(out)


def _check_project_for_kubernetes() -> None:
    """MLflow's kubernetes backend builds an image from the MLproject's docker_env."""
    import yaml

    project = PROJECT_ROOT / KUBERNETES_PROJECT / "MLproject"
    if not project.is_file():
        raise RsscError(f"No MLproject at {project}: the kubernetes backend runs the "
                        "project from a checkout of the repository.")
    spec = yaml.safe_load(project.read_text()) or {}
    if not (spec.get("docker_env") or {}).get("image"):
        raise RsscError(f"{project} has no `docker_env: {{image: ...}}`: MLflow's kubernetes "
                        "backend builds the job's image on top of it. Add one (a TensorFlow GPU "
                        "image with the package installed).")


# --- Reproduce ----------------------------------------------------------------------------------


def _waves(planned: list[PlannedRun]) -> list[list[PlannedRun]]:
    """Groups of independent runs, in order. Level 0 goes seed by seed so that the alias ends on
    the last seed's model even when runs go in parallel; level 1 is one group."""
    waves: dict[tuple[int, int], list[PlannedRun]] = {}
    for run in planned:
        waves.setdefault((run.level, run.seed if run.level == 0 else 0), []).append(run)
    return list(waves.values())


def reproduce(
    profile: str = protocol.DEFAULT_PROFILE,
    *,
    only: Sequence[str] | None = None,
    seeds: Sequence[int] = (protocol.SEED,),
    plan_only: bool = False,
    backend: Backend = "local",
    backend_config: Path | None = None,
    parallel: int = 1,
    throughput: float = 2500.0,
    log_model_finetune: bool = True,
    reuse_models: bool = False,
    progress: Progress = print,
    targets: Sequence[str] | None = None,
    gpus_per_run: int | None = None,
) -> ReproduceReport:
    """Plan the runs of the selected tables/figures and run those not yet done (see module doc).

    `reuse_models` (local backend): runs go to `parallel` long-lived worker processes that
    reuse compiled models (`_Workers`) instead of one process per run.
    `gpus_per_run` (local backend): each of the `parallel` worker processes sees only its own
    GPUs (`devices.assign_devices`); None: every process sees every GPU, as before.

    Raises RsscError before any run when a dataset is not prepared, the ImageNet weights are
    missing while a run needs them, or the kubernetes backend is not configured (with
    `plan_only`, missing prerequisites are warnings on the report instead).
    """
    if backend not in ("local", "kubernetes"):
        raise RsscError(f"Unknown backend {backend!r}: choose local or kubernetes.")
    if parallel < 1:
        raise RsscError(f"Invalid parallel={parallel}: at least 1 run at a time.")
    planned = plan(profile, only=only, seeds=seeds, throughput=throughput, targets=targets)
    report = ReproduceReport(profile, backend, list(dict.fromkeys(int(s) for s in seeds)),
                             throughput, plan_only, planned)
    return run_planned(report, backend_config=backend_config, parallel=parallel,
                       log_model_finetune=log_model_finetune, reuse_models=reuse_models,
                       progress=progress, gpus_per_run=gpus_per_run)


def gpu_slots(backend: str, parallel: int, gpus_per_run: int | None) -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES of each worker, or None (`gpus_per_run` not given)."""
    if gpus_per_run is None:
        return None
    if backend == "kubernetes":
        raise RsscError(f"--gpus-per-run applies to the local backend. Received: backend="
                        f"{backend}, gpus_per_run={gpus_per_run}. On Kubernetes each job gets "
                        "the GPUs its job template requests (resources.limits nvidia.com/gpu).")
    return devices.assign_devices(devices.visible_gpus(), parallel, gpus_per_run)


def expected_replicas(backend: str, slots: list[str] | None) -> int:
    """The replica count a run started here will have (it joins the fingerprint), without
    TensorFlow: its slot's GPUs, else every GPU this machine shows (the `auto` strategy)."""
    if slots is not None:
        return devices.replicas_for(slots[0])
    if backend == "kubernetes":
        return 1  # the job's GPUs are the template's; one GPU per job is what it ships with
    replicas = devices.replicas_for(",".join(devices.visible_gpus()))
    return replicas if replicas == 1 or _tensorflow_uses_gpus() else 1


def _tensorflow_uses_gpus() -> bool:
    """Whether the installed TensorFlow is a CUDA build (a CPU build on a GPU server trains on
    one CPU replica). Importing it does not initialise CUDA, so no GPU memory is taken."""
    import tensorflow as tf

    return bool(tf.sysconfig.get_build_info().get("is_cuda_build", False))


def run_planned(report: ReproduceReport, *, backend_config: Path | None = None,
                parallel: int = 1, log_model_finetune: bool = True, reuse_models: bool = False,
                progress: Progress = print, command: str = "reproduce",
                gpus_per_run: int | None = None) -> ReproduceReport:
    """Run `report.planned` (in its order, by waves) on `report.backend` as `reproduce` does:
    what is done is skipped, an interrupted training run continues, a failed run blocks its
    dependents. With `report.plan_only`, only the status of each run is filled in."""
    profile, backend, plan_only = report.profile, report.backend, report.plan_only
    planned = report.planned
    slots = gpu_slots(backend, parallel, gpus_per_run)
    replicas = expected_replicas(backend, slots)
    if slots is not None or replicas > 1:
        gpus = "; ".join(f"worker {i + 1}: {s or 'no GPU'}" for i, s in enumerate(slots or []))
        progress(f"each run trains on {replicas} replica(s)" + (f" ({gpus})" if gpus else ""))
    problems = _missing_prerequisites(planned)
    runner: _Local | _Workers | _Kubernetes | None = None
    if plan_only:
        report.warnings += problems
    else:
        if problems:
            raise RsscError(f"{command} cannot start: " + " ".join(problems) + " Nothing was run.")
        if backend == "kubernetes":
            _check_project_for_kubernetes()
            runner = _Kubernetes(profile, parallel, log_model_finetune,
                                 load_backend_config(backend_config))
            if not mlflow.get_tracking_uri().startswith(("http://", "https://")):
                progress(f"warning: the tracking store {mlflow.get_tracking_uri()} is not a "
                         "server; the cluster's jobs cannot write to it (set MLFLOW_TRACKING_URI "
                         "to the team server).")
        elif reuse_models and parallel > 1:
            runner = _Workers(profile, parallel, log_model_finetune, slots)
        else:
            runner = _Local(profile, parallel, log_model_finetune, slots)
        tags.check_tracking_reachable()

    total = len(planned)
    position = {id(r): i for i, r in enumerate(planned, start=1)}
    by_key = {r.key: r for r in planned}

    def say(run: PlannedRun, text: str) -> None:
        progress(f"[{position[id(run)]}/{total}] {run.label} {text}")

    try:
        for wave in _waves(planned):
            index = finished_runs()  # refreshed per wave: the previous one registered upstreams
            interrupted = {} if plan_only or backend == "kubernetes" else interrupted_runs()
            todo: list[PlannedRun] = []
            for run in wave:
                bad = [by_key[k] for k in run.depends_on if by_key[k].status in ("failed", "blocked")]
                if bad and not plan_only:
                    run.status = "blocked"
                    run.reason = "upstream " + ", ".join(b.label for b in bad) + " did not finish"
                    say(run, f"skipped: {run.reason}")
                    continue
                try:
                    done = _find_done(run, index, profile, replicas)
                except RsscError as exc:  # plan only: upstream not registered yet, dataset missing
                    if not plan_only:
                        _failed(run, f"{type(exc).__name__}: {exc}", 0.0)
                        say(run, _outcome(run))
                        continue
                    run.reason, done = str(exc), None
                if done:
                    run.status, run.run_id, run.reason = "done", done, "already done"
                    say(run, f"already done: run {done}")
                elif plan_only:
                    say(run, f"todo: {run.image_steps:,} image-steps, {run.gpu_hours:.2f} GPU-hours")
                else:
                    run.resume_id = _find_interrupted(run, interrupted, profile, replicas)
                    if run.resume_id:
                        say(run, f"continues interrupted run {run.resume_id} from its checkpoint")
                    todo.append(run)
            if todo and not plan_only:
                runner.run_wave(todo, say)
    finally:
        if isinstance(runner, (_Workers, _Kubernetes)):
            runner.close()
    progress(f"{len(report.ran)} ran, {len(report.skipped)} skipped, {len(report.failed)} failed, "
             f"{len(report.todo)} to do; {report.todo_gpu_hours:.2f} of "
             f"{report.total_gpu_hours:.2f} GPU-hours still to run")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rssc_mlflow.results.reproduce",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=protocol.DEFAULT_PROFILE)
    parser.add_argument("--only", default="", help="table2,table3,table4,fig1,fig2,fig3")
    parser.add_argument("--seeds", default=str(protocol.SEED))
    parser.add_argument("--plan", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--backend", default="local", choices=("local", "kubernetes"))
    parser.add_argument("--backend-config", type=Path, default=None)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--throughput", type=float, default=2500.0)
    parser.add_argument("--no-log-model-finetune", action="store_true")
    parser.add_argument("--reuse-models", action="store_true",
                        help="with --parallel N: N worker processes that reuse compiled models")
    parser.add_argument("--gpus-per-run", type=int, default=None,
                        help="with --parallel N: each worker sees only its own K GPUs")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    try:
        report = reproduce(
            args.profile, only=split_list(args.only) or None,
            seeds=[int(s) for s in split_list(args.seeds)], plan_only=args.plan,
            backend=args.backend, backend_config=args.backend_config, parallel=args.parallel,
            throughput=args.throughput, log_model_finetune=not args.no_log_model_finetune,
            reuse_models=args.reuse_models, gpus_per_run=args.gpus_per_run,
            progress=lambda m: print(m, file=sys.stderr, flush=True))
    except RsscError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
