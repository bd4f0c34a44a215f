"""`summarize` against a real (temporary sqlite) tracking store with hand-made runs: no training.

Creating a migrated sqlite store costs ~10 s on a busy 2-core machine, so one empty store is made
per session and copied to each test's tmp_path (a file copy takes milliseconds).
"""

from __future__ import annotations

import csv
import itertools
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils
from PIL import Image
from scipy import stats

from rssc_mlflow import protocol
from rssc_mlflow.errors import RsscError
from rssc_mlflow.results import paper
from rssc_mlflow.results import summarize as summarize_mod
from rssc_mlflow.results.summarize import BANNER, SummaryResult, summarize
from rssc_mlflow.tracking import runs as tags
from rssc_mlflow.tracking.predictions import TAG_PREDICTIONS, Predictions, make, save

_clock = itertools.count(1_700_000_000_000, 1000)  # distinct, increasing start times (ms)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the tables
    return path


@pytest.fixture
def client(empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    db = tmp_path / "mlflow.db"
    shutil.copy(empty_store, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    # Another test may have set the URI in-process; the environment must win here.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    return MlflowClient(uri)


def _experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def make_run(client: MlflowClient, stage: str, source: str, target: str = "", *,
             metrics: dict[str, float], fingerprint: str = "fp-a", synthetic: bool = False,
             seed: str = "42", status: str = "FINISHED", experiment: str = "rssc",
             params: dict[str, str] | None = None, pooled: str = "") -> str:
    """A run as commands.py leaves it: tags, final metrics, a final status (`pooled`: its
    fingerprint without precision and replicas, "" for a run logged before it was)."""
    run = client.create_run(
        _experiment_id(client, experiment), start_time=next(_clock),
        run_name=f"{stage} {source}",
        tags={tags.TAG_STAGE: stage, tags.TAG_SOURCE: source, tags.TAG_TARGET: target,
              tags.TAG_FINGERPRINT: fingerprint, tags.TAG_SYNTHETIC: str(synthetic).lower(),
              tags.TAG_SEED: seed, tags.TAG_PROFILE: "paper"},
    )
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in (params or {}).items()],
                     tags=[RunTag(tags.TAG_FINGERPRINT_POOLED, pooled)] if pooled else [])
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def run_summary(tmp_path: Path, **kwargs) -> SummaryResult:
    return summarize(experiment=kwargs.pop("experiment", "rssc"), out=tmp_path / "out", **kwargs)


def test_value_lands_in_its_cell_only(client: MlflowClient, tmp_path: Path) -> None:
    # The ordinary fluent API, exactly like commands.py.
    mlflow.set_experiment("rssc")
    with mlflow.start_run(run_name="probe resisc45 -> ucm"):
        mlflow.set_tags({tags.TAG_STAGE: "probe", tags.TAG_SOURCE: "resisc45",
                         tags.TAG_TARGET: "ucm", tags.TAG_FINGERPRINT: "fp-a",
                         tags.TAG_SYNTHETIC: "false", tags.TAG_SEED: "42"})
        mlflow.log_metrics({"test_accuracy": 0.9})
    make_run(client, "probe", "mlrsnet_ucm_same", "ucm", metrics={"test_accuracy": 0.93})
    make_run(client, "pretrain", "aid", metrics={"test_accuracy": 0.95})

    result = run_summary(tmp_path)

    fig1 = paper.get_layout("figure1")
    assert (fig1.rows[4].key, fig1.cols[6].key) == ("resisc45", "ucm")  # row 5, column 7
    cell = result.tables["figure1"].cell("resisc45", "ucm")
    assert cell.text == "90.00" and cell.n == 1
    filled = [(k, rc) for k, t in result.tables.items() for rc, c in t.cells.items()
              if c.status == "value"]
    assert sorted(filled) == sorted([("figure1", ("resisc45", "ucm")),
                                     ("table3", ("mlrsnet_ucm_same", "ucm")),
                                     ("table2", ("aid", "pretrain"))])
    same = result.tables["table3"].cell("mlrsnet_ucm_same", "ucm")
    assert same.text == "93.00" and same.paper == 91.79
    assert same.diff == pytest.approx(93.0 - 91.79)
    assert same.diff_text == "+1.21"
    scratch = result.tables["table2"].cell("aid", "pretrain")
    assert scratch.text == "95.00" and scratch.diff_text == "+1.10"
    assert result.tables["table2"].cell("aid", "adapt").status == "missing"
    assert "rssc probe --source resisc45 --target ucm" not in result.missing
    assert not result.synthetic and BANNER not in result.console
    assert "90.00" in (tmp_path / "out" / "figure1.md").read_text()


