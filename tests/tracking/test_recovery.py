"""`tracking.recovery`: the run lock, resuming, and real training runs that lose their process
or their tracking server, then `--resume`.

- `kill -9` in epoch 2 of 3, then `rssc finetune --resume RUN_ID`: the same run, epochs 1-3
  once each, and every metric bit-identical to an uninterrupted run with the same seed
  (CPU, RSSC_OP_DETERMINISM=1).
- The server goes away after training, before the results are logged: the model and its test
  predictions are kept on local disk, the error says where, and `--resume` logs them later
  without retraining.

Each `rssc` runs in its own process, as a user would run it. The lock, the resume checks and
the server-gone messages are tested on their own first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from rssc_mlflow.tracking import recovery, runs
from rssc_mlflow.tracking.predictions import TAG_PREDICTIONS, load_predictions
from tests.tracking.conftest import start_mlflow_server
from tests.tracking.test_quiet import ALLOWED, clean_env

FINETUNE = ["finetune", "--source", "scratch", "--target", "ucm", "--profile", "smoke",
            "--epochs", "3", "--no-log-model"]
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")


def _run(folder: Path | None, stage: str = "finetune", run_id: str = "abc123"):
    tags = {runs.TAG_STAGE: stage}
    if folder is not None:
        tags[runs.TAG_CHECKPOINT_DIR] = str(folder)
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(tags=tags))


def test_resumable_only_with_a_free_local_checkpoint_folder(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "abc123"
    assert not recovery.can_resume(_run(folder))  # another machine's run: no folder here
    folder.mkdir(parents=True)
    assert recovery.can_resume(_run(folder))
    assert not recovery.can_resume(_run(folder, stage="probe"))  # nothing to resume
    assert not recovery.can_resume(_run(None))  # failed before it had a checkpoint folder
    with recovery.training_lock(folder, "abc123"):
        assert not recovery.can_resume(_run(folder))  # being trained right now
        with pytest.raises(recovery.RunLocked, match=r"Run abc123 is being trained by another "
                                                     r"process on this machine .*locked"):
            with recovery.training_lock(folder, "abc123"):
                pass
    assert recovery.can_resume(_run(folder))  # released


def test_a_killed_process_releases_its_lock(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from rssc_mlflow.tracking import recovery
        with recovery.training_lock(Path({str(folder)!r}), "r1"):
            print("held", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not recovery.can_resume(_run(folder, run_id="r1"))
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.wait()
    assert recovery.can_resume(_run(folder, run_id="r1"))


def test_resume_on_another_replica_count_is_refused(isolated_environment: Path) -> None:
    import mlflow

    from rssc_mlflow.errors import RsscError

    with mlflow.start_run() as two:
        mlflow.log_param("replicas", "2")
    with mlflow.start_run() as old:  # logged before runs recorded their replicas
        pass
    recovery.check_resume_replicas(two.info.run_id, 2)
    recovery.check_resume_replicas(old.info.run_id, 4)
    recovery.check_resume_replicas(None, 4)
    with pytest.raises(RsscError, match=r"trained on 2 replica\(s\), but this process sees 1\. "
                                        r"Received: replicas=1.*CUDA_VISIBLE_DEVICES"):
        recovery.check_resume_replicas(two.info.run_id, 1)


def test_resume_refuses_another_stages_run(isolated_environment: Path) -> None:
    """`rssc finetune --resume RUN` of a pretrain run names the command that continues it."""
    import mlflow

    from rssc_mlflow.errors import RsscError

    with mlflow.start_run() as run:
        mlflow.log_params({"stage": "pretrain", "source": "ucm", "profile": "smoke",
                           "epochs": "2", "batch_size": "4", "image_size": "32", "seed": "1",
                           "precision": "float32"})
    run_id = run.info.run_id
    assert recovery.settings_from_run(run_id)[0] == "pretrain"
    with pytest.raises(RsscError, match=rf"Run {run_id} is a pretrain run; resume it with "
                                        rf"`rssc pretrain --resume {run_id}`"):
        recovery.settings_for_resume("finetune", run_id)
    assert recovery.settings_for_resume("pretrain", run_id).epochs == 2
    with pytest.raises(RsscError, match=r"Cannot resume run 'nosuch': it is not in the "
                                        r"tracking store"):
        recovery.settings_for_resume("pretrain", "nosuch")


def test_only_a_lost_server_becomes_tracking_server_gone(tmp_path: Path) -> None:
    """The server-gone wrappers turn a connection error into the message that says where the
    work is (and keep the results); any other error goes through as it was."""
    kept: list[Path] = []
    with pytest.raises(ValueError, match="not the server"):
        with recovery.results_kept_if_server_gone("adapt", "r1", tmp_path, kept.append):
            raise ValueError("not the server")
    assert kept == []  # nothing kept for an error that is not the server's
    with pytest.raises(runs.TrackingServerGone, match=r"stopped answering at the end of run r1"
                                                      r"\. Nothing is lost.*`rssc adapt "
                                                      r"--resume r1` logs them"):
        with recovery.results_kept_if_server_gone("adapt", "r1", tmp_path, kept.append):
            raise ConnectionError("refused")
    assert kept == [tmp_path]
    with pytest.raises(KeyError):
        with recovery.server_gone_during_training("adapt", "r1", tmp_path, backups=True):
            raise KeyError("x")
    with pytest.raises(runs.TrackingServerGone, match=rf"during training of run r1; its last "
                                                      rf"epoch backup is in {tmp_path}\. .*"
                                                      r"`rssc adapt --resume r1` continues"):
        with recovery.server_gone_during_training("adapt", "r1", tmp_path, backups=True):
            raise ConnectionError("refused")
    with pytest.raises(runs.TrackingServerGone, match="this profile keeps no backups"):
        with recovery.server_gone_during_training("adapt", "r1", tmp_path, backups=False):
            raise ConnectionError("refused")


def _env(world, tmp_path: Path, uri: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "RSSC_DATA_DIR": str(world.data_dir), "MLFLOW_TRACKING_URI": uri,
            "RSSC_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
            "RSSC_CACHE_DIR": str(tmp_path / "cache"), "RSSC_OP_DETERMINISM": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _rssc(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rssc_mlflow.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _history(client: mlflow.MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key),
                                                     key=lambda m: (m.step, m.timestamp))]
            for key in EPOCH_METRICS}


@pytest.mark.slow
def test_kill_9_in_epoch_2_then_resume_matches_an_uninterrupted_run(world, tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    client.search_experiments()  # the schema exists before two processes use the store
    env = _env(world, tmp_path, uri)
    console = _start(FINETUNE, env, tmp_path)
    proc = console.proc
    try:
        _until_backed_up(console, 1)  # epoch 1 is backed up: we are in epoch 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (killed,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run_id = killed.info.run_id
    assert killed.info.status == "RUNNING"  # kill -9: nothing could mark it
    backup = tmp_path / "checkpoints" / run_id / "training_metadata.json"
    assert json.loads(backup.read_text())["epoch"] == 1  # killed in epoch 2, as intended
    assert [s for s, _ in _history(client, run_id)["loss"]] == [1]

    resumed = _rssc(["finetune", "--resume", run_id, "--no-log-model"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = _rssc(FINETUNE, env, tmp_path)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    done = {r.info.run_id: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    assert len(done) == 2 and all(r.info.status == "FINISHED" for r in done.values())
    (other_id,) = set(done) - {run_id}
    ours, reference = _history(client, run_id), _history(client, other_id)
    for key in EPOCH_METRICS:
        assert [s for s, _ in ours[key]] == [1, 2, 3], key  # no epoch missing or twice
        assert ours[key] == reference[key], key  # bit for bit
    assert done[run_id].data.metrics["test_accuracy"] == \
        done[other_id].data.metrics["test_accuracy"]
    assert done[run_id].data.tags["rssc.op_determinism"] == "true"
    assert not (tmp_path / "checkpoints" / run_id).exists()  # FINISHED: the backup is gone


class _Console:
    """A `rssc` process's stdout and stderr, read line by line from its pipe."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self.drain: threading.Thread | None = None

    def text(self) -> str:
        return "".join(self.lines)


