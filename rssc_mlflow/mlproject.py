"""`python -m rssc_mlflow.mlproject STAGE --key value ...`: every MLproject entry point's command.

MLflow fills the declared parameters into the command and appends the others as `--key value`
(`-P batch_size=8` -> `--batch_size 8`). This turns those pairs into `rssc STAGE` options, read
off the command itself so that every option of `rssc STAGE --help` works as a parameter:
underscores become dashes, a flag's "true"/"false" becomes `--flag`/`--no-flag` (MLproject values
are strings), and a command's arguments come from their parameter (`-P target=X` ->
`rssc transfer X`).
"""

from __future__ import annotations

import sys

import typer

from rssc_mlflow.cli import app

# MLflow substitutes a value for every declared parameter, so a declared one cannot be left out:
# "default" (or an empty value) hands it back to the command's own default, e.g.
# `-P strategy=default`. MLflow offers no "not given" of its own, hence the sentinel.
NOT_GIVEN = ("default", "")


def command(stage: str):  # -> typer's own (vendored) click Command
    """The click command behind `rssc STAGE`."""
    found = typer.main.get_command(app).commands.get(stage)  # type: ignore[attr-defined]
    if found is None:
        raise SystemExit(f"error: no rssc command {stage!r} (MLproject entry point).")
    return found


def is_argument(param) -> bool:
    # By name, not class: typer >= 0.29 vendors click, so click.Argument is not its class.
    return getattr(param, "param_type_name", "") == "argument"


def to_argv(stage: str, pairs: list[str]) -> list[str]:
    """`--key value` pairs (MLflow's spelling) -> the argv of `rssc STAGE`."""
    params = {p.name: p for p in command(stage).params}
    arguments: dict[str, str] = {}
    options: list[str] = []
    it = iter(pairs)
    for key in it:
        value = next(it, "")
        name = key.removeprefix("--").replace("-", "_")
        if value in NOT_GIVEN:
            continue
        param = params.get(name)
        if is_argument(param):
            arguments[name] = value
        elif param is not None and getattr(param, "is_flag", False):
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"error: {name} must be true or false, not {value!r}.")
            flags = param.opts if value.lower() == "true" else param.secondary_opts
            options += flags[:1]  # a flag without a --no- form is false when left out
        else:  # unknown names go through too: rssc says what it accepts
            options += ["--" + name.replace("_", "-"), value]
    # Arguments first, in the command's order; a missing one is rssc's usage error.
    ordered = [arguments[p.name] for p in params.values()
               if is_argument(p) and p.name in arguments]
    return [*ordered, *options]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m rssc_mlflow.mlproject STAGE [--key value ...]")
    app([argv[0], *to_argv(argv[0], argv[1:])], prog_name="rssc")


if __name__ == "__main__":
    main()
