"""MLflow plugin: `mlflow run` of this project records into the experiment `rssc` by default.

`mlflow run` creates the run itself, before the entry point starts, in `--experiment-name`,
`--experiment-id`, `MLFLOW_EXPERIMENT_NAME`/`_ID`, or else what MLflow's default-experiment
providers say, which is "Default". This provider (entry point group
`mlflow.default_experiment_provider` in pyproject.toml) answers only inside the `mlflow run`
command of a project whose MLproject is named `rssc-mlflow*`, with the experiment that every
other rssc command and `rssc summarize` use (`runs.experiment_name()`). An explicit
experiment still wins: MLflow asks providers only when none was given.

MLflow imports this module whenever it starts, so it imports nothing heavy at module level.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_NAME_PREFIX = "rssc-mlflow"


def _project_dir(uri: str) -> Path | None:
    """The local folder of an `mlflow run` project URI (`path`, `path#subdir`, `file://path`)."""
    uri, _, subdir = str(uri).partition("#")
    uri = uri.removeprefix("file://")
    folder = Path(uri).expanduser() / subdir
    return folder if (folder / "MLproject").is_file() else None


def _is_rssc_project(folder: Path) -> bool:
    for line in (folder / "MLproject").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "name":
            return value.strip().strip("'\"").startswith(PROJECT_NAME_PREFIX)
    return False


class ProjectExperimentProvider:
    """`mlflow run <rssc project>` without an experiment -> the experiment `rssc`."""

    def in_context(self) -> bool:
        import click

        ctx = click.get_current_context(silent=True)
        if ctx is None or ctx.command.name != "run" or \
                getattr(ctx.command.callback, "__module__", "") != "mlflow.cli":
            return False
        folder = _project_dir(ctx.params.get("uri") or "")
        return folder is not None and _is_rssc_project(folder)

    def get_experiment_id(self) -> str:
        from rssc_mlflow.tracking import runs

        return runs.experiment_id()