def _start(args: list[str], env: dict[str, str], cwd: Path) -> _Console:
    return _Console(subprocess.Popen([sys.executable, "-m", "rssc_mlflow.cli", *args], env=env,
                                     cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True))


def _until_backed_up(console: _Console, epochs: int) -> None:
    """Until `epochs` epochs are backed up: Keras prints "Epoch N+1/..." at the start of the
    next epoch, after BackupAndRestore saved epoch N at its end. A line in a pipe cannot be
    missed, however slow the machine; the rest of the output is drained in the background."""
    while not any(line.startswith(f"Epoch {epochs + 1}/") for line in console.lines):
        line = console.proc.stdout.readline()
        assert line, f"ended before epoch {epochs + 1}: " + console.text()[-3000:]
        console.lines.append(line)
    console.drain = threading.Thread(target=lambda: console.lines.extend(console.proc.stdout),
                                     daemon=True)
    console.drain.start()


def _interrupt(args: list[str], env: dict[str, str], tmp_path: Path, sig: signal.Signals,
               after_epochs: int, name: str) -> tuple[int, str]:
    """Run `rssc ARGS` and send it `sig` once `after_epochs` epochs are backed up."""
    console = _start(args, env, tmp_path)
    proc = console.proc
    try:
        _until_backed_up(console, after_epochs)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if console.drain is not None:
        console.drain.join(timeout=60)  # the process is gone: its pipe ends, the thread too
    (tmp_path / f"{name}.log").write_text(console.text())
    return proc.returncode, " ".join(console.text().split())


