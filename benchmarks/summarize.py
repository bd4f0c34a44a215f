"""summarize over many runs: `rssc_mlflow.results.summarize.summarize` on a SQLite store.

The runs are made as in tests/results/test_summarize.py (one per paper cell in turn, with the
tags and final metric that commands.py leaves, FINISHED), untimed; then summarize is timed
end to end: reading the store, every table and figure written, the summary run logged.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import Options, Row, child, child_main, fmt

NAME = "summarize"
LIMIT_S = 10.0


def measure(runs: int, out: str) -> dict[str, Any]:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from rssc_mlflow.results import paper
    from rssc_mlflow.results.summarize import summarize
    from rssc_mlflow.tracking import runs as tags

    client = MlflowClient(mlflow.get_tracking_uri())
    exp = client.create_experiment("rssc")
    cells = [s for lay in paper.LAYOUTS for s in lay.cells.values() if s is not None]
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    for i in range(runs):
        spec = cells[i % len(cells)]
        run_id = client.create_run(exp, start_time=now + i, tags={
            tags.TAG_STAGE: spec.stage, tags.TAG_SOURCE: spec.source,
            tags.TAG_TARGET: spec.target, tags.TAG_FINGERPRINT: f"fp-{i % 2}",
            tags.TAG_SYNTHETIC: "false", tags.TAG_SEED: str(i)}).info.run_id
        metric = "test_f1_micro" if spec.multilabel else "test_accuracy"
        client.log_batch(run_id, metrics=[Metric(metric, 0.5 + (i % 7) / 100, now, 0)])
        client.set_terminated(run_id, "FINISHED")
    created = time.perf_counter() - t0
    t0 = time.perf_counter()
    summarize(experiment="rssc", out=out)
    return {"runs": runs, "seconds": time.perf_counter() - t0, "create_s": created}


def run(opts: Options) -> list[Row]:
    store = opts.work / "summarize.db"
    r = child(opts, "summarize", "measure", env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"},
              runs=opts.runs, out=str(opts.work / "summary"))
    return [Row(f"summarize over {r['runs']:,} runs", r["seconds"], LIMIT_S, "s",
                r["seconds"] / LIMIT_S, "<= 1 (10 s)", r["seconds"] <= LIMIT_S,
                f"ratio = seconds / 10 s limit; SQLite store; making the runs took "
                f"{fmt(r['create_s'])} s (not timed)")]


if __name__ == "__main__":
    child_main()
