"""`rssc transfer` before any run: the plan and its cost, refusals, and the MLproject entry
point's wiring (its command line, parsed the way `mlflow run` fills it in)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rssc_mlflow.cli import app
from rssc_mlflow.errors import RsscError
from rssc_mlflow.results import transfer as tr

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_plan_of_an_unprepared_target_estimates_from_the_catalog(isolated_environment) -> None:
    runs, backbones, missing = tr.plan("rsscn7", "paper", seeds=[1, 2])
    assert backbones == []  # no weights, nothing registered
    assert [(r.stage, r.source, r.seed) for r in runs] == [("finetune", "scratch", 1),
                                                           ("finetune", "scratch", 2)]
    (scratch, _) = runs
    # 400 images per class, 20 % (80) to train, 320 to test; paper: 100 epochs, validated.
    assert (scratch.train_images, scratch.eval_images, scratch.exact) == (7 * 80, 7 * 320, False)
    assert scratch.image_steps == (7 * 80 + 7 * 320) * 100 + 7 * 320
    refs = [b.reference for b in missing]
    assert refs[0] == "imagenet" and "RSSC_IMAGENET_WEIGHTS" in missing[0].command
    assert "resisc45" in refs and "imagenet+aid" in refs and len(refs) == 12
    # MLRSNet sources never transfer to an MLRSNet view; the others are all listed.
    assert "mlrsnet_sl" not in [b.reference for b in tr.plan("mlrsnet_half", "paper")[2]]


def test_refusals_before_any_run(isolated_environment) -> None:
    with pytest.raises(RsscError, match=r"transfer cannot start: backbone\(s\) not available: "
                                        r"resisc45 \(no version of rssc-resnet50-resisc45 has "
                                        r"alias @smoke; make it with `rssc pretrain --source "
                                        r"resisc45 --profile smoke`\)\. Nothing was run\."):
        tr.transfer("rsscn7", "smoke", sources="resisc45", progress=lambda m: None)
    with pytest.raises(RsscError, match=r"transfer cannot start: dataset\(s\) not prepared: "
                                        r"rsscn7\. Prepare each with `rssc prepare KEY"):
        tr.transfer("rsscn7", "smoke", progress=lambda m: None)
    with pytest.raises(RsscError, match=r"'mlrsnet_sl' was trained on the images of "
                                        r"'mlrsnet_half'"):
        tr.transfer("mlrsnet_half", "smoke", sources="mlrsnet_sl", progress=lambda m: None)
    with pytest.raises(RsscError, match=r"Unknown dataset 'nowhere'"):
        tr.transfer("nowhere", "smoke", progress=lambda m: None)
    with pytest.raises(RsscError, match=r"Unknown profile 'fast'"):
        tr.transfer("rsscn7", "fast", progress=lambda m: None)
    result = runner.invoke(app, ["transfer", "rsscn7", "--sources", "aid", "--profile", "smoke"])
    assert result.exit_code == 1 and "rssc pretrain --source aid --profile smoke" in result.stderr


def test_the_mlproject_entry_point_runs_the_cli(isolated_environment, capsys) -> None:
    spec = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["transfer"]
    values = {k: (v["default"] if isinstance(v, dict) else None)
              for k, v in spec["parameters"].items()}
    given = dict(target="rsscn7", plan="true", profile="smoke", seeds="42,43")
    values.update({k: v for k, v in given.items() if k in values})
    # MLflow appends the parameters an entry point does not declare as `--key value`.
    extras = [f"--{k} {v}" for k, v in given.items() if k not in values]
    argv = shlex.split(" ".join([spec["command"].format(**values), *extras]))
    assert argv[:5] == ["python", "-m", "rssc_mlflow.cli", "mlproject", "transfer"]
    with pytest.raises(SystemExit) as done:
        app(argv[3:], prog_name="rssc")
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "Transfer to rsscn7: 2 runs (profile smoke; seeds 42,43)" in out
    assert "finetune scratch" in out and "missing backbones (12, not run):" in out


def test_registered_backbones_reads_every_page(isolated_environment, monkeypatch) -> None:
    import mlflow
    from mlflow.tracking._model_registry import fluent as registry_fluent

    from rssc_mlflow.tracking import registry

    # One model a page: the fluent search must follow the tokens past the first page.
    monkeypatch.setattr(registry_fluent, "SEARCH_REGISTERED_MODEL_MAX_RESULTS_DEFAULT", 1,
                        raising=True)
    client = mlflow.MlflowClient()
    model_dir = isolated_environment / "model"
    model_dir.mkdir()
    for key, alias in [("aid", "paper"), ("ucm", "paper"), ("resisc45", "smoke")]:
        name = f"rssc-resnet50-{key}"
        client.create_registered_model(name)
        version = client.create_model_version(name, str(model_dir),
                                              tags={registry.MV_SOURCE: key})
        client.set_registered_model_alias(name, alias, version.version)
    client.create_registered_model("other-model")  # outside the name filter
    found = {(b.reference, b.model_name, b.trained_on) for b in tr.registered_backbones("paper")}
    assert found == {("aid", "rssc-resnet50-aid", "aid"), ("ucm", "rssc-resnet50-ucm", "ucm")}
