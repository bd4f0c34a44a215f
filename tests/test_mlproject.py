"""The MLproject files and their one shim, `python -m rssc_mlflow.cli mlproject STAGE`.

Commands are filled in by MLflow's own project loader (declared defaults, and undeclared
parameters appended as `--key value`), then parsed by the rssc command they reach, without
running it.
"""

from __future__ import annotations

import shlex
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.projects import _project_spec

from rssc_mlflow import cli, protocol
from rssc_mlflow.results import reproduce
from rssc_mlflow.settings import SOURCE_STAGES

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = [ROOT, ROOT / "kubernetes"]
SHIM = ["python", "-m", "rssc_mlflow.cli", "mlproject"]
REQUIRED = {"source": "mlrsnet_sl", "target": "ucm"}  # the declared parameters without default
MLFLOW_TYPES = ("string", "float", "path", "uri")  # the MLproject spec's types


def _entry_points(project: Path) -> dict[str, dict]:
    return yaml.safe_load((project / "MLproject").read_text())["entry_points"]


ENTRY_POINTS = [(project, name) for project in PROJECTS for name in _entry_points(project)]
IDS = [f"{'root' if p == ROOT else p.name}:{n}" for p, n in ENTRY_POINTS]


def _parse(project: Path, stage: str, params: dict[str, str]):
    """What `mlflow run PROJECT -e STAGE -P k=v ...` runs, parsed by `rssc STAGE` (not run)."""
    entry = _project_spec.load_project(str(project)).get_entry_point(stage)
    argv = shlex.split(entry.compute_command(params, storage_dir=None))
    assert argv[:5] == [*SHIM, stage]
    args = cli.mlproject_argv(stage, argv[5:])
    return cli.stage_command(stage).make_context(stage, args)


def test_both_projects_have_the_same_entry_points_with_the_same_defaults():
    root, kube = _entry_points(ROOT), _entry_points(ROOT / "kubernetes")
    assert set(root) == {"pretrain", "adapt", "finetune", "extract", "probe", "summarize",
                         "transfer"}
    assert set(kube) <= set(root)
    for name, spec in kube.items():  # what the cluster declares, the root declares alike
        assert spec["parameters"].items() <= root[name]["parameters"].items()


@pytest.mark.parametrize(("project", "stage"), ENTRY_POINTS, ids=IDS)
def test_every_command_is_the_shim_with_every_declared_parameter(project, stage):
    spec = _entry_points(project)[stage]
    declared = spec.get("parameters") or {}
    argv = shlex.split(spec["command"])
    assert argv[:5] == [*SHIM, stage]
    used = [f for _, f, _, _ in string.Formatter().parse(spec["command"]) if f]
    assert sorted(used) == sorted(declared)  # each declared parameter once, nothing undeclared
    assert " ".join(argv[5:]) == " ".join(f"--{k.replace('_', '-')} {{{k}}}" for k in declared)
    for name, value in declared.items():
        if isinstance(value, str):
            assert value in MLFLOW_TYPES and name in REQUIRED
            continue
        assert value["type"] in MLFLOW_TYPES and "default" in value
        # A YAML boolean would be logged as "True"/"False", not the run's own "true"/"false".
        assert not isinstance(value["default"], bool), name


@pytest.mark.parametrize(("project", "stage"), ENTRY_POINTS, ids=IDS)
def test_declared_defaults_are_the_commands_own(project, stage):
    declared = _entry_points(project)[stage].get("parameters") or {}
    given = {k: v for k, v in REQUIRED.items() if k in declared}
    ctx = _parse(project, stage, given)
    params = {p.name: p for p in cli.stage_command(stage).params}
    for name in set(declared) - set(given):
        assert ctx.params[name] == params[name].default, name
    assert {k: str(ctx.params[k]) for k in given} == given
    if "seed" in declared:
        assert ctx.params["seed"] == protocol.SEED == 42 and ctx.params["profile"] == "paper"


