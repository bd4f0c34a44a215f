"""The local backend with `--reuse-models`: `parallel` long-lived worker processes, each running
`commands.*` in-process with the model pool (`training.speed`) on. A worker returns each run's
outcome to the parent as a value (through `concurrent.futures`), its console goes to its log.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import sys
import time
from typing import Any

import mlflow

from rssc_mlflow import devices, errors
from rssc_mlflow.results.reproduce import outcome
from rssc_mlflow.results.reproduce.planning import PlannedRun


class Workers:
    """`parallel` long-lived worker processes, each running `commands.*` in-process with
    the model pool on, so a worker traces each ResNet-50 variant once for all its runs.

    For many short runs (the demo on a CPU, where tracing a new ResNet-50 costs more than a run
    trains); on a GPU server one process per run (`local.Local`) isolates runs better. Runs that
    train on the same dataset go to the same worker (same number of classes: same traced
    model); probes, which share one feature extractor, fill up the lighter worker; a worker
    that runs out of work takes over the last queued run of the busiest. A run that raises
    fails alone; a worker that dies (out of memory) fails the runs it still held.
    """

    def __init__(self, profile: str, parallel: int, log_model_finetune: bool,
                 slots: list[str] | None = None) -> None:
        self.profile, self.parallel, self.log_model_finetune = profile, parallel, log_model_finetune
        self.slots = slots  # the CUDA_VISIBLE_DEVICES of each worker (`--gpus-per-run`)
        self._executors: list[concurrent.futures.ProcessPoolExecutor] = []

    def initargs(self, i: int) -> tuple[str, str, dict[str, str], int | None, int]:
        """What worker i starts with: its log file, the store, its environment, its CPU
        threads (CPU workers split the cores; None: TensorFlow's default), and this process's
        pid (the worker ends when this process does)."""
        from rssc_mlflow.training import speed

        env = devices.worker_env(self.slots[i]) if self.slots is not None else {}
        threads = speed.cpu_threads_per_worker(self.parallel) if self.slots is None else None
        log = (outcome.LOG_DIR / f"worker-{i + 1}.log").resolve()
        return (str(log), mlflow.get_tracking_uri(), env, threads, os.getpid())

    def _start(self) -> None:
        import multiprocessing

        outcome.LOG_DIR.mkdir(parents=True, exist_ok=True)
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
        """Split a wave over the workers, balancing their cost (`cost`): training runs grouped
        by dataset, costliest group first, each to the least loaded worker; a group costlier
        than a worker's fair share is split first (one more trace beats an idle worker); then
        probes, costliest first, likewise. Each queue runs in the order it was filled."""
        groups: dict[str, list[PlannedRun]] = {}
        probes = []
        for run in wave:
            if run.stage == "probe":
                probes.append([run])
            else:
                groups.setdefault(run.target or run.source, []).append(run)
        fair = sum(cost(r) for r in wave) / self.parallel
        parts = [part for group in groups.values() for part in _split(group, fair)]
        queues: list[list[PlannedRun]] = [[] for _ in range(self.parallel)]
        loads = [0] * self.parallel
        for part in (sorted(parts, key=_total, reverse=True)
                     + sorted(probes, key=_total, reverse=True)):
            i = loads.index(min(loads))
            queues[i].extend(part)
            loads[i] += _total(part)
        return queues

    def run_wave(self, wave: list[PlannedRun], say: outcome.Say) -> None:
        """Run `wave` on the workers: each starts its `assign`ed queue, one run at a time; a
        worker whose queue is empty takes the last queued run of the worker with the most
        queued cost (estimates are rough: an idle worker costs more than one more trace)."""
        if not self._executors:
            self._start()
        queues = [collections.deque(q) for q in self.assign(wave)]
        futures: dict[concurrent.futures.Future, tuple[PlannedRun, int]] = {}
        dead: set[int] = set()

        def start_next(i: int) -> None:
            run = self._next(queues, i, dead)
            if run is not None:
                job = (run.stage, run.source, run.target, self.profile, run.seed,
                       self.log_model_finetune, run.resume_id)
                futures[self._executors[i].submit(_worker_run, *job)] = (run, i + 1)

        for i in range(self.parallel):
            start_next(i)
        while futures:
            finished, _ = concurrent.futures.wait(
                futures, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                run, number = futures.pop(future)
                try:
                    done = future.result()
                except Exception as exc:  # noqa: BLE001 - BrokenProcessPool: the worker died
                    dead.add(number - 1)
                    done = {"status": "failed", "seconds": 0.0, "reason": _died(number, exc)}
                self._report(run, done, number, say)
                if number - 1 in dead:  # the runs it still held fail with it
                    while queues[number - 1]:
                        held = queues[number - 1].popleft()
                        outcome.failed(held, _died(number, None), 0.0)
                        say(held, outcome.describe(held) + f" [worker {number}]")
                else:
                    start_next(number - 1)
        if dead:  # start fresh workers for the next wave
            self.close()

    @staticmethod
    def _next(queues: list[collections.deque], i: int, dead: set[int]) -> PlannedRun | None:
        """Worker i's next run: its own queue's first, else the last of the live worker with
        the most queued cost (the run that worker would start last), else None."""
        if queues[i]:
            return queues[i].popleft()
        others = [j for j, q in enumerate(queues) if q and j not in dead]
        if not others:
            return None
        return queues[max(others, key=lambda j: _total(list(queues[j])))].pop()

    @staticmethod
    def _report(run: PlannedRun, done: dict[str, Any], number: int, say: outcome.Say) -> None:
        if done["status"] == "ran":
            outcome.ran(run, done["run_id"], done["metrics"], done["seconds"])
        else:
            outcome.failed(run, done["reason"], done["seconds"])
        say(run, outcome.describe(run) + f" [worker {number}]")


def _died(number: int, exc: BaseException | None) -> str:
    cause = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return (f"worker {number} died{cause}; see "
            f"{outcome.LOG_DIR / f'worker-{number}.log'}")


# What a run costs beyond its image-steps (start, evaluation, logging), in image-steps: about
# 5 s of a demo run on a CPU, which is most of a probe's cost.
RUN_OVERHEAD_STEPS = 150


def cost(run: PlannedRun) -> int:
    """A run's expected share of a worker's time, in image-steps."""
    return run.image_steps + RUN_OVERHEAD_STEPS


def _total(runs: list[PlannedRun]) -> int:
    return sum(cost(r) for r in runs)


def _split(group: list[PlannedRun], fair: float) -> list[list[PlannedRun]]:
    """`group` in consecutive parts of at most about `fair` each (a run is never split)."""
    parts: list[list[PlannedRun]] = [[]]
    for run in group:
        if parts[-1] and _total(parts[-1]) + cost(run) > fair:
            parts.append([])
        parts[-1].append(run)
    return parts


def _worker_start(log_path: str, tracking_uri: str, env: dict[str, str] | None = None,
                  threads: int | None = None, parent: int | None = None) -> None:
    """In each worker: its GPUs, output to its log file, the parent's store, its CPU threads,
    the model pool on, and SIGTERM when the parent dies.

    `env` first: CUDA reads CUDA_VISIBLE_DEVICES when TensorFlow first initialises it, which
    happens in the first run, after this (a spawned worker has not imported TensorFlow yet).
    """
    import logging

    if parent is not None:
        _end_with_parent(parent)
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
    from rssc_mlflow.training import speed

    speed.set_cpu_threads(threads)
    speed.enable_for_process()


def _end_with_parent(parent: int) -> None:
    """SIGTERM this worker when `parent` ends, however it ends (SIGKILL, out of memory).

    A worker outliving `reproduce` would train the runs still queued for nobody. With SIGTERM
    its open run is marked KILLED (`runs.tracked_run`) and the worker exits (`_worker_run`).
    Linux's PR_SET_PDEATHSIG; elsewhere the worker ends when its queue breaks instead.
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(128 + int(signal.SIGTERM))


def _worker_run(stage: str, source: str, target: str, profile: str, seed: int,
                log_model_finetune: bool, resume: str = "") -> dict[str, Any]:
    started = time.monotonic()
    print(f"--- {stage} {source} {target} seed {seed}", flush=True)
    try:
        result = outcome.run_stage(stage, source, target, profile, seed, log_model_finetune, resume)
    except errors.Interrupted as exc:  # SIGTERM/SIGINT: the run is marked KILLED; stop here
        print(f"--- {exc.message()}; worker exits", flush=True)
        os._exit(exc.exit_code)  # not to the pool: it would hand this worker the next run
    except Exception as exc:  # noqa: BLE001 - reported to the parent, the worker goes on
        import traceback

        traceback.print_exc()
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                "seconds": time.monotonic() - started}
    return {"status": "ran", "run_id": result.run_id, "metrics": dict(result.metrics),
            "seconds": time.monotonic() - started}