@pytest.mark.slow
def test_sigterm_in_epoch_2_marks_the_run_killed_and_resume_finishes_it(world, tmp_path: Path):
    """Pre-emption as Kubernetes or a batch scheduler does it: SIGTERM to `rssc finetune` in
    epoch 2 of 2. The run is KILLED with the reason, its checkpoint is kept, the console gives
    the exact command that continues it, and that command finishes the same run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    client.search_experiments()  # the schema exists before two processes use the store
    env = _env(world, tmp_path, uri)
    args = ["finetune", "--source", "scratch", "--target", "ucm", "--profile", "smoke",
            "--epochs", "2", "--no-log-model"]

    code, out = _interrupt(args, env, tmp_path, signal.SIGTERM, 1, "sigterm")
    assert code == 128 + signal.SIGTERM, out[-3000:]  # 143, as a shell reports a SIGTERM
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run_id = run.info.run_id
    folder = tmp_path / "checkpoints" / run_id
    assert run.info.status == "KILLED"
    assert run.data.tags[runs.TAG_ERROR].startswith("Interrupted: SIGTERM (signal 15).")
    assert (f"error: interrupted by SIGTERM: run {run_id} is marked KILLED. Its checkpoint (1 of "
            f"2 epochs done) is kept in {folder}. Continue the same run with "
            f"`rssc finetune --resume {run_id}`.") in out
    assert "Traceback" not in out
    assert json.loads((folder / "training_metadata.json").read_text())["epoch"] == 1
    assert [s for s, _ in _history(client, run_id)["loss"]] == [1]
    assert run.data.tags[runs.TAG_NOTE].endswith(  # the run's description in the UI
        f"result: KILLED by SIGTERM. {run.data.tags[runs.TAG_ERROR].split('. ', 1)[1]}")

    # As a user runs it, quiet by default (test_quiet.py): rssc's lines and Keras's, nothing else.
    resumed = _rssc(["finetune", "--resume", run_id, "--no-log-model"], clean_env(env), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    console = [line for line in (resumed.stdout + resumed.stderr).splitlines() if line.strip()]
    assert [line for line in console if not ALLOWED.fullmatch(line)] == []
    assert "Epoch 2/2" in console  # Keras's progress is kept
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert runs.TAG_ERROR not in run.data.tags
    assert run.data.tags["rssc.previous_error"].startswith("Interrupted: SIGTERM")
    assert run.data.tags[runs.TAG_NOTE].endswith(
        f"result: test_accuracy={100 * run.data.metrics['test_accuracy']:.2f}%")
    assert [s for s, _ in _history(client, run_id)["loss"]] == [1, 2]  # each epoch once
    assert len(client.search_runs([run.info.experiment_id])) == 1  # one run, continued
    assert not folder.exists()


# The injected fault: the server is stopped the moment training and evaluation are over,
# before the results are logged; the client gives up after one quick retry.
KILL_SERVER_AFTER_TRAINING = textwrap.dedent("""
    import os, signal, socket, sys, time
    from rssc_mlflow.training import fit
    from rssc_mlflow.cli import main

    predict = fit.predict_with_labels

    def predict_then_lose_the_server(model, ds):
        out = predict(model, ds)
        os.killpg(int(os.environ["SERVER_PID"]), signal.SIGTERM)  # the server's whole group
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until nothing answers on its port
            try:
                socket.create_connection(("127.0.0.1", int(os.environ["SERVER_PORT"])), 1).close()
            except OSError:
                break
            time.sleep(0.2)
        return out

    fit.predict_with_labels = predict_then_lose_the_server
    sys.argv = ["rssc", *sys.argv[1:]]
    main()
