"""The local backend: `commands.*` in this process, or one `rssc STAGE ...` child per run.

In-process (one run at a time) imports TensorFlow once for the whole plan. Child processes run
`parallel` runs at once, and with `--gpus-per-run` each sees only its own GPUs (then every run
is a child, even alone, since this process may already hold all GPUs). A child reports its
outcome through a result file (`outcome.report_to_parent`); its console goes to a log.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import subprocess
import sys
import threading
import time

import mlflow

from rssc_mlflow import devices
from rssc_mlflow.results.reproduce import outcome
from rssc_mlflow.results.reproduce.planning import PlannedRun


class Local:
    """In-process calls of `commands.*` (TensorFlow imported once), or subprocesses if parallel.

    `slots`: the CUDA_VISIBLE_DEVICES of each of the `parallel` subprocesses (`--gpus-per-run`);
    then every run is a subprocess, even alone, since this process may already hold all GPUs.
    """

    def __init__(self, profile: str, parallel: int, log_model_finetune: bool,
                 slots: list[str] | None = None) -> None:
        self.profile, self.parallel, self.log_model_finetune = profile, parallel, log_model_finetune
        self.slots = slots

    def run_wave(self, wave: list[PlannedRun], say: outcome.Say) -> None:
        if self.slots is not None or (self.parallel > 1 and len(wave) > 1):
            self._subprocesses(wave, say)
            return
        for run in wave:
            self._in_process(run, say)

    def _in_process(self, run: PlannedRun, say: outcome.Say) -> None:
        from rssc_mlflow.training import speed

        say(run, "...")
        started = time.monotonic()
        try:
            result = outcome.run_stage(run.stage, run.source, run.target, self.profile,
                                       run.seed, self.log_model_finetune, run.resume_id)
        except Exception as exc:  # noqa: BLE001 - one failure must not stop independent runs
            outcome.failed(run, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        else:
            outcome.ran(run, result.run_id, result.metrics, time.monotonic() - started)
        finally:
            if not speed.is_enabled():  # pooled models are meant to stay
                outcome.release_memory()
        say(run, outcome.describe(run))

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

    def _subprocesses(self, wave: list[PlannedRun], say: outcome.Say) -> None:
        """One thread per slot takes the next run, starts its child and waits for it: a
        finished run hands its slot (its GPUs) on."""
        outcome.LOG_DIR.mkdir(parents=True, exist_ok=True)
        pending = collections.deque(wave)
        lock = threading.Lock()

        def serve(slot: int) -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    run = pending.popleft()
                self._child(run, slot, say)

        slots = range(min(self.parallel, len(wave)))
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
            list(pool.map(serve, slots))

    def _child(self, run: PlannedRun, slot: int, say: outcome.Say) -> None:
        name = f"{run.stage}-{run.source}-{run.target or 'none'}-seed{run.seed}"
        log = outcome.LOG_DIR / f"{name}.log"
        result = (outcome.LOG_DIR / f"{name}.result.json").resolve()
        result.unlink(missing_ok=True)  # a previous attempt's outcome is not this one's
        env = {**self.env(slot), outcome.RESULT_FILE_ENV: str(result)}
        started = time.monotonic()
        with log.open("w") as fh:
            proc = subprocess.Popen(self.argv(run), stdout=fh, stderr=subprocess.STDOUT, env=env)
        gpus = f", GPUs {self.slots[slot] or 'none'}" if self.slots is not None else ""
        say(run, f"... (pid {proc.pid}{gpus}, log {log})")
        proc.wait()
        outcome.apply_child_result(run, outcome.read_result(result), proc.returncode, log,
                                   started)
        say(run, outcome.describe(run))