@pytest.mark.parametrize(("project", "stage"), [e for e in ENTRY_POINTS if e[0] == ROOT],
                         ids=[i for i, e in zip(IDS, ENTRY_POINTS) if e[0] == ROOT])
def test_every_option_of_the_rssc_command_is_a_parameter(project, stage):
    """`-P name=value` reaches `rssc STAGE --name value` for each of its options (declared or
    not), and a flag takes true and false."""
    declared = _entry_points(project)[stage].get("parameters") or {}
    base = {k: v for k, v in REQUIRED.items() if k in declared}
    options = [p for p in cli.stage_command(stage).params
               if p.param_type_name == "option" and p.name not in REQUIRED and not p.hidden]
    assert options
    for param in options:
        name = param.opts[0].removeprefix("--").replace("-", "_")  # as a user spells it
        if param.is_flag:
            for value, expected in (("true", True), ("false", False), ("True", True)):
                ctx = _parse(project, stage, {**base, name: value})
                assert ctx.params[param.name] is expected, (name, value)
            continue
        ctx = _parse(project, stage, {**base, name: "3"})  # no option's default; int, float, str
        assert ctx.params[param.name] != param.default, name
        assert str(ctx.params[param.name]) in ("3", "3.0"), name


def test_kubernetes_parameters_of_reproduce_reach_the_command():
    """`rssc reproduce --backend kubernetes` passes these to mlflow.projects.run."""
    backend = reproduce._Kubernetes("smoke", 1, False, Path("unused.json"))
    kube = ROOT / "kubernetes"
    for stage in _entry_points(kube):
        target = "" if stage in SOURCE_STAGES else "ucm"
        run = reproduce.PlannedRun(stage, "mlrsnet_sl", target, 7, 0, [], [], 1, 1, 1, 1, 0.0,
                                   True, False)
        params = backend.parameters(run)
        assert set(params) <= set(_entry_points(kube)[stage]["parameters"])  # none appended
        ctx = _parse(kube, stage, params)
        assert (ctx.params["source"], ctx.params["seed"], ctx.params["profile"]) == \
            ("mlrsnet_sl", 7, "smoke")
        assert ctx.params.get("target") == (target or None)
        if stage == "finetune":
            assert ctx.params["log_model"] is False


def test_not_given_values_bad_flags_and_unknown_parameters():
    # "default" or "" leaves the option to the command (a declared parameter always has a value).
    assert cli.mlproject_argv("finetune", ["--lr", "default", "--epochs", "", "--seed", "3"]) == \
        ["--seed", "3"]
    assert cli.mlproject_argv("transfer", ["--plan", "true", "--target", "ucm"]) == ["ucm", "--plan"]
    with pytest.raises(SystemExit, match="standardize must be true or false, not 'yes'"):
        cli.mlproject_argv("probe", ["--standardize", "yes"])
    with pytest.raises(SystemExit, match="no rssc command 'nosuch'"):
        cli.mlproject_argv("nosuch", [])
    # An unknown parameter reaches rssc, which names it.
    assert cli.mlproject_argv("summarize", ["--batch_size", "8"]) == ["--batch-size", "8"]
    with pytest.raises(Exception, match="No such option: --batch-size"):
        cli.stage_command("summarize").make_context("summarize", ["--batch-size", "8"])


def test_the_module_runs_as_a_script():
    """The way MLflow runs it: rssc's own usage error for a bad value, before any training."""
    done = subprocess.run([sys.executable, "-m", "rssc_mlflow.cli", "mlproject", "finetune",
                           "--source", "scratch", "--lr", "fast"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "Invalid value for '--lr'" in done.stderr
    done = subprocess.run([sys.executable, "-m", "rssc_mlflow.cli", "mlproject"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1 and "usage: python -m rssc_mlflow.cli mlproject STAGE" in done.stderr
