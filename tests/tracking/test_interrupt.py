"""SIGINT/SIGTERM delivered to this very process while a run is open (no training needed).

The end-to-end case, SIGTERM to a real `rssc finetune` in epoch 2 and `--resume`, is in
test_recovery.py; these check the signal plumbing itself with real signals.
"""

from __future__ import annotations

import os
import signal
import time

import mlflow
import pytest
import typer

from rssc_mlflow.cli import friendly
from rssc_mlflow.errors import Interrupted
from rssc_mlflow.tracking import runs


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One SQLite store for the module: creating one costs seconds, the tests milliseconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('interrupt') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _store(store_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)


def _signal_myself(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(5)  # the handler raises long before this ends
    pytest.fail(f"{sig.name} did not interrupt the run")


@pytest.mark.parametrize(("stage", "sig", "advice"), [
    ("finetune", signal.SIGINT, "Continue the same run with `rssc finetune --resume {run_id}`."),
    ("probe", signal.SIGTERM, "Run the same command again."),
])
def test_a_signal_marks_the_run_killed_and_says_how_to_continue(stage, sig, advice):
    previous = signal.getsignal(sig)
    with pytest.raises(Interrupted) as caught:
        with runs.tracked_run(stage, "scratch", "ucm") as run:
            _signal_myself(sig)
    run_id = run.info.run_id
    exc = caught.value
    assert (exc.run_id, exc.signal, exc.exit_code) == (run_id, sig, 128 + sig)
    assert exc.message() == (f"interrupted by {sig.name}: run {run_id} is marked KILLED. "
                             + advice.format(run_id=run_id))
    recorded = mlflow.MlflowClient().get_run(run_id)
    assert recorded.info.status == "KILLED"
    assert recorded.data.tags[runs.TAG_ERROR] == (
        f"Interrupted: {sig.name} (signal {int(sig)}). {advice.format(run_id=run_id)}")
    assert mlflow.active_run() is None
    assert signal.getsignal(sig) is previous  # the process's own handlers are back


def test_the_cli_exits_with_128_plus_the_signal(capsys):
    @friendly
    def command():
        with runs.tracked_run("pretrain", "ucm"):
            _signal_myself(signal.SIGTERM)

    with pytest.raises(typer.Exit) as caught:
        command()
    assert caught.value.exit_code == 143
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted by SIGTERM: run ") and "--resume" in last


def test_reproduce_counts_a_killed_run_as_interrupted():
    from rssc_mlflow.results.reproduce import interrupted_runs

    with pytest.raises(Interrupted):
        with runs.tracked_run("finetune", "scratch", "aid") as run:
            mlflow.set_tags({runs.TAG_FINGERPRINT: "f" * 16, runs.TAG_SEED: "42"})
            _signal_myself(signal.SIGTERM)
    found = interrupted_runs()[("finetune", "scratch", "aid", "42", "f" * 16)]
    assert [r.info.run_id for r in found] == [run.info.run_id]
    assert found[0].info.status == "KILLED"
