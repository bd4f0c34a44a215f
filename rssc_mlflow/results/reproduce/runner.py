"""Run a plan: skip what the store holds, continue what was interrupted, run the rest by waves
on a backend, and block the dependents of a failed run.

A transfer loads its upstream model through the registry alias of the profile
(`rssc-resnet50-K@paper`), which the *last* seed's pretrain/adapt moves: with several seeds,
the transfers of every seed start from the last seed's upstream model. The store is read once
per wave, and the fingerprints of transfers are computed after level 0 has (re)registered
their upstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import mlflow

from rssc_mlflow import devices, protocol
from rssc_mlflow.errors import RsscError
from rssc_mlflow.naming import few, run_name
from rssc_mlflow.results.reproduce import kubernetes, outcome, store
from rssc_mlflow.results.reproduce.local import Local
from rssc_mlflow.results.reproduce.outcome import Progress
from rssc_mlflow.results.reproduce.planning import PlannedRun, ReproduceReport, plan
from rssc_mlflow.results.reproduce.workers import Workers
from rssc_mlflow.tracking import runs as tags

Backend = Literal["local", "kubernetes"]


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
            names = sorted({run_name(r.stage, r.source, r.target) for r in needing})
            problems.append(
                f"{len(needing)} run(s) need the Keras ImageNet weight file "
                f"{models.IMAGENET_WEIGHTS_FILE} (set {models.IMAGENET_WEIGHTS_ENV} to its path), "
                f"e.g. {few(names, 3, show=str)}: {exc}")
    return problems


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
    """Plan the runs of the selected tables/figures and run those not yet done (`run_planned`).

    `reuse_models` (local backend): runs go to `parallel` long-lived worker processes that
    reuse compiled models (`workers.Workers`) instead of one process per run.
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
    runner: Local | Workers | kubernetes.Kubernetes | None = None
    if plan_only:
        report.warnings += problems
    else:
        if problems:
            raise RsscError(f"{command} cannot start: " + " ".join(problems) + " Nothing was run.")
        if backend == "kubernetes":
            kubernetes.check_project()
            runner = kubernetes.Kubernetes(profile, parallel, log_model_finetune,
                                           kubernetes.load_backend_config(backend_config))
            if not mlflow.get_tracking_uri().startswith(("http://", "https://")):
                progress(f"warning: the tracking store {mlflow.get_tracking_uri()} is not a "
                         "server; the cluster's jobs cannot write to it (set MLFLOW_TRACKING_URI "
                         "to the team server).")
        elif reuse_models and parallel > 1:
            runner = Workers(profile, parallel, log_model_finetune, slots)
        else:
            runner = Local(profile, parallel, log_model_finetune, slots)
        tags.check_tracking_reachable()

    total = len(planned)
    position = {id(r): i for i, r in enumerate(planned, start=1)}
    by_key = {r.key: r for r in planned}

    def say(run: PlannedRun, text: str) -> None:
        progress(f"[{position[id(run)]}/{total}] {run.label} {text}")

    try:
        for wave in _waves(planned):
            index = store.finished_runs()  # per wave: the previous one registered upstreams
            interrupted = {} if plan_only or backend == "kubernetes" else store.interrupted_runs()
            todo: list[PlannedRun] = []
            for run in wave:
                bad = [by_key[k] for k in run.depends_on if by_key[k].status in ("failed", "blocked")]
                if bad and not plan_only:
                    run.status = "blocked"
                    run.reason = "upstream " + ", ".join(b.label for b in bad) + " did not finish"
                    say(run, f"skipped: {run.reason}")
                    continue
                try:
                    done = store.find_done(run, index, profile, replicas)
                except RsscError as exc:  # plan only: upstream not registered yet, dataset missing
                    if not plan_only:
                        outcome.failed(run, f"{type(exc).__name__}: {exc}", 0.0)
                        say(run, outcome.describe(run))
                        continue
                    run.reason, done = str(exc), None
                if done:
                    run.status, run.run_id, run.reason = "done", done, "already done"
                    say(run, f"already done: run {done}")
                elif plan_only:
                    say(run, f"todo: {run.image_steps:,} image-steps, {run.gpu_hours:.2f} GPU-hours")
                else:
                    run.resume_id = store.find_interrupted(run, interrupted, profile, replicas)
                    if run.resume_id:
                        say(run, f"continues interrupted run {run.resume_id} from its checkpoint")
                    todo.append(run)
            if todo and not plan_only:
                runner.run_wave(todo, say)
    finally:
        if isinstance(runner, (Workers, kubernetes.Kubernetes)):
            runner.close()
    progress(f"{len(report.ran)} ran, {len(report.skipped)} skipped, {len(report.failed)} failed, "
             f"{len(report.todo)} to do; {report.todo_gpu_hours:.2f} of "
             f"{report.total_gpu_hours:.2f} GPU-hours still to run")
    return report