""")


@pytest.mark.slow
def test_server_gone_at_the_end_keeps_the_results_and_resume_logs_them(world, tmp_path: Path,
                                                                        monkeypatch):
    store = f"sqlite:///{tmp_path / 'server.db'}"
    server = start_mlflow_server(tmp_path, store, artifacts=tmp_path / "artifacts",
                                 log_name="first")
    port = int(server.uri.rsplit(":", 1)[1])  # the restarted server takes the same one
    env = _env(world, tmp_path, server.uri, SERVER_PID=str(server.process.pid),
               SERVER_PORT=str(port),
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0")
    args = ["finetune", "--source", "scratch", "--target", "ucm", "--profile", "smoke",
            "--epochs", "2"]  # the model is logged too
    try:
        lost = subprocess.run([sys.executable, "-c", KILL_SERVER_AFTER_TRAINING, *args],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
    finally:
        server.stop()
    assert lost.returncode == 1, lost.stderr[-3000:]
    message = " ".join(lost.stderr.split())
    assert "stopped answering at the end of run" in message, message[-3000:]
    run_id = message.split("at the end of run ")[1].split(".")[0]
    kept = tmp_path / "checkpoints" / run_id / "unlogged"
    assert f"kept in {kept}" in message and f"rssc finetune --resume {run_id}" in message
    assert sorted(p.name for p in kept.iterdir()) == ["complete", "model.weights.h5",
                                                      "predictions.npz"]
    with np.load(kept / "predictions.npz") as saved:
        expected = accuracy_score(saved["y_true"], saved["probs"].argmax(axis=1))

    server = start_mlflow_server(tmp_path, store, port=port, artifacts=tmp_path / "artifacts",
                                 log_name="second")
    try:
        resumed = _rssc(["finetune", "--resume", run_id], env, tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "logging the results kept in" in resumed.stdout
        client = mlflow.MlflowClient(server.uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_accuracy"] == pytest.approx(expected, abs=1e-12)
        history = _history(client, run_id)
        assert [s for s, _ in history["loss"]] == [1, 2]  # logged during training, once
        assert {a.path for a in client.list_artifacts(run_id, "evaluation")} == {
            "evaluation/confusion_matrix.png", "evaluation/per_class_report.txt",
            "evaluation/predictions.npz"}
        logged = load_predictions(run_id, client)  # what was kept, with its file names
        assert accuracy_score(logged.y_true, logged.probs.argmax(axis=1)) == expected
        assert run.data.tags[TAG_PREDICTIONS] == "evaluation/predictions.npz"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                             output_format="list")
        assert [(m.source_run_id, m.status.name) for m in logged] == [(run_id, "READY")]
        assert not (tmp_path / "checkpoints" / run_id).exists()
        assert runs.TAG_ERROR not in run.data.tags
    finally:
        server.stop()


@pytest.mark.slow
def test_resume_of_a_run_another_process_trains_is_refused(world, tmp_path: Path):
    """`rssc finetune --resume RUN` while another `rssc finetune` process trains RUN: refused
    with the lock's message and exit 1, the run untouched (still RUNNING, no error), and
    `reproduce`'s test for continuing it (`recovery.can_resume`) says no."""
    import threading

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    env = _env(world, tmp_path, uri)
    args = ["finetune", "--source", "scratch", "--target", "ucm", "--profile", "smoke",
            "--epochs", "500", "--no-log-model"]  # still training when the resume comes
    trainer = subprocess.Popen([sys.executable, "-m", "rssc_mlflow.cli", *args], env=env,
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines: list[str] = []
    try:
        # Keras prints "Epoch 1/500" once fit starts; the lock is taken before: a pipe line
        # cannot be missed, however slow the machine.
        while not any(line.startswith("Epoch 1/") for line in lines):
            line = trainer.stdout.readline()
            assert line, "the trainer ended before epoch 1: " + "".join(lines)[-3000:]
            lines.append(line)
        threading.Thread(target=lambda: lines.extend(trainer.stdout), daemon=True).start()
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        run_id = run.info.run_id
        refused = _rssc(["finetune", "--resume", run_id, "--no-log-model"], env, tmp_path)
        assert trainer.poll() is None, "".join(lines)[-3000:]  # it was training all along
        assert refused.returncode == 1, refused.stderr[-3000:]
        folder = tmp_path / "checkpoints" / run_id
        assert (f"error: Run {run_id} is being trained by another process on this machine (its "
                f"checkpoint folder {folder} is locked). Wait for it to end, or stop it, before "
                "resuming.") in " ".join(refused.stderr.split())
        assert "Traceback" not in refused.stderr and "Epoch 1/" not in refused.stdout
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING" and runs.TAG_ERROR not in run.data.tags
        assert not recovery.can_resume(run)  # so `reproduce` leaves it alone
    finally:
        trainer.kill()
        trainer.wait()