def test_fingerprints_are_never_mixed(client: MlflowClient, tmp_path: Path) -> None:
    make_run(client, "finetune", "imagenet", "aid", metrics={"test_accuracy": 0.80},
             fingerprint="fp-old-aaaaaaaa")
    make_run(client, "finetune", "imagenet", "aid", metrics={"test_accuracy": 0.90},
             fingerprint="fp-new-bbbbbbbb", seed="1")
    make_run(client, "finetune", "imagenet", "aid", metrics={"test_accuracy": 0.92},
             fingerprint="fp-new-bbbbbbbb", seed="2")
    # One run each in another cell: a tie, so the most recent run's group is shown.
    make_run(client, "finetune", "imagenet", "ucm", metrics={"test_accuracy": 0.70},
             fingerprint="fp-x")
    make_run(client, "finetune", "imagenet", "ucm", metrics={"test_accuracy": 0.60},
             fingerprint="fp-y")

    result = run_summary(tmp_path)
    table = result.tables["figure2"]
    cell = table.cell("imagenet", "aid")
    assert cell.values == pytest.approx([90.0, 92.0])  # the larger group only, never 80
    assert cell.shown.fingerprint == "fp-new-bbbbbbbb"
    assert [(v.fingerprint, v.n) for v in cell.others] == [("fp-old-aaaaaaaa", 1)]
    note = table.footnote_texts[table.footnotes[("imagenet", "aid")] - 1]
    assert "fp-old-aaaaa" in note and "n=1" in note
    assert "fp-old-aaaaa" in (tmp_path / "out" / "figure2.md").read_text()
    tie = table.cell("imagenet", "ucm")
    assert tie.values == pytest.approx([60.0]) and tie.shown.fingerprint == "fp-y"


def test_real_data_preferred_and_synthetic_never_mixed(client: MlflowClient,
                                                       tmp_path: Path) -> None:
    make_run(client, "probe", "imagenet", "aid", metrics={"test_accuracy": 0.70})
    for seed in "123":
        make_run(client, "probe", "imagenet", "aid", metrics={"test_accuracy": 0.95},
                 synthetic=True, seed=seed)

    result = run_summary(tmp_path)
    cell = result.tables["figure1"].cell("imagenet", "aid")
    assert cell.values == pytest.approx([70.0]) and not cell.synthetic
    assert [(v.synthetic, v.n) for v in cell.others] == [(True, 3)]
    # Synthetic runs exist in the store: every output carries the banner.
    assert result.synthetic
    assert result.console.startswith(BANNER)
    out = tmp_path / "out"
    for name in ("figure1.md", "table2.md", "summary.md", "summary.txt", "figure1.tex",
                 "summary.html"):
        assert BANNER in (out / name).read_text(), name
    # Plain CSVs: one header line, loaded by pandas with no arguments; the banner is a column.
    for path in sorted(out.glob("*.csv")):
        frame = pd.read_csv(path)
        assert "synthetic" in frame.columns and BANNER not in path.read_text(), path.name
    fig1 = pd.read_csv(out / "figure1.csv")
    shown = fig1[(fig1["row"] == "imagenet") & (fig1["column"] == "aid")].iloc[0]
    assert shown["reproduced"] == pytest.approx(70.0) and not shown["synthetic"]
    assert pd.read_csv(out / "table3.csv")["status"].eq("missing").all()
    # Figures carry a title, with the synthetic mark (also in the PNG's Title text).
    with Image.open(out / "figure1.png") as img:
        assert img.text["Title"] == "SYNTHETIC DATA - Figure 1: reproduced values (%)"
        assert img.text["Description"].startswith("Figure 1: Classification accuracies")
    # The Findings section carries the banner too.
    assert "These Findings are computed on synthetic stand-in data" in result.console
    findings_md = (out / "findings.md").read_text()
    assert BANNER in findings_md and BANNER in (out / "findings.html").read_text()


def test_several_seeds_mean_std_n(client: MlflowClient, tmp_path: Path) -> None:
    accs = [0.91, 0.935, 0.902]
    for seed, acc in enumerate(accs):
        make_run(client, "adapt", "resisc45", metrics={"test_accuracy": acc}, seed=str(seed))

    cell = run_summary(tmp_path).tables["table2"].cell("resisc45", "adapt")
    pct = 100 * np.array(accs)
    assert cell.n == 3
    assert cell.mean == pytest.approx(pct.mean())
    assert cell.std == pytest.approx(pct.std(ddof=1))
    assert cell.text == f"{pct.mean():.2f} ± {pct.std(ddof=1):.2f} (n=3)"
    assert cell.diff == pytest.approx(pct.mean() - 97.03)


