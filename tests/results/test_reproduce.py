"""`reproduce`: the plan (no training), the kubernetes backend (mlflow.projects.run faked) and,
marked slow, a real smoke reproduction killed half-way and resumed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from rssc_mlflow import protocol
from rssc_mlflow.data import splits
from rssc_mlflow.errors import RsscError
from rssc_mlflow.results import paper
from rssc_mlflow.results import reproduce as rep
from rssc_mlflow.results.reproduce import kubernetes as kube
from rssc_mlflow.results.reproduce import outcome, runner
from rssc_mlflow.tracking import runs as tags

TABLES34 = ["table3", "table4"]
SUBSETS = ("mlrsnet_ucm_same", "mlrsnet_ucm_other", "mlrsnet_half")


def _prepare(root: Path, mlrsnet_per_class: int = 6, ucm_per_class: int = 3) -> None:
    """Tiny synthetic MLRSNet + UCM prepared into $RSSC_DATA_DIR.

    MLRSNet gets 6 images per category: `mlrsnet_half` keeps floor(6/2) = 3 of each, of which
    the 80% split trains on 2 and evaluates 1 (with 3 per category the half subset has no
    evaluation images at all).
    """
    from rssc_mlflow.data.prepare import prepare
    from rssc_mlflow.data.synth import write_synthetic

    raw = root / "raw"
    for key, n in (("mlrsnet_sl", mlrsnet_per_class), ("ucm", ucm_per_class)):
        manual = write_synthetic(raw, keys=[key], images_per_class=n, image_size=32)[key]
        prepare(key, manual)


# --- The plan ---------------------------------------------------------------------------------


def _expected_paper_runs() -> int:
    cells = {(c.stage, c.source, c.target) for lay in paper.LAYOUTS for c in lay.cells.values()
             if c is not None}
    ups = {rep.upstream_of(s) for st, s, _ in cells if st in ("probe", "finetune")} - {None}
    return len(cells | ups)


def test_full_paper_plan_counts_and_order() -> None:
    planned = rep.plan("paper")
    # 12 Table II + 3 + 3 subsets' transfers + 48 + 55 + 14 + 14 figure cells, plus the pretrain
    # runs only transfers need (imagenet100 and the three MLRSNet subsets).
    assert len(planned) == _expected_paper_runs() == 153
    assert len({r.key for r in planned}) == 153
    stages = [r.stage for r in planned]
    assert stages.count("pretrain") == 10 and stages.count("adapt") == 6
    assert stages.count("probe") == 3 + 48 + 14 and stages.count("finetune") == 3 + 55 + 14
    position = {r.key: i for i, r in enumerate(planned)}
    for r in planned:
        for dep in r.depends_on:
            assert position[dep] < position[r.key], (dep, r.key)
    last_upstream = max(i for i, r in enumerate(planned) if r.level == 0)
    assert all(r.level == 1 for r in planned[last_upstream + 1:])
    finetune_aid = next(r for r in planned if r.key == ("finetune", "imagenet+aid", "ucm", 42))
    assert finetune_aid.depends_on == [("adapt", "aid", "", 42)]
    assert next(r for r in planned if r.key == ("probe", "imagenet", "ucm", 42)).depends_on == []


def test_plan_deduplicates_and_excludes_na_cells() -> None:
    planned = rep.plan("paper", only=["table2", "fig1", "fig3"])
    keys = [r.key for r in planned]
    assert len(keys) == len(set(keys))
    # Table II's pretrain resisc45 is also Figure 1's dependency: one run, both reasons.
    pre = next(r for r in planned if r.key == ("pretrain", "resisc45", "", 42))
    assert any(c.startswith("table2") for c in pre.cells)
    assert any(c.startswith("needed by probe resisc45") for c in pre.cells)
    # n/a cells (source and target share images) never become runs.
    assert ("probe", "resisc45", "resisc45", 42) not in keys
    assert ("probe", "mlrsnet_sl", "mlrsnet_ml", 42) not in keys
    assert ("probe", "imagenet+mlrsnet_ml", "mlrsnet_sl", 42) not in keys
    assert not any(paper.shares_images(r.source, r.target) for r in planned if r.target)


def test_plan_seeds_multiply_and_only_filters() -> None:
    one = rep.plan("smoke", only=TABLES34)
    assert [r.key for r in one[:3]] == [("pretrain", s, "", 42) for s in SUBSETS]
    assert len(one) == 9 and {r.stage for r in one[3:]} == {"probe", "finetune"}
    three = rep.plan("smoke", only=["table3,table4"], seeds=[1, 2, 3])
    assert len(three) == 27
    assert {r.seed for r in three} == {1, 2, 3}
    # Every transfer depends on its upstream's runs of all seeds (the alias is the last's).
    probe = next(r for r in three if r.key == ("probe", "mlrsnet_half", "ucm", 2))
    assert probe.depends_on == [("pretrain", "mlrsnet_half", "", s) for s in (1, 2, 3)]
    assert [r.seed for r in three if r.level == 0] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert {r.stage for r in rep.plan("paper", only=["table2"])} == {"pretrain", "adapt"}
    assert len(rep.plan("paper", only=["fig3"])) == 4 + 28  # 4 adapt + figure 3a and 3b
    with pytest.raises(RsscError, match="table5"):
        rep.plan("paper", only=["table5"])


def test_image_steps_unprepared_use_catalog_counts() -> None:
    planned = {r.key: r for r in rep.plan("paper", only=TABLES34, throughput=1000.0)}
    same = planned[("pretrain", "mlrsnet_ucm_same", "", 42)]
    assert not same.exact and same.train_images + same.eval_images == 50_197
    half = planned[("pretrain", "mlrsnet_half", "", 42)]
    assert half.train_images + half.eval_images == 54_573
    ft = planned[("finetune", "mlrsnet_half", "ucm", 42)]
    assert (ft.train_images, ft.eval_images) == (420, 1680)  # 20 of each 100 UCM images
    assert ft.image_steps == 2100 * 100 + 1680
    assert planned[("probe", "mlrsnet_half", "ucm", 42)].image_steps == 2100
    assert ft.gpu_hours == pytest.approx(ft.image_steps / 1000.0 / 3600)


def test_image_steps_of_a_prepared_dataset(isolated_environment: Path) -> None:
    _prepare(isolated_environment, mlrsnet_per_class=6, ucm_per_class=3)
    planned = {r.key: r for r in rep.plan("demo", only=TABLES34, throughput=100.0)}
    # By hand: 21 categories x 6 images, 80% -> round(4.8) = 5 train, 1 test per category.
    same = planned[("pretrain", "mlrsnet_ucm_same", "", 42)]
    assert same.exact and (same.train_images, same.eval_images) == (21 * 5, 21 * 1)
    demo = protocol.get_profile("demo")
    assert not demo.validate_every_epoch  # demo: no per-epoch evaluation, one at the end
    assert same.image_steps == (21 * 5) * demo.epochs + 21
    # Half: floor(6/2) = 3 per category of 46 -> round(2.4) = 2 train, 1 test.
    half = planned[("pretrain", "mlrsnet_half", "", 42)]
    assert (half.train_images, half.eval_images) == (46 * 2, 46 * 1)
    assert splits.n_train_for(3, "target") == 1
    ft = planned[("finetune", "mlrsnet_ucm_other", "ucm", 42)]
    assert (ft.train_images, ft.eval_images) == (21, 42)  # UCM 3 per class, 20% -> 1
    assert ft.image_steps == 21 * demo.epochs + 42
    probe = planned[("probe", "mlrsnet_ucm_other", "ucm", 42)]
    assert probe.image_steps == 63
    report = rep.ReproduceReport("demo", "local", [42], 100.0, True, list(planned.values()))
    assert report.total_image_steps == sum(r.image_steps for r in planned.values())
    assert report.total_gpu_hours == pytest.approx(report.total_image_steps / 100.0 / 3600)
    assert f"{report.total_image_steps:,}" in report.table()


def test_missing_datasets_and_weights(isolated_environment: Path) -> None:
    with pytest.raises(RsscError, match="not prepared: mlrsnet_half, mlrsnet_ucm_other"):
        rep.reproduce("smoke", only=TABLES34, progress=lambda m: None)
    with pytest.raises(RsscError, match="RSSC_IMAGENET_WEIGHTS") as err:
        rep.reproduce("smoke", only=["fig3"], progress=lambda m: None)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(err.value)
    report = rep.reproduce("smoke", only=["fig3"], plan_only=True, progress=lambda m: None)
    assert report.ok and len(report.todo) == 32
    assert any("RSSC_IMAGENET_WEIGHTS" in w for w in report.warnings)
    assert any("not prepared" in w for w in report.warnings)


# --- Kubernetes (no cluster: mlflow.projects.run is faked) ------------------------------------


def _kube_project(root: Path) -> Path:
    project = root / "project"
    (project / "kubernetes").mkdir(parents=True)
    (project / "kubernetes" / "MLproject").write_text("name: rssc-mlflow\ndocker_env:\n  image: rssc:latest\n")
    return project


def test_backend_config_validation(tmp_path: Path) -> None:
    with pytest.raises(RsscError, match="does not exist"):
        rep.load_backend_config(tmp_path / "nope.json")
    config = tmp_path / "backend.json"
    config.write_text(json.dumps({"repository-uri": "r", "kube-job-template-path": "job.yaml"}))
    with pytest.raises(RsscError, match="job.yaml"):
        rep.load_backend_config(config)
    # The repository's own files are valid, with the template made absolute.
    shipped = rep.load_backend_config(rep.PROJECT_ROOT / "kubernetes" / "backend_config.json")
    resolved = json.loads(shipped.read_text())
    shipped.unlink()  # a temporary copy; reproduce removes its own when it ends
    template = Path(resolved["kube-job-template-path"])
    assert template.is_absolute() and template.is_file()
    job = yaml.safe_load(template.read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["kind"] == "Job" and container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(e["name"] == "MLFLOW_TRACKING_URI" for e in container["env"])


def test_kubernetes_backend_calls_in_order(isolated_environment: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.projects

    from rssc_mlflow import commands

    _prepare(isolated_environment)
    project = _kube_project(isolated_environment)
    monkeypatch.setattr(kube, "PROJECT_ROOT", project)
    monkeypatch.setattr(commands, "fingerprint_for", lambda *a, **k: "fp")
    client = MlflowClient()
    calls: list[dict] = []

    def fake_run(**kwargs):
        used = json.loads(Path(kwargs["backend_config"]).read_text())
        calls.append({**kwargs, "config_used": used})
        p = kwargs["parameters"]
        experiment = mlflow.set_experiment(kwargs["experiment_name"]).experiment_id
        run = client.create_run(experiment, tags={
            tags.TAG_STAGE: kwargs["entry_point"], tags.TAG_SOURCE: p["source"],
            tags.TAG_TARGET: p.get("target", ""), tags.TAG_SEED: p["seed"],
            tags.TAG_FINGERPRINT: "fp"})
        client.set_terminated(run.info.run_id, "FINISHED")
        return type("Submitted", (), {"run_id": run.info.run_id})()

    monkeypatch.setattr(mlflow.projects, "run", fake_run)
    config = project / "kubernetes" / "backend_config.json"
    (project / "kubernetes" / "job.yaml").write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: x, namespace: rssc}\n")
    config.write_text(json.dumps({"repository-uri": "r", "kube-job-template-path": "job.yaml"}))
    report = rep.reproduce("smoke", only=TABLES34, backend="kubernetes", backend_config=config,
                           log_model_finetune=False, progress=lambda m: None)
    assert report.ok and len(report.ran) == 9
    assert [c["entry_point"] for c in calls] == ["pretrain"] * 3 + ["probe"] * 3 + ["finetune"] * 3
    assert [c["parameters"]["source"] for c in calls[:3]] == list(SUBSETS)
    for c in calls:
        assert c["uri"] == str(project / "kubernetes") and c["backend"] == "kubernetes"
        assert c["synchronous"] is True and c["env_manager"] == "local"
        assert c["parameters"]["profile"] == "smoke" and c["parameters"]["seed"] == "42"
        job = str(project / "kubernetes" / "job.yaml")
        assert c["config_used"]["kube-job-template-path"] == job
        assert not Path(c["backend_config"]).exists()  # the resolved copy is removed at the end
    assert calls[3]["parameters"] == {"source": "mlrsnet_ucm_same", "target": "ucm",
                                      "profile": "smoke", "seed": "42"}
    assert calls[-1]["parameters"]["log_model"] == "false"
    # Run again: everything is found done, nothing is submitted.
    calls.clear()
    again = rep.reproduce("smoke", only=TABLES34, backend="kubernetes", backend_config=config,
                          progress=lambda m: None)
    assert calls == [] and len(again.skipped) == 9 and again.ok


def test_failure_blocks_dependents_only(isolated_environment: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.projects

    _prepare(isolated_environment)
    project = _kube_project(isolated_environment)
    monkeypatch.setattr(kube, "PROJECT_ROOT", project)
    (project / "kubernetes" / "job_template.yaml").write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: x, namespace: rssc}\n")
    (project / "kubernetes" / "backend_config.json").write_text(
        json.dumps({"repository-uri": "r", "kube-job-template-path": "job_template.yaml"}))
    submitted: list[tuple[str, str]] = []

    def fake_run(**kwargs):
        p = kwargs["parameters"]
        submitted.append((kwargs["entry_point"], p["source"]))
        if p["source"] == "mlrsnet_ucm_other":
            raise mlflow.exceptions.ExecutionException("job failed")
        return type("Submitted", (), {"run_id": "r-" + p["source"]})()

    monkeypatch.setattr(mlflow.projects, "run", fake_run)
    from rssc_mlflow import commands

    monkeypatch.setattr(commands, "fingerprint_for", lambda *a, **k: "fp")
    lines: list[str] = []
    report = rep.reproduce("smoke", only=TABLES34, backend="kubernetes", progress=lines.append)
    assert not report.ok
    assert [r.key for r in report.failed] == [("pretrain", "mlrsnet_ucm_other", "", 42)]
    blocked = [r.key for r in report.skipped if r.status == "blocked"]
    assert blocked == [("probe", "mlrsnet_ucm_other", "ucm", 42),
                       ("finetune", "mlrsnet_ucm_other", "ucm", 42)]
    assert len(report.ran) == 6 and ("probe", "mlrsnet_half") in submitted
    assert any(line.startswith("[2/9] pretrain mlrsnet_ucm_other (seed 42) ... FAILED")
               for line in lines)
    assert "job failed" in report.table()


def test_kubernetes_needs_docker_env(isolated_environment: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _prepare(isolated_environment)
    project = _kube_project(isolated_environment)
    (project / "kubernetes" / "MLproject").write_text("name: rssc-mlflow\nconda_env: conda.yaml\n")
    monkeypatch.setattr(kube, "PROJECT_ROOT", project)
    with pytest.raises(RsscError, match="docker_env"):
        rep.reproduce("smoke", only=TABLES34, backend="kubernetes", progress=lambda m: None)


def test_parallel_local_uses_subprocesses(isolated_environment: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from rssc_mlflow import commands

    _prepare(isolated_environment)
    monkeypatch.setattr(commands, "fingerprint_for", lambda *a, **k: "fp")
    # No GPU: reproduce counts GPUs with `nvidia-smi -L`, which the fake Popen would answer.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    running: list[int] = []
    peak = [0]
    argvs: list[list[str]] = []
    changed = threading.Condition()

    class FakePopen:
        """A child that reports through its result file and ends when waited for, once two
        children have overlapped (so a backend that ran them one by one would show peak 1)."""

        def __init__(self, argv, stdout, stderr, env):
            assert env["MLFLOW_TRACKING_URI"] == mlflow.get_tracking_uri()
            with changed:
                argvs.append(argv)
                self.pid, self.returncode = len(argvs), None
                running.append(self.pid)
                peak[0] = max(peak[0], len(running))
                changed.notify_all()
            Path(env[rep.RESULT_FILE_ENV]).write_text(json.dumps(
                {"status": "ran", "run_id": f"id{self.pid}", "metrics": {"test_accuracy": 0.5}}))

        def wait(self, timeout=None):
            with changed:
                changed.wait_for(lambda: peak[0] >= 2, timeout=5)
                running.remove(self.pid)
            self.returncode = 0
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    report = rep.reproduce("smoke", only=TABLES34, parallel=2, log_model_finetune=False,
                           progress=lambda m: None)
    assert report.ok and len(report.ran) == 9 and peak[0] == 2
    # Two children start at once, so which one is first is a race; what is fixed is the argv
    # of each and that a source's pretrain starts before every transfer run from it.
    stages = [a[3] for a in argvs]
    pretrain = ["-m", "rssc_mlflow.cli", "pretrain", "--source", "mlrsnet_ucm_same",
                "--profile", "smoke", "--seed", "42"]
    assert pretrain in [a[1:] for a in argvs]
    first = [a[1:] for a in argvs].index(pretrain)
    from_same = [i for i, a in enumerate(argvs)
                 if a[3] != "pretrain" and "mlrsnet_ucm_same" in a]
    assert from_same and first < min(from_same)
    finetunes = [a for a, s in zip(argvs, stages) if s == "finetune"]
    assert finetunes and all(a[-1] == "--no-log-model" and "--target" in a for a in finetunes)
    assert report.ran[0].metrics == {"test_accuracy": 0.5}


def test_children_report_only_through_their_result_file(isolated_environment: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Real children: one killed by SIGKILL, one that exits 0 but reports nothing (printing
    what looks like a result), one that reports its failure. None is a run that ran."""
    _prepare(isolated_environment)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    scripts = {
        "mlrsnet_ucm_same": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "mlrsnet_ucm_other": "print('run abc FINISHED test_accuracy=0.9000')",
        "mlrsnet_half": (f"import json, os, sys; open(os.environ[{rep.RESULT_FILE_ENV!r}], 'w')"
                         ".write(json.dumps({'status': 'failed', 'reason': 'DatasetError: gone'}))"
                         "; sys.exit(1)"),
    }
    monkeypatch.setattr(rep._Local, "argv",
                        lambda self, run: [sys.executable, "-c", scripts[run.source]])
    report = rep.reproduce("smoke", only=["table3"], parallel=2, progress=lambda m: None)
    assert not report.ok and not report.ran
    reasons = {r.source: r.reason for r in report.failed}
    assert set(reasons) == set(SUBSETS)
    assert reasons["mlrsnet_ucm_same"].startswith("killed by SIGKILL without reporting a result")
    assert reasons["mlrsnet_ucm_other"].startswith("exit status 0 without reporting a result")
    assert reasons["mlrsnet_half"].startswith("DatasetError: gone (exit status 1, log ")
    assert [r.status for r in report.planned if r.stage == "probe"] == ["blocked"] * 3


