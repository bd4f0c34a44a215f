"""What the tracking store already holds for a plan: FINISHED runs (done, skipped) and the
interrupted training runs this machine can continue (`--resume`).

A run counts as done when the store holds a FINISHED run with the same stage, source, target,
seed and protocol fingerprint tags (`commands.fingerprint_for`). A RUNNING or FAILED training
run of a cell, left by a crash, a kill -9 or a pre-empted node, is continued in the same MLflow
run from its last checkpoint when its checkpoint folder is on this machine and no process holds
it (`commands.can_resume`). The fingerprint needs TensorFlow: it is computed only for a cell
the store has a run of.
"""

from __future__ import annotations

import mlflow

from rssc_mlflow.results.reproduce.planning import PlannedRun
from rssc_mlflow.settings import TRAINING_STAGES
from rssc_mlflow.tracking import runs as tags

# (stage, source, target, seed, fingerprint), as the run's tags spell them.
StoreKey = tuple[str, str, str, str, str]


def finished_runs() -> dict[StoreKey, str]:
    """{(stage, source, target, seed, fingerprint): run id} of FINISHED runs, in one query.

    All experiments are searched (a run moved or started under another experiment name still
    counts); the earliest run wins so the answer is stable.
    """
    found = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time ASC"])
    index: dict[StoreKey, str] = {}
    for run in found:
        t = run.data.tags
        if tags.TAG_STAGE not in t or tags.TAG_FINGERPRINT not in t:
            continue
        key = (t[tags.TAG_STAGE], t.get(tags.TAG_SOURCE, ""), t.get(tags.TAG_TARGET, ""),
               t.get(tags.TAG_SEED, ""), t[tags.TAG_FINGERPRINT])
        index.setdefault(key, run.info.run_id)
    return index


def interrupted_runs() -> dict[StoreKey, list[mlflow.entities.Run]]:
    """{(stage, source, target, seed, fingerprint): runs} of RUNNING or FAILED training runs,
    newest first: what a crash, a kill -9 or a pre-empted node left."""
    found = [run for status in ("RUNNING", "FAILED", "KILLED") for run in mlflow.search_runs(
        search_all_experiments=True, output_format="list",
        filter_string=f"attributes.status = '{status}'")]  # IN (...) is for run ids only
    found.sort(key=lambda run: run.info.start_time, reverse=True)
    index: dict[StoreKey, list[mlflow.entities.Run]] = {}
    for run in found:
        t = run.data.tags
        if t.get(tags.TAG_STAGE) not in TRAINING_STAGES or \
                tags.TAG_FINGERPRINT not in t:
            continue
        key = (t[tags.TAG_STAGE], t.get(tags.TAG_SOURCE, ""), t.get(tags.TAG_TARGET, ""),
               t.get(tags.TAG_SEED, ""), t[tags.TAG_FINGERPRINT])
        index.setdefault(key, []).append(run)
    return index


def find_interrupted(run: PlannedRun,
                      index: dict[StoreKey, list[mlflow.entities.Run]],
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


def find_done(run: PlannedRun, index: dict[StoreKey, str],
               profile: str, replicas: int = 1) -> str | None:
    """The id of a FINISHED run equal to `run`, or None (fingerprint computed only if needed)."""
    prefix = (run.stage, run.source, run.target, str(run.seed))
    if not any(k[:4] == prefix for k in index):  # nothing to compare with: skip the fingerprint
        return None
    from rssc_mlflow import commands  # TensorFlow: only once there is something to compare

    run.fingerprint = commands.fingerprint_for(run.stage, source=run.source, target=run.target,
                                               profile=profile, seed=run.seed, replicas=replicas)
    return index.get((*prefix, run.fingerprint))