def test_rerun_of_a_seed_replaces_the_earlier_run(client: MlflowClient, tmp_path: Path) -> None:
    make_run(client, "probe", "aid", "ucm", metrics={"test_accuracy": 0.50}, seed="1")
    make_run(client, "probe", "aid", "ucm", metrics={"test_accuracy": 0.70}, seed="2")
    latest = make_run(client, "probe", "aid", "ucm", metrics={"test_accuracy": 0.60}, seed="1")

    cell = run_summary(tmp_path).tables["figure1"].cell("aid", "ucm")
    assert sorted(cell.values) == pytest.approx([60.0, 70.0])
    assert cell.n == 2 and latest in cell.run_ids


def test_failed_and_running_runs_are_ignored(client: MlflowClient, tmp_path: Path) -> None:
    make_run(client, "probe", "aid", "ucm", metrics={"test_accuracy": 0.10}, status="FAILED")
    make_run(client, "probe", "aid", "resisc45", metrics={"test_accuracy": 0.10},
             status="FAILED")
    make_run(client, "probe", "aid", "resisc45", metrics={"test_accuracy": 0.80}, seed="7")
    make_run(client, "probe", "aid", "patternnet", metrics={"test_accuracy": 0.3},
             status="RUNNING")

    result = run_summary(tmp_path)
    fig1 = result.tables["figure1"]
    assert fig1.cell("aid", "ucm").status == "missing"
    assert fig1.cell("aid", "patternnet").status == "missing"
    assert fig1.cell("aid", "resisc45").values == pytest.approx([80.0])
    assert "rssc probe --source aid --target ucm" in result.missing


def test_multilabel_metric_selection(client: MlflowClient, tmp_path: Path) -> None:
    ml = {"test_f1_micro": 0.81, "test_f1_macro": 0.72, "test_f1_weighted": 0.79,
          "test_f1_samples": 0.83, "test_map": 0.88}
    make_run(client, "probe", "imagenet", "mlrsnet_ml", metrics=ml)
    make_run(client, "pretrain", "mlrsnet_ml", metrics=ml)
    # A multi-label source with a single-label target is scored by accuracy.
    make_run(client, "probe", "mlrsnet_ml", "ucm", metrics={"test_accuracy": 0.97})

    default = run_summary(tmp_path)
    assert default.tables["figure1"].cell("imagenet", "mlrsnet_ml").text == "81.00"
    assert default.tables["table2"].cell("mlrsnet_ml", "pretrain").text == "81.00"
    assert default.tables["figure1"].cell("mlrsnet_ml", "ucm").text == "97.00"

    macro = summarize(experiment="rssc", out=tmp_path / "macro", multilabel_metric="f1_macro")
    cell = macro.tables["figure1"].cell("imagenet", "mlrsnet_ml")
    assert cell.text == "72.00" and cell.metric == "test_f1_macro"
    assert macro.tables["table2"].cell("mlrsnet_ml", "pretrain").diff == pytest.approx(
        72.0 - 91.83)
    assert macro.tables["figure1"].cell("mlrsnet_ml", "ucm").text == "97.00"
    assert summarize(experiment="rssc", out=tmp_path / "map",
                     multilabel_metric="map").tables["figure1"].cell(
        "imagenet", "mlrsnet_ml").text == "88.00"

    with pytest.raises(RsscError, match="f1_micro, f1_macro.*map"):
        summarize(experiment="rssc", out=tmp_path / "bad", multilabel_metric="accuracy")


def test_missing_cells_show_dash_and_command(client: MlflowClient, tmp_path: Path) -> None:
    result = run_summary(tmp_path)  # experiment "rssc" does not exist yet: all missing
    for cmd in ("rssc probe --source resisc45 --target ucm", "rssc pretrain --source aid",
                "rssc adapt --source aid", "rssc finetune --source imagenet+aid --target ucm",
                "rssc probe --source mlrsnet_ucm_same --target ucm",
                "rssc finetune --source scratch --target mlrsnet_ml"):
        assert cmd in result.missing, cmd
        markdown = "".join(p.read_text() for p in (tmp_path / "out").glob("*.md"))
        assert f"to fill: `{cmd}`" in markdown
    assert len(result.missing) == len(set(result.missing))
    # The console lists the first few per table and counts the rest (the files list all).
    table2 = result.console.split("Table II:")[1].split("Table III:")[0]
    assert table2.count("to fill: ") == summarize_mod.CONSOLE_MISSING
    assert "... and 7 more missing cells: summary.md lists the command for each" in table2
    cell = result.tables["figure1"].cell("resisc45", "ucm")
    assert cell.text == "-" and cell.command == "rssc probe --source resisc45 --target ucm"
    assert "to fill: `rssc adapt --source aid`" in (tmp_path / "out" / "table2.md").read_text()
    n_cells = sum(1 for lay in paper.LAYOUTS for s in lay.cells.values() if s is not None)
    assert len(result.missing) == n_cells