def test_a_result_file_is_read_whole_or_not_at_all(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "result.json"
    assert outcome.read_result(path) is None  # none written
    path.write_text('{"status": "ran", "run_id"')  # cut short: never what report_to_parent leaves
    assert outcome.read_result(path) is None
    path.write_text('{"status": "ran"}')  # no run id: not a result
    assert outcome.read_result(path) is None
    monkeypatch.setenv(outcome.RESULT_FILE_ENV, str(path))
    outcome.report_to_parent({"status": "ran", "run_id": "r1", "metrics": {"test_f1": 0.5}})
    assert outcome.read_result(path) == {"status": "ran", "run_id": "r1",
                                         "metrics": {"test_f1": 0.5}}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    monkeypatch.delenv(outcome.RESULT_FILE_ENV)
    outcome.report_to_parent({"status": "failed", "reason": "x"})  # no parent asked: no file
    assert outcome.read_result(path)["status"] == "ran"


def test_a_result_file_that_cannot_be_written_keeps_the_last_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "result.json"
    path.write_text('{"status": "ran", "run_id": "r0"}')
    monkeypatch.setenv(outcome.RESULT_FILE_ENV, str(path))

    def full(fd: int) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the data is fsynced before it replaces the result
    with pytest.raises(OSError, match="No space left"):
        outcome.report_to_parent({"status": "ran", "run_id": "r1"})
    assert outcome.read_result(path) == {"status": "ran", "run_id": "r0"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left


def test_the_plan_imports_neither_mlflow_nor_tensorflow() -> None:
    """Blocked imports fail loudly, so a plan that needed either would raise here."""
    code = ("import sys\n"
            "for name in ('mlflow', 'tensorflow', 'keras'):\n    sys.modules[name] = None\n"
            "from rssc_mlflow.results.reproduce import plan, ReproduceReport\n"
            "planned = plan('paper')\n"
            "print(len(planned), ReproduceReport('paper', 'local', [42], 1.0, True, planned).ok)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["153", "True"]


def test_reproduce_has_one_cli() -> None:
    """`rssc reproduce` only: the package is not a second command line."""
    import importlib.util

    assert importlib.util.find_spec("rssc_mlflow.results.reproduce.__main__") is None
    assert not hasattr(rep, "main")


# --- Multi-GPU nodes: --gpus-per-run ---------------------------------------------------------


def _real_children(monkeypatch: pytest.MonkeyPatch, seen: list[dict[str, str]]) -> None:
    """Each run a real (cheap) child process that reports the GPU environment it got and how
    many runs overlap, in place of `python -m rssc_mlflow.cli STAGE ...`."""
    script = ("import json, os, time; e = os.environ; time.sleep(0.3); "
              "print(repr((e.get('CUDA_VISIBLE_DEVICES'), e.get('TF_FORCE_GPU_ALLOW_GROWTH')))); "
              f"open(e[{rep.RESULT_FILE_ENV!r}], 'w').write(json.dumps("
              "{'status': 'ran', 'run_id': 'id1', 'metrics': {'test_accuracy': 0.5}}))")
    monkeypatch.setattr(rep._Local, "argv", lambda self, run: [sys.executable, "-c", script])
    started = subprocess.Popen

    def popen(argv, stdout, stderr, env):
        seen.append({k: env.get(k, "") for k in ("CUDA_VISIBLE_DEVICES",
                                                 "TF_FORCE_GPU_ALLOW_GROWTH")})
        return started(argv, stdout=stdout, stderr=stderr, env=env)

    monkeypatch.setattr(subprocess, "Popen", popen)


def test_gpus_per_run_gives_each_worker_its_own_gpus(isolated_environment: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from rssc_mlflow import commands

    _prepare(isolated_environment)
    # The node's scheduler gave us GPUs 3-6: those are the ones to split, never 0-2.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4,5,6")
    asked: list[int] = []
    monkeypatch.setattr(commands, "fingerprint_for",
                        lambda *a, replicas=1, **k: asked.append(replicas) or "fp")
    seen: list[dict[str, str]] = []
    _real_children(monkeypatch, seen)
    report = rep.reproduce("smoke", only=TABLES34, parallel=2, gpus_per_run=2,
                           log_model_finetune=False, progress=lambda m: None)
    assert report.ok and len(report.ran) == 9 and len(seen) == 9
    assert {s["CUDA_VISIBLE_DEVICES"] for s in seen} == {"3,4", "5,6"}
    assert {s["TF_FORCE_GPU_ALLOW_GROWTH"] for s in seen} == {"true"}
    logs = sorted((isolated_environment / rep.LOG_DIR).glob("*.log"))
    assert {log.read_text().splitlines()[0] for log in logs} == {"('3,4', 'true')",
                                                                  "('5,6', 'true')"}
    assert set(asked) <= {2}  # done runs are looked up under the 2-replica fingerprint


def test_gpus_per_run_with_one_run_at_a_time_still_isolates_it(
        isolated_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _prepare(isolated_environment)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    seen: list[dict[str, str]] = []
    _real_children(monkeypatch, seen)
    report = rep.reproduce("smoke", only=["table3"], parallel=1, gpus_per_run=1,
                           log_model_finetune=False, progress=lambda m: None)
    assert report.ok and seen and {s["CUDA_VISIBLE_DEVICES"] for s in seen} == {"1"}


def test_without_gpus_per_run_the_workers_see_every_gpu(isolated_environment: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from rssc_mlflow import commands

    _prepare(isolated_environment)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    monkeypatch.setattr(commands, "fingerprint_for", lambda *a, **k: "fp")
    seen: list[dict[str, str]] = []
    _real_children(monkeypatch, seen)
    report = rep.reproduce("smoke", only=TABLES34, parallel=2, log_model_finetune=False,
                           progress=lambda m: None)
    assert report.ok and {s["CUDA_VISIBLE_DEVICES"] for s in seen} == {"0,1"}
    assert {s["TF_FORCE_GPU_ALLOW_GROWTH"] for s in seen} == {""}


def test_too_few_gpus_is_refused_before_any_run(isolated_environment: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing prepared: the GPUs are checked before the prerequisites.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(RsscError, match=r"needs 4 GPUs, but only 3 are available.*"
                                        r"Received: parallel=2, gpus_per_run=2"):
        rep.reproduce("smoke", only=TABLES34, parallel=2, gpus_per_run=2,
                      progress=lambda m: None)
    with pytest.raises(RsscError, match=r"Received: -1"):
        rep.reproduce("smoke", only=TABLES34, gpus_per_run=-1, progress=lambda m: None)


def _costing(stage: str, key: str, cost: int) -> rep.PlannedRun:
    """A planned run whose `workers.cost` is `cost`."""
    from rssc_mlflow.results.reproduce import workers

    source, target = (key, "") if stage in ("pretrain", "adapt") else ("aid", key)
    return rep.PlannedRun(stage, source, target, 42, 0 if not target else 1, [], [], 0, 0, 8,
                          cost - workers.RUN_OVERHEAD_STEPS, 0.0, True, False)


def _loads(queues: list[list[rep.PlannedRun]]) -> list[int]:
    from rssc_mlflow.results.reproduce import workers

    return [sum(workers.cost(r) for r in q) for q in queues]


def test_workers_balance_cost_not_run_counts() -> None:
    """One long run and four cheap pairs: by run counts the long run lands on a loaded worker
    (1,600 against 600); by cost it runs alone against the pairs (1,000 against 1,200, the
    best split, found by trying all 2^5)."""
    import itertools

    wave = [_costing(stage, key, 150) for key in "abcd" for stage in ("pretrain", "adapt")]
    wave.append(_costing("pretrain", "imagenet100", 1000))
    queues = rep._Workers("demo", 2, False).assign(wave)
    groups = [1000, 300, 300, 300, 300]
    best = min(max(sum(g for g, side in zip(groups, sides) if side),
                   sum(g for g, side in zip(groups, sides) if not side))
               for sides in itertools.product((0, 1), repeat=len(groups)))
    assert max(_loads(queues)) == best == 1200
    assert sorted(_loads(queues)) == [1000, 1200]
    for key in "abcd":  # a dataset's runs share one worker (one traced model) and keep order
        (queue,) = [q for q in queues if any(r.source == key for r in q)]
        assert [r.stage for r in queue if r.source == key] == ["pretrain", "adapt"]


def test_a_group_costlier_than_a_fair_share_is_split() -> None:
    """The demo's level 1: many fine-tunings of one target and cheap probes. One worker with
    every fine-tuning would leave the other idle; split, the loads differ by less than a run."""
    finetunes = [_costing("finetune", "ucm", 500) for _ in range(16)]
    probes = [_costing("probe", "ucm", 200) for _ in range(14)]
    queues = rep._Workers("demo", 2, False).assign(finetunes + probes)
    assert sorted(map(id, (r for q in queues for r in q))) == sorted(map(id, finetunes + probes))
    assert all(any(r.stage == "finetune" for r in q) for q in queues)
    assert abs(_loads(queues)[0] - _loads(queues)[1]) < 500
    for q in queues:  # each worker's fine-tunings stay together, in the plan's order
        order = [i for r in q for i, f in enumerate(finetunes) if f is r]
        assert order == list(range(order[0], order[0] + len(order)))


def _threads_as_workers(monkeypatch: pytest.MonkeyPatch, run) -> rep._Workers:
    """Workers whose two "processes" are threads and whose runs call `run(label, worker)`:
    the scheduling of `run_wave` without TensorFlow."""
    import concurrent.futures

    from rssc_mlflow.results.reproduce import workers as module

    def fake(stage, source, target, *_):
        label = f"{stage} {source} {target}".strip()
        return run(label, threading.current_thread().name)

    monkeypatch.setattr(module, "_worker_run", fake)
    workers = rep._Workers("demo", 2, False)
    workers._executors = [concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"w{i}")
                          for i in (1, 2)]
    return workers


def test_an_idle_worker_takes_over_queued_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Costs are estimates. Worker 1 is given a run estimated cheap that really waits for
    its two queued runs to finish; worker 2 finishes its own run at once. It must take both
    over (last queued first): with static queues they would wait behind the blocker, which
    gives up after 20 s."""
    both_done = threading.Event()
    done, ran_on = [], {}

    def run(label, worker):
        ran_on[label] = worker[:2]
        if label == "pretrain blocker":
            blocked = not both_done.wait(20)
            return {"status": "failed" if blocked else "ran", "reason": "blocked",
                    "run_id": "r", "metrics": {}, "seconds": 0.0}
        done.append(label)
        if {"pretrain x", "pretrain y"} <= set(done):
            both_done.set()
        return {"status": "ran", "run_id": "r", "metrics": {}, "seconds": 0.0}

    workers = _threads_as_workers(monkeypatch, run)
    wave = [_costing("pretrain", "blocker", 300), _costing("pretrain", "x", 300),
            _costing("pretrain", "y", 300), _costing("pretrain", "z", 900)]
    queues = workers.assign(wave)
    assert [[r.source for r in q] for q in queues] == [["z"], ["blocker", "x", "y"]]
    said = []
    workers.run_wave(wave, lambda r, text: said.append((r.source, text)))
    for e in workers._executors:
        e.shutdown()
    assert ran_on == {"pretrain z": "w1", "pretrain blocker": "w2", "pretrain y": "w1",
                      "pretrain x": "w1"}
    assert done == ["pretrain z", "pretrain y", "pretrain x"]
    assert all(r.status == "ran" for r in wave), said


def test_a_dead_workers_queued_runs_fail_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that dies (here: its pool breaks on the first run) fails the run it ran and
    the runs still queued on it, naming the worker and its log; the other's runs go on."""
    from concurrent.futures.process import BrokenProcessPool

    broke = threading.Event()

    def run(label, worker):
        if worker.startswith("w2"):
            broke.set()
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")
        broke.wait(20)  # worker 1 finishes after the death is seen: nothing left to take over
        time.sleep(0.3)
        return {"status": "ran", "run_id": "r", "metrics": {}, "seconds": 0.0}

    workers = _threads_as_workers(monkeypatch, run)
    workers.close = lambda: None  # the threads stand in for processes; nothing to restart
    wave = [_costing("pretrain", "a", 300), _costing("adapt", "a", 300),
            _costing("pretrain", "b", 900)]
    workers.run_wave(wave, lambda r, text: None)
    for e in workers._executors:
        e.shutdown()
    statuses = {(r.stage, r.source): (r.status, r.reason) for r in wave}
    assert statuses[("pretrain", "b")][0] == "ran"
    for key in (("pretrain", "a"), ("adapt", "a")):
        status, reason = statuses[key]
        assert status == "failed"
        assert re.search(r"worker 2 died.*worker-2\.log", reason), reason
    assert "BrokenProcessPool" in statuses[("pretrain", "a")][1]


def test_gpus_per_run_is_for_the_local_backend() -> None:
    with pytest.raises(RsscError, match=r"Received: backend=kubernetes.*nvidia.com/gpu"):
        rep.gpu_slots("kubernetes", 2, 1)
    assert rep.gpu_slots("local", 2, None) is None


@pytest.mark.slow  # two spawned workers import TensorFlow
def test_reuse_models_workers_start_with_their_gpus(isolated_environment: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcome, "LOG_DIR", isolated_environment / "logs")
    workers = rep._Workers("smoke", 2, False, ["0,1", "2,3"])
    assert workers.initargs(1)[2] == {"CUDA_VISIBLE_DEVICES": "2,3",
                                      "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert rep._Workers("smoke", 2, False).initargs(0)[2] == {}  # today's behaviour
    workers._start()
    try:  # real spawned workers: the environment their runs see
        got = [ex.submit(os.getenv, "CUDA_VISIBLE_DEVICES").result(timeout=300)
               for ex in workers._executors]
    finally:
        workers.close()
    assert got == ["0,1", "2,3"]


@pytest.mark.slow  # two spawned workers import TensorFlow
def test_cpu_workers_split_the_cores_between_them(isolated_environment: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from rssc_mlflow.training import speed

    monkeypatch.setattr(outcome, "LOG_DIR", isolated_environment / "logs")
    monkeypatch.setattr(speed, "_usable_cores", lambda: 4)
    for var in (*speed.TF_THREAD_ENVS, speed.SPEED_ENV):
        monkeypatch.delenv(var, raising=False)
    assert rep._Workers("smoke", 2, False, ["0", "1"]).initargs(0)[3] is None  # GPU workers
    workers = rep._Workers("smoke", 2, False)
    assert [workers.initargs(i)[3] for i in range(2)] == [2, 2]
    workers._start()
    try:  # what TensorFlow in each real worker was told
        got = [ex.submit(speed.cpu_threads).result(timeout=300) for ex in workers._executors]
    finally:
        workers.close()
    assert got == [(2, 2), (2, 2)]


def _state(pid: int) -> str:
    """A process's state letter ('Z': ended, not reaped), or '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_end_with_reproduce_and_mark_their_run_killed(
        isolated_environment: Path) -> None:
    """A real `reproduce --reuse-models` killed by SIGKILL while a worker trains: the workers
    do not go on training their queue for nobody; the open run is marked KILLED."""
    root = isolated_environment
    _prepare(root)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    client.search_experiments()
    argv = [sys.executable, "-m", "rssc_mlflow.cli", "reproduce", "--profile", "smoke",
            "--only", "table3", "--no-log-model-finetune", "--parallel", "2", "--reuse-models"]
    parent = subprocess.Popen(argv, cwd=root, stdout=subprocess.DEVNULL,
                              stderr=(root / "parent.log").open("w"),
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    deadline = time.monotonic() + 300
    try:
        running: list = []
        while not running and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            running = _training(client)
        children = [int(pid) for task in Path(f"/proc/{parent.pid}/task").iterdir()
                    for pid in (task / "children").read_text().split()]
        # Before the kill: a worker that has ended (a zombie) has an empty cmdline.
        workers = [pid for pid in children
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert running, (root / "parent.log").read_text()[-3000:]
    assert workers, children
    deadline = time.monotonic() + 90  # SIGTERM, mark the run KILLED, exit: seconds
    while time.monotonic() < deadline and any(_state(p) not in ("", "Z") for p in workers):
        time.sleep(0.2)
    assert all(_state(p) in ("", "Z") for p in workers), "workers outlived reproduce"
    statuses = {r.info.run_id: r.info.status
                for r in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    assert statuses[running[0].info.run_id] == "KILLED"  # not trained on to FINISHED
    assert "RUNNING" not in statuses.values()
    assert len(statuses) <= 3  # nothing queued started after the kill (table3: 3 pretrains)


# --- Done when: killed half-way, resumed, nothing redone -------------------------------------


def _finished(client: MlflowClient) -> list:
    return [r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="attributes.status = 'FINISHED'") if tags.TAG_STAGE in r.data.tags]


def _training(client: MlflowClient) -> list:
    """RUNNING training runs whose checkpoint folder exists (so a re-run can continue them)."""
    return [r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="attributes.status = 'RUNNING'")
        if Path(r.data.tags.get(tags.TAG_CHECKPOINT_DIR, "/nonexistent")).is_dir()]


def _cell(run) -> tuple[str, str, str, str]:
    t = run.data.tags
    return (t[tags.TAG_STAGE], t[tags.TAG_SOURCE], t[tags.TAG_TARGET], t[tags.TAG_SEED])


@pytest.mark.slow
def test_reproduce_killed_and_resumed(isolated_environment: Path) -> None:
    root = isolated_environment
    _prepare(root)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    client.search_experiments()  # create the store before two processes race to migrate it
    argv = [sys.executable, "-m", "rssc_mlflow.cli", "reproduce", "--profile", "smoke",
            "--only", "table3", "--no-log-model-finetune"]  # 3 pretrains, 3 probes
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = subprocess.Popen([*argv, "--json", str(root / "first.json")], env=env, cwd=root,
                             stdout=subprocess.PIPE, text=True,
                             stderr=(root / "first.log").open("w"))
    # Killed when the third pretrain announces itself: an event in a pipe, which cannot be
    # missed. Runs go one at a time, so two are FINISHED, and the third is open with its
    # checkpoint folder made and locked (the announcement comes after both).
    opened: list[str] = []
    try:
        for line in first.stdout:
            found = re.match(r"\[rssc\] .*: \d+ training images, .*run (\w+)$", line.strip())
            if found:
                opened.append(found.group(1))
            if len(opened) == 3:
                break
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert len(opened) == 3, (root / "first.log").read_text()[-3000:]
    before = {r.info.run_id: _cell(r) for r in _finished(client)}
    assert len(before) == 2 and set(before) == set(opened[:2])
    (interrupted,) = [r.info.run_id for r in _training(client)]
    assert interrupted == opened[2]

    # The re-run goes through two pooled worker processes (what `rssc demo` uses).
    second = subprocess.run([*argv, "--parallel", "2", "--reuse-models",
                             "--json", str(root / "second.json")], env=env, cwd=root,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads((root / "second.json").read_text())

    finished = _finished(client)
    # The interrupted pretrain was continued in the same MLflow run, not started anew.
    assert interrupted in {r.info.run_id for r in finished}
    assert "continues interrupted run " + interrupted in second.stderr
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in everything].count("RUNNING") == 0
    cells = [_cell(r) for r in finished]
    planned = [(p["stage"], p["source"], p["target"], str(p["seed"])) for p in report["planned"]]
    assert len(planned) == 6 and sorted(cells) == sorted(planned)  # one FINISHED run each
    for run_id, cell in before.items():  # nothing finished before the kill was redone
        assert [r.info.run_id for r in finished if _cell(r) == cell] == [run_id]
    skipped = {p["run_id"] for p in report["planned"] if p["status"] == "done"}
    assert set(before) <= skipped
    assert len(report["ran"]) == 6 - len(skipped)

    third = rep.reproduce("smoke", only=["table3"], plan_only=True, progress=lambda m: None)
    assert [r.status for r in third.planned] == ["done"] * 6
    assert {r.run_id for r in third.planned} == {r.info.run_id for r in finished}
    assert third.todo_gpu_hours == 0


def test_expected_replicas_without_tensorflow_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert rep.expected_replicas("local", ["0,1", "2,3"]) == 2
    assert rep.expected_replicas("local", ["", ""]) == 1  # --gpus-per-run 0: CPU runs
    assert rep.expected_replicas("kubernetes", None) == 1
    # A CPU build of TensorFlow on a GPU server trains on one replica: look its runs up so.
    monkeypatch.setattr(runner, "_tensorflow_uses_gpus", lambda: False)
    assert rep.expected_replicas("local", None) == 1
    monkeypatch.setattr(runner, "_tensorflow_uses_gpus", lambda: True)
    assert rep.expected_replicas("local", None) == 4