def test_na_cells(client: MlflowClient, tmp_path: Path) -> None:
    result = run_summary(tmp_path)
    fig1, fig2, fig3a = (result.tables[k] for k in ("figure1", "figure2", "figure3a"))
    for table, row, col in [(fig1, "resisc45", "resisc45"), (fig1, "mlrsnet_ml", "mlrsnet_sl"),
                            (fig1, "mlrsnet_sl", "mlrsnet_ml"), (fig1, "rsicb256", "rsicb256"),
                            (fig3a, "imagenet+aid", "aid"),
                            (fig3a, "imagenet+mlrsnet_sl", "mlrsnet_ml")]:
        cell = table.cell(row, col)
        assert cell.status == "n/a" and cell.text == "n/a" and cell.command is None
    assert not any("--source resisc45 --target resisc45" in c for c in result.missing)
    assert fig2.cell("scratch", "mlrsnet_ml").status == "missing"
    assert fig1.cell("imagenet", "ucm").status == "missing"
    assert sum(c.status == "n/a" for c in fig1.cells.values()) == 8


def test_every_output_exists_and_parses(client: MlflowClient, tmp_path: Path) -> None:
    make_run(client, "probe", "resisc45", "ucm", metrics={"test_accuracy": 0.9})
    for seed in "12":
        make_run(client, "finetune", "imagenet+aid", "ucm",
                 metrics={"test_accuracy": 0.9 + int(seed) / 100}, seed=seed)
    result = run_summary(tmp_path)
    out = tmp_path / "out"
    for layout in paper.LAYOUTS:
        for ext in ("md", "csv", "tex"):
            assert (out / f"{layout.key}.{ext}").is_file()
        with open(out / f"{layout.key}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == len(layout.rows) * len(layout.cols)
        assert "\\begin{tabular}" in (out / f"{layout.key}.tex").read_text()
        if layout.kind == "figure":
            with Image.open(out / f"{layout.key}.png") as img:
                img.verify()
                assert img.format == "PNG"
    with open(out / "figure1.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["row"] == "resisc45" and r["column"] == "ucm")
    assert row["reproduced"] == "90.0000" and row["status"] == "value"
    assert float(row["reproduced"]) == pytest.approx(90.0)
    tex = (out / "figure3b.tex").read_text()
    assert "$\\pm$" in tex and "n=2" in tex
    page = (out / "summary.html").read_text()
    assert page.count("<table>") == len(paper.LAYOUTS) + 1  # and the Findings table
    assert "href='findings.html'" in page and "id='findings'" in page
    assert page.count("data:image/png;base64,") == 4
    for layout in paper.LAYOUTS:
        assert layout.title in page
    assert "90.00" in page and BANNER not in page
    assert all(p.is_file() for p in result.files)
    assert (out / "findings.html").is_file() and (out / "findings.md").is_file()
    with Image.open(out / "figure2.png") as img:
        assert img.text["Title"] == "Figure 2: reproduced values (%)"  # real data: no mark


def test_summary_run_holds_the_artifacts(client: MlflowClient, tmp_path: Path) -> None:
    make_run(client, "probe", "resisc45", "ucm", metrics={"test_accuracy": 0.9})
    result = run_summary(tmp_path)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "summarize"
    assert run.data.tags[tags.TAG_STAGE] == "summarize"
    assert client.get_experiment(run.info.experiment_id).name == "rssc"
    logged = {a.path for a in client.list_artifacts(result.run_id)}
    assert logged == {p.name for p in (tmp_path / "out").iterdir()}
    assert {"summary.html", "table2.csv", "figure1.png", "figure3b.tex"} <= logged
    # The summarize run itself is never read back as a result.
    again = summarize(experiment="rssc", out=tmp_path / "again")
    assert again.tables["figure1"].cell("resisc45", "ucm").n == 1


def test_all_experiments_and_unknown_experiment(client: MlflowClient, tmp_path: Path) -> None:
    make_run(client, "probe", "aid", "ucm", metrics={"test_accuracy": 0.5}, experiment="one")
    make_run(client, "probe", "resisc45", "ucm", metrics={"test_accuracy": 0.6},
             experiment="two")
    both = summarize(experiment=None, out=tmp_path / "all")
    assert both.tables["figure1"].cell("aid", "ucm").text == "50.00"
    assert both.tables["figure1"].cell("resisc45", "ucm").text == "60.00"
    one = summarize(experiment="one", out=tmp_path / "one")
    assert one.tables["figure1"].cell("resisc45", "ucm").status == "missing"
    assert client.get_run(one.run_id).info.experiment_id == \
        client.get_experiment_by_name("one").experiment_id
    with pytest.raises(RsscError, match="No experiment named 'nope'"):
        summarize(experiment="nope", out=tmp_path / "nope")


# Creating runs through the client costs ~90-130 ms each on this 2-core machine (1,000 runs:
# 88-135 s), so the test uses 200; summarizing 1,000 runs was measured separately at ~5 s.
N_PERF_RUNS = 200


def test_many_runs_are_summarized_quickly(client: MlflowClient, tmp_path: Path) -> None:
    cells = [s for lay in paper.LAYOUTS for s in lay.cells.values() if s is not None]
    exp = _experiment_id(client, "rssc")
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    for i in range(N_PERF_RUNS):
        spec = cells[i % len(cells)]
        run = client.create_run(exp, start_time=now + i)
        metric = "test_f1_micro" if spec.multilabel else "test_accuracy"
        client.log_batch(run.info.run_id, metrics=[Metric(metric, 0.5 + (i % 7) / 100, now, 0)],
                         tags=[RunTag(tags.TAG_STAGE, spec.stage),
                               RunTag(tags.TAG_SOURCE, spec.source),
                               RunTag(tags.TAG_TARGET, spec.target),
                               RunTag(tags.TAG_FINGERPRINT, f"fp-{i % 2}"),
                               RunTag(tags.TAG_SYNTHETIC, "false"),
                               RunTag(tags.TAG_SEED, str(i))])
        client.set_terminated(run.info.run_id, "FINISHED")
    created = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = run_summary(tmp_path)
    elapsed = time.perf_counter() - t0
    # No wall-time threshold in a unit test (a busy CI runner is no measurement): the time is
    # printed, and benchmarks/summarize.py measures it.
    print(f"created {N_PERF_RUNS} runs in {created:.1f} s; summarized in {elapsed:.2f} s")
    assert not result.missing
    counted = sum(c.n + sum(v.n for v in c.others)
                  for t in result.tables.values() for c in t.cells.values())
    assert counted == N_PERF_RUNS


def test_inside_mlflow_run_logs_into_the_project_run(client: MlflowClient, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # `mlflow run . -e summarize` creates the run and passes it in MLFLOW_RUN_ID.
    project_run = client.create_run(_experiment_id(client, "rssc")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", project_run)
    result = run_summary(tmp_path)
    assert result.run_id == project_run
    run = client.get_run(project_run)
    assert run.data.tags[tags.TAG_STAGE] == "summarize"
    assert run.info.status == "RUNNING"  # `mlflow run` ends its own run
    assert "summary.html" in {a.path for a in client.list_artifacts(project_run)}


# --- Findings, from runs that carry real predictions artifacts -----------------------------------

UCM_FILES = [f"c{i % 21:02d}/img_{i:03d}.jpg" for i in range(210)]


def _ucm_predictions(correct: np.ndarray, *, split: str = "ucm-target-42") -> Predictions:
    """Predictions on the same 210 'UCM' test images, right exactly where `correct` is."""
    y = np.arange(210) % 21
    pred = np.where(correct, y, (y + 1) % 21)
    probs = np.full((210, 21), 0.01, np.float32)
    probs[np.arange(210), pred] = 0.8
    return make(probs, y, UCM_FILES, split_digest=split, dataset_digest="ucm-data")


def make_evaluated_run(client: MlflowClient, tmp_path: Path, stage: str, source: str,
                       target: str, pred: Predictions, *, seed: str = "42",
                       profile: str = "paper", logged: float | None = None) -> str:
    """A finished run as commands.py leaves it, with evaluation/predictions.npz."""
    accuracy = float((pred.probs.argmax(axis=1) == pred.y_true).mean())
    run_id = make_run(client, stage, source, target, seed=seed,
                      metrics={"test_accuracy": accuracy if logged is None else logged})
    folder = tmp_path / f"pred-{run_id}"
    folder.mkdir()
    save(pred, folder / "predictions.npz")
    client.log_artifact(run_id, str(folder / "predictions.npz"), "evaluation")
    client.set_tag(run_id, TAG_PREDICTIONS, "evaluation/predictions.npz")
    client.set_tag(run_id, tags.TAG_PROFILE, profile)
    return run_id


def _correct(n_right: int) -> np.ndarray:
    out = np.zeros(210, bool)
    out[:n_right] = True
    return out


def test_findings_are_checked_on_the_runs_per_image_predictions(client: MlflowClient,
                                                                tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.setitem(protocol.PROFILES, "cpu-quick", SimpleNamespace(quick=True))
    # Table III: same classes right on 30 more images than different classes, two seeds (and a
    # third seed only in one cell, which has no partner).
    for seed in ("1", "2"):
        make_evaluated_run(client, tmp_path, "probe", "mlrsnet_ucm_same", "ucm",
                           _ucm_predictions(_correct(150)), seed=seed)
        make_evaluated_run(client, tmp_path, "probe", "mlrsnet_ucm_other", "ucm",
                           _ucm_predictions(_correct(120)), seed=seed)
    make_evaluated_run(client, tmp_path, "probe", "mlrsnet_ucm_other", "ucm",
                       _ucm_predictions(_correct(120)), seed="3")
    # Table III, all classes vs same: wrong on 10 images same gets right, right on 7 it
    # misses (net -3 of 17 discordant): the interval spans 0.
    half = _correct(157)
    half[:10] = False
    for seed in ("1", "2"):
        make_evaluated_run(client, tmp_path, "probe", "mlrsnet_half", "ucm",
                           _ucm_predictions(half), seed=seed)
    # Table IV: same > different contradicted; all = same, identical predictions: consistent.
    make_evaluated_run(client, tmp_path, "finetune", "mlrsnet_ucm_same", "ucm",
                       _ucm_predictions(_correct(60)))
    make_evaluated_run(client, tmp_path, "finetune", "mlrsnet_ucm_other", "ucm",
                       _ucm_predictions(_correct(180)))
    make_evaluated_run(client, tmp_path, "finetune", "mlrsnet_half", "ucm",
                       _ucm_predictions(_correct(60)))
    # Table II: AID from metrics only (no artifacts); RESISC45's adapt cell by a quick profile.
    make_run(client, "pretrain", "aid", metrics={"test_accuracy": 0.90})
    make_run(client, "adapt", "aid", metrics={"test_accuracy": 0.95})
    make_evaluated_run(client, tmp_path, "pretrain", "resisc45", "",
                       _ucm_predictions(_correct(100)))
    make_evaluated_run(client, tmp_path, "adapt", "resisc45", "",
                       _ucm_predictions(_correct(200)), profile="cpu-quick")
    # Figure 1: an artifact that is not its run's evaluation; another on another split.
    make_evaluated_run(client, tmp_path, "probe", "imagenet", "ucm",
                       _ucm_predictions(_correct(100)), logged=0.99)
    make_evaluated_run(client, tmp_path, "probe", "resisc45", "ucm",
                       _ucm_predictions(_correct(110)))
    make_evaluated_run(client, tmp_path, "probe", "imagenet100", "ucm",
                       _ucm_predictions(_correct(100), split="ucm-target-other"))

    result = run_summary(tmp_path)
    by_cells = {(c.comparison.a.label, c.comparison.b.label): c
                for f in result.findings for c in f.comparisons}
    same_other = by_cells[("Table III: Same classes", "Table III: Different classes")]
    assert same_other.status == "holds"
    assert same_other.difference == pytest.approx(100 * 30 / 210)
    assert (same_other.pairs, same_other.images) == (2, 420)
    assert "1 run(s) without a partner" in same_other.note
    assert same_other.paper_difference == pytest.approx(91.79 - 89.46)
    # Discordant images only: each seed's A - B is (discordant drawn)/210, Binomial(210, 1/7).
    low = 100 * stats.binom.ppf(0.025, 2 * 210, 30 / 210) / 420
    assert same_other.low == pytest.approx(low, abs=100 / 210)
    half_same = by_cells[("Table III: All classes", "Table III: Same classes")]
    assert half_same.status == "inconclusive" and half_same.low < 0 < half_same.high
    t4 = {k[0]: c for k, c in by_cells.items() if k[0].startswith("Table IV")}
    assert t4["Table IV: Same classes"].status == "contradicted"
    assert t4["Table IV: All classes"].status == "consistent"
    assert (t4["Table IV: All classes"].low, t4["Table IV: All classes"].high) == (0.0, 0.0)
    aid = by_cells[("Table II: AID, Fine-tuning", "Table II: AID, Scratch")]
    assert aid.status == "no per-image predictions" and aid.low is None
    assert aid.difference == pytest.approx(5.0)  # the cells' difference is still shown
    quick = by_cells[("Table II: RESISC45, Fine-tuning", "Table II: RESISC45, Scratch")]
    assert quick.status == "quick profile" and "cpu-quick" in quick.note
    cell = result.tables["table2"].cell("resisc45", "adapt")
    assert cell.quick and cell.text == "95.24†"
    note = result.tables["table2"].footnote_texts[
        result.tables["table2"].footnotes[("resisc45", "adapt")] - 1]
    assert "quick profile cpu-quick" in note and "not counted in any finding" in note
    bad = by_cells[("Figure 1: RESISC45 -> UCM", "Figure 1: ImageNet-1k -> UCM")]
    assert bad.status == "predictions disagree" and "logged 99.0000 %" in bad.note
    other = by_cells[("Figure 1: RESISC45 -> UCM", "Figure 1: ImageNet-100 -> UCM")]
    assert other.status == "not paired" and "different splits" in other.note
    assert by_cells[("Figure 1: AID -> UCM", "Figure 1: ImageNet-1k -> UCM")].status == "missing"

    table3 = next(f for f in result.findings if f.finding.key == "table3")
    assert table3.summary == "holds in 1 of 2, contradicted in 0, inconclusive in 1"
    table4 = next(f for f in result.findings if f.finding.key == "table4")
    assert table4.summary == ("holds in 0 of 1, contradicted in 1, inconclusive in 0; "
                              "no difference claimed: consistent in 1 of 1, differs in 0")
    assert table4.contradicting == ["Table IV: Same classes vs Table IV: Different classes"]
    table2 = next(f for f in result.findings if f.finding.key == "table2")
    assert table2.summary == ("not tested: 6 (missing 4, no per-image predictions 1, "
                              "quick profile 1)")

    out = tmp_path / "out"
    frame = pd.read_csv(out / "findings.csv")
    assert len(frame) == sum(len(f.comparisons) for f in result.findings)
    row = frame[(frame["cell_a"] == "Table III: Same classes")
                & (frame["cell_b"] == "Table III: Different classes")].iloc[0]
    assert row["verdict"] == "holds" and row["runs"] == 2 and row["n_images"] == 420
    assert row["low"] == pytest.approx(same_other.low, abs=1e-4)
    assert row["difference"] == pytest.approx(100 * 30 / 210, abs=1e-4)
    assert "Findings: the paper's claims re-checked" in result.console
    assert ("Table IV: same > different; all = same (fine-tuning): against the paper: "
            "Table IV: Same classes vs Table IV: Different classes") in result.console
    for name in ("summary.md", "findings.md"):
        assert "holds in 1 of 2, contradicted in 0, inconclusive in 1" in (out / name).read_text()
    assert "Table IV: Same classes vs Table IV: Different classes" in (
        out / "findings.html").read_text()
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["findings_tested"] == 4 and metrics["findings_against"] == 1


def test_a_quick_profile_is_never_pooled_and_shown_after_a_meaningful_one(
        client: MlflowClient, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(protocol.PROFILES, "cpu-quick", SimpleNamespace(quick=True))
    for seed in "123":  # more seeds, same fingerprint: still never pooled, never preferred
        run = make_run(client, "probe", "aid", "ucm", metrics={"test_accuracy": 0.5},
                       seed=seed)
        client.set_tag(run, tags.TAG_PROFILE, "cpu-quick")
    make_run(client, "probe", "aid", "ucm", metrics={"test_accuracy": 0.8}, seed="9")

    result = run_summary(tmp_path)
    table = result.tables["figure1"]
    cell = table.cell("aid", "ucm")
    assert cell.values == pytest.approx([80.0]) and not cell.quick and cell.text == "80.00"
    assert [(v.quick, v.profiles, v.n) for v in cell.others] == [(True, ("cpu-quick",), 3)]
    note = table.footnote_texts[table.footnotes[("aid", "ucm")] - 1]
    assert "quick profile cpu-quick" in note
    frame = pd.read_csv(tmp_path / "out" / "figure1.csv")
    row = frame[(frame["row"] == "aid") & (frame["column"] == "ucm")].iloc[0]
    assert not row["quick"] and "quick profile cpu-quick" in row["other_variants"]


def _setup_fingerprints() -> dict[str, str]:
    """Fingerprints as commands.py computes them, for float32 x1, mixed x1 and float32 x4."""
    from rssc_mlflow.settings import protocol_fingerprint, resolve_settings

    args = dict(preprocessing="imagenet-rgb", peak_lr=3e-4, synthetic=False, warmup_epochs=5)
    float32 = resolve_settings("finetune", source="imagenet", target="aid")
    mixed = resolve_settings("finetune", source="imagenet", target="aid", precision="mixed")
    return {"float32 x1": protocol_fingerprint(float32, **args),
            "mixed x1": protocol_fingerprint(mixed, **args),
            "float32 x4": protocol_fingerprint(float32, replicas=4, **args),
            "pooled": protocol_fingerprint(mixed, replicas=4, pool_precision=True, **args)}


def _precision_runs(client: MlflowClient) -> dict[str, str]:
    fp = _setup_fingerprints()
    assert fp["pooled"] == fp["float32 x1"]  # the old key, so old runs pool too
    for seed, value in (("1", 0.90), ("2", 0.92)):
        make_run(client, "finetune", "imagenet", "aid", metrics={"test_accuracy": value},
                 fingerprint=fp["float32 x1"], pooled=fp["pooled"], seed=seed,
                 params={"precision": "float32", "replicas": "1"})
    make_run(client, "finetune", "imagenet", "aid", metrics={"test_accuracy": 0.50},
             fingerprint=fp["mixed x1"], pooled=fp["pooled"], seed="3",
             params={"precision": "mixed", "replicas": "1"})
    make_run(client, "finetune", "imagenet", "aid", metrics={"test_accuracy": 0.60},
             fingerprint=fp["float32 x4"], pooled=fp["pooled"], seed="4",
             params={"precision": "float32", "replicas": "4"})
    # Logged before precision joined the fingerprint: float32's fingerprint, no pooled tag.
    make_run(client, "finetune", "imagenet", "aid", metrics={"test_accuracy": 0.40},
             fingerprint=fp["float32 x1"], seed="5", params={"precision": "mixed"})
    return fp


def test_precision_and_replicas_never_share_a_cell(client: MlflowClient, tmp_path: Path) -> None:
    fp = _precision_runs(client)
    result = run_summary(tmp_path)
    table = result.tables["figure2"]
    cell = table.cell("imagenet", "aid")
    assert cell.values == pytest.approx([90.0, 92.0])  # float32 on one GPU only
    assert cell.shown.fingerprint == fp["float32 x1"] and not cell.shown.pooled
    others = sorted(v.describe() for v in cell.others)
    assert len(others) == 3 and all("n=1" in v for v in others)
    assert sum("mixed x1" in v for v in others) == 2 and sum("float32 x4" in v for v in others) == 1
    assert "pool" not in table.footnote_texts[table.footnotes[("imagenet", "aid")] - 1]


def test_pool_precision_pools_them_and_says_what_it_pooled(client: MlflowClient,
                                                          tmp_path: Path) -> None:
    fp = _precision_runs(client)
    result = run_summary(tmp_path, pool_precision=True)
    table = result.tables["figure2"]
    cell = table.cell("imagenet", "aid")
    assert sorted(cell.values) == pytest.approx([40.0, 50.0, 60.0, 90.0, 92.0])
    assert cell.shown.fingerprint == fp["pooled"] and not cell.others
    assert cell.shown.pooled == "float32 x1 (n=2), float32 x4 (n=1), mixed x1 (n=2)"
    note = table.footnote_texts[table.footnotes[("imagenet", "aid")] - 1]
    assert "pooled by --pool-precision: float32 x1 (n=2), float32 x4 (n=1), mixed x1 (n=2)" in note
    rows = list(csv.DictReader((tmp_path / "out" / "figure2.csv").open()))
    row = next(r for r in rows if (r["row"], r["column"]) == ("imagenet", "aid"))
    assert row["pooled"] == cell.shown.pooled and row["n"] == "5"
    summary = client.get_run(result.run_id)
    assert summary.data.params["pool_precision"] == "true"
    assert "--pool-precision" in (tmp_path / "out" / "summary.md").read_text()


def test_fetch_runs_reads_every_page(client: MlflowClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # One run a page: the library pager must follow the tokens to the last run and experiment.
    monkeypatch.setattr(summarize_mod, "PAGE_SIZE", 1)
    made = {make_run(client, "probe", "aid", "ucm", metrics={"test_accuracy": 0.9}, seed=str(s))
            for s in range(3)}
    make_run(client, "probe", "aid", "ucm", metrics={"test_accuracy": 0.9}, status="FAILED")
    made.add(make_run(client, "probe", "aid", "ucm", metrics={"test_accuracy": 0.9},
                      experiment="other"))
    ids = summarize_mod.experiment_ids(client, None)
    assert {client.get_experiment(i).name for i in ids} >= {"rssc", "other"}
    assert {r.run_id for r in summarize_mod.fetch_runs(client, ids)} == made
