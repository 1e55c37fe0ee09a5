"""python -m mlabel_exp.compare: real runs from train(cfg), compared and read back through MlflowClient.

One module-scoped store holds three finished runs (a, b: dropout 0 / 0.5, "sweep" multirun_first; c: weight
decay 1e-3 with sgd, "sweep" multirun_second, the latest), one FAILED run and one still RUNNING.
"""

import html
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mlabel_exp.cli.compare import main
from mlabel_exp.comparison import report as comparison_report
from mlabel_exp.comparison.compare import compare
from mlabel_exp.comparison.table import COLUMNS
from mlabel_exp.errors import ConfigError
from mlabel_exp.experiment.train import train
from mlabel_exp.tracking.runs import Tracker
from mlabel_exp.training import trainer as engine
from tests.conftest import artifact_paths, compose_cfg, mlflow_runs, tiny_overrides
from tests.test_report import assert_self_contained, embedded_images

pytestmark = pytest.mark.integration  # every test here trains or starts processes

FIGURES = {"model_comparison.png", "per_class_ap.png", "regularisation.png", "seed_intervals.png", "cost.png",
           "class_differences.png", "disagreements.png"}
GROUP_FIGURES = {"seed_intervals.png", "class_differences.png", "disagreements.png"}  # need two groups or more
RUNS = {"a": ("dropout=0.0", "weight_decay=0"), "b": ("dropout=0.5", "weight_decay=0"),
        "c": ("dropout=0.0", "weight_decay=0.001", "optimizer=sgd")}
SWEEPS = {"a": "multirun_first", "b": "multirun_first", "c": "multirun_second"}


def _boom(self, loader, epoch):
    raise RuntimeError("disk on fire")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    for name, extra in RUNS.items():
        train(compose_cfg(*tiny_overrides(tmp, f"tracking.run_name={name}", "tracking.log_checkpoints=none",
                                          f"trainer.output_dir={tmp / name}", *extra)))
    client, runs = mlflow_runs(tmp)
    ids = {r.data.tags["mlflow.runName"]: r.info.run_id for r in runs}
    for name, sweep in SWEEPS.items():  # as `python -m mlabel_exp.run -m` would tag them
        client.set_tag(ids[name], "sweep_id", sweep)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine.Trainer, "train_epoch", _boom)
        with pytest.raises(RuntimeError):
            train(compose_cfg(*tiny_overrides(tmp, "tracking.run_name=failed", f"trainer.output_dir={tmp / 'f'}")))
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    running = Tracker(uri, "mlabel-exp").start("still running", {}, {})
    failed = next(r.info.run_id for r in mlflow_runs(tmp)[1] if r.data.tags["mlflow.runName"] == "failed")
    return SimpleNamespace(tmp=tmp, uri=uri, ids=ids, client=client, failed=failed, running=running)


@pytest.fixture(scope="module")
def compared(store):
    return compare("mlabel-exp", tracking_uri=store.uri, out_dir=store.tmp / "all")


def names(result, store):
    by_id = {v: k for k, v in store.ids.items()}
    return [by_id[i] for i in result.table["run_id"]]


def test_table_has_one_row_per_finished_run_best_first_with_the_runs_values(store, compared):
    table = compared.table
    assert list(table.columns) == ["run_id", "run_name", "model", "dropout_value", "weight_decay_value", "optimizer",
                                   "lr", "trainable", "seed", "best_epoch", "best_val_mAP", "tuned_f1_micro", "tuned_f1_macro",
                                   "train_time_s", "epochs"] == COLUMNS
    assert sorted(names(compared, store)) == ["a", "b", "c"]
    assert table["best_val_mAP"].is_monotonic_decreasing
    for row in table.itertuples():
        run = store.client.get_run(row.run_id)
        m, p = run.data.metrics, run.data.params
        assert row.run_name == run.info.run_name and row.model == "smallcnn"
        assert row.best_val_mAP == pytest.approx(m["val/best_mAP"]) and row.best_epoch == m["val/best_epoch"]
        assert row.dropout_value == float(p["dropout_value"]) and row.weight_decay_value == float(p["weight_decay_value"])
        assert row.optimizer == p["optimizer.name"] and row.lr == float(p["optimizer.lr"])
        assert row.trainable == p["model.trainable"] == "all" and row.epochs == 2 and row.seed == p["seed"] == "0"
        epoch_s = [x.value for x in store.client.get_metric_history(row.run_id, "time/epoch_s")]
        assert len(epoch_s) == 2 and row.train_time_s == pytest.approx(sum(epoch_s))
        for key in ("f1_micro", "f1_macro"):  # optional: NaN for runs logged before tuned thresholds existed
            value = getattr(row, f"tuned_{key}")
            assert value == pytest.approx(m[f"tuned/{key}"]) if f"tuned/{key}" in m else np.isnan(value)
    settings = {n: (r.dropout_value, r.weight_decay_value, r.optimizer)
                for n, r in zip(names(compared, store), table.itertuples())}
    assert settings == {"a": (0.0, 0.0, "adamw"), "b": (0.5, 0.0, "adamw"), "c": (0.0, 0.001, "sgd")}


def test_failed_and_running_runs_are_left_out_and_counted(store, compared):
    assert store.client.get_run(store.failed).info.status == "FAILED"
    assert store.client.get_run(store.running).info.status == "RUNNING"
    assert not {store.failed, store.running} & set(compared.table["run_id"])
    assert "skipped 2 run(s) that did not finish (FAILED: 1, RUNNING: 1)" in compared.notes


def test_csv_and_markdown_tables_are_written(store, compared):
    csv = pd.read_csv(compared.out_dir / "comparison.csv")
    assert list(csv.columns) == COLUMNS and list(csv["run_id"]) == list(compared.table["run_id"])
    md = (compared.out_dir / "comparison.md").read_text()
    rows = [line for line in md.split("## Groups")[0].splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 3
    assert rows[0].split("|")[1:-1] == [f" {c} " for c in COLUMNS] and set(rows[1]) <= set("|-: ")
    for line, run_id in zip(rows[2:], compared.table["run_id"]):
        assert line.startswith(f"| {run_id[:8]} |")


def test_figures_are_real_images(compared):
    assert set(compared.figures) == FIGURES
    for name, path in compared.figures.items():
        assert path == compared.out_dir / name
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 400 and img.height >= 200, (name, img.size)
            colours = img.convert("RGB").getcolors(maxcolors=1 << 24)
        assert len(colours) > 10, name  # not blank


def test_comparison_is_logged_to_its_own_run(store, compared):
    run = store.client.get_run(compared.run_id)
    training = store.client.get_run(store.ids["a"]).info.experiment_id
    assert run.info.status == "FINISHED" and run.info.experiment_id != training  # not among the training runs
    assert store.client.get_experiment(run.info.experiment_id).name == "mlabel-exp-comparisons"
    assert run.data.tags["mlabel.kind"] == "comparison"
    assert run.data.params["num_runs"] == "3" and set(run.data.params["run_ids"].split(",")) == set(store.ids.values())
    assert {"comparison.csv", "comparison.md", "groups.csv", "class_differences.csv", *FIGURES} <= artifact_paths(
        store.client, compared.run_id)


def test_report_html_holds_the_verdict_groups_every_figure_and_per_class_differences(store, compared):
    page = compared.report.read_text()
    assert compared.report == compared.out_dir / "report.html"
    assert html.escape(comparison_report.verdict(compared.groups)) in page
    for group in compared.groups.table["group"]:
        assert f"<td>{html.escape(group)}</td>" in page
    assert len(embedded_images(page)) == len(compared.figures)  # every figure, each linked to its file beside it
    assert all(f'href="{name}"' in page for name in compared.figures)
    assert_self_contained(page, compared.out_dir)
    assert "<details><summary>disagreements.png</summary>" in page and "<details><summary>the 3 runs</summary>" in page
    for label, group in zip("ABC", compared.groups.table["group"]):  # labelled as on the console
        assert f"<td>{label}</td>\n      <td>{html.escape(group)}</td>" in page
    # per class: the one class-differences table (class_differences.csv), each cell as the page shows it
    shown = comparison_report.class_table(pd.read_csv(compared.out_dir / "class_differences.csv"))
    assert "Per-class AP: each group against the best" in page
    for column in shown.columns[3:]:
        assert all(f"<td>{html.escape(cell)}</td>" in page for cell in shown[column])


def names_of(store) -> dict[str, str]:
    return {v: k for k, v in store.ids.items()}


def test_cost_table_counts_each_best_runs_checkpoint_and_times_its_predictor(store, compared):
    cost = pd.read_csv(compared.out_dir / "cost.csv")
    assert list(cost["group"]) == list(compared.groups.table["group"])  # one run a group: each its best
    for row in cost.itertuples():
        best = store.tmp / names_of(store)[row.run_id] / "checkpoints" / "best.pt"
        state = torch.load(best, weights_only=True)["model"]
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        parameters = sum(v.numel() for k, v in state.items() if not k.endswith(buffers))
        assert row.total_params == row.trainable_params == parameters  # model.trainable=all
        assert row.checkpoint_bytes == best.stat().st_size and row.model == "smallcnn"
        assert row.images_per_s > 0 and row.ms_per_image == pytest.approx(1000 / row.images_per_s)
        assert row.inputs == f"{row.batch_size} validation images" and row.precision == "float32"
        assert row.mean == compared.groups.table.set_index("group").loc[row.group, "mean"]


def test_comparison_run_has_a_description_and_each_groups_metrics(store, compared):
    run = store.client.get_run(compared.run_id)
    note = run.data.tags["mlflow.note.content"]
    assert f"**Verdict:** {comparison_report.verdict(compared.groups)}" in note and "Compared **3 runs**" in note
    metrics = run.data.metrics
    assert metrics["runs"] == 3 and metrics["groups"] == 3
    for i, row in enumerate(compared.groups.table.itertuples(), start=1):
        assert metrics[f"group_{i}/mean_best_val_mAP"] == row.mean and metrics[f"group_{i}/n"] == row.n
        assert f"| group_{i} | {row.group} |" in note
    assert {"report.html", "cost.csv", "class_differences.csv"} <= artifact_paths(store.client, compared.run_id)


def test_the_printed_runs_table_link_opens_sorted_by_best_val_map_with_its_column(store):
    from mlabel_exp.tracking.client import VIEW_KEY, VIEW_TAG, run_url

    experiment = store.client.get_experiment_by_name("mlabel-exp")
    url = run_url(store.uri, experiment.experiment_id)
    assert url.endswith(f"/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
                        "&workflowType=machine_learning")
    view = json.loads(experiment.tags[VIEW_TAG])  # what the UI loads for that key (docs/mlflow-ui.md)
    assert view["orderByKey"] == "metrics.`val/best_mAP`" and view["orderByAsc"] is False
    assert view["selectedColumns"][0] == "metrics.`val/best_mAP`" and "params.`model.name`" in view["selectedColumns"]


def test_each_run_writes_and_logs_its_report(store):
    for name, run_id in store.ids.items():
        page = (store.tmp / name / "report.html").read_text()
        best = store.client.get_run(run_id).data.metrics["val/best_mAP"]
        assert f"Best val mAP {best:.4f} at epoch" in page and len(embedded_images(page)) == 3
        assert "report.html" in artifact_paths(store.client, run_id)


def test_runs_are_grouped_by_settings_and_paired_on_their_validation_images(store, compared):
    # a, b and c differ in their settings: three groups of one seed, scored on the same validation images
    found = compared.groups
    assert sorted(found.table["n"]) == [1, 1, 1] and found.table["verdict"].iloc[0] == "best"
    assert found.evaluated_on.startswith("paired bootstrap over images (one seed a group: the runs, not the settings)")
    assert "validation images every run scored" in found.evaluated_on
    assert list(found.table["mean"]) == sorted(compared.table["best_val_mAP"], reverse=True)
    # one run a group: its mAP recomputed from its val.csv is the run's own logged val/best_mAP, up to torchmetrics'
    # float32 arithmetic (n + 3 float32 ulps of 1 on n validation images)
    n = int(found.evaluated_on.split("on the ")[1].split()[0])
    for row in found.table.itertuples():
        assert row.eval_mAP == pytest.approx(row.mean, abs=(n + 3) * 2**-24), row.group
    saved = pd.read_csv(compared.out_dir / "groups.csv")
    assert list(saved["group"]) == list(found.table["group"])
    assert "## Groups across seeds" in (compared.out_dir / "comparison.md").read_text()


def test_per_class_differences_from_the_best_group_are_the_runs_own_ap_differences(store, compared):
    from sklearn.metrics import average_precision_score

    by_id = {v: k for k, v in store.ids.items()}
    ap = {}
    for run_id, name in by_id.items():  # each run's per-class AP from its own val.csv, by scikit-learn
        val = pd.read_csv(store.tmp / name / "predictions" / "val.csv", keep_default_na=False).sort_values("file")
        classes = [c for c in val.columns if c not in ("file", "labels", "true_labels", "unknown_labels")]
        truth = [set(json.loads(t)) for t in val["true_labels"]]  # no unknown label in the synthetic set
        ap[run_id] = {c: average_precision_score([c in t for t in truth], val[c]) if any(c in t for t in truth)
                      else np.nan for c in classes}
    table = pd.read_csv(compared.out_dir / "class_differences.csv")
    groups = compared.groups.table
    best = groups["run_ids"].iloc[0]  # one run a group
    assert list(table.columns) == ["class", "group", "versus", "versus_AP", "difference", "low", "high", "positives",
                                   "verdict"]
    assert list(table["group"].unique()) == list(groups["group"].iloc[1:]) and set(table["versus"]) == {groups["group"].iloc[0]}
    assert len(table) == 2 * len(classes)
    for row in table.itertuples():
        other = groups.set_index("group").loc[row.group, "run_ids"]
        expected = ap[other][row[1]] - ap[best][row[1]]
        # the same float64 numbers, AP summed in another order: a few float64 roundings (1e-16) per image
        assert row.difference == pytest.approx(expected, abs=len(truth) * 1e-15, nan_ok=True), row
        assert row.low <= row.high or np.isnan(row.difference)
        assert row.positives == sum(row[1] in t for t in truth)
        assert row.versus_AP == pytest.approx(ap[best][row[1]], abs=len(truth) * 1e-15, nan_ok=True)  # the best's own
    assert not [n for n in compared.notes if "not found" in n]  # the thumbnails were read from the data root


def test_a_second_comparison_leaves_comparison_runs_out(store, compared, tmp_path):
    again = compare(tracking_uri=store.uri, out_dir=tmp_path, log_to_mlflow=False)
    assert again.run_id is None and compared.run_id not in set(again.table["run_id"])
    assert sorted(names(again, store)) == ["a", "b", "c"]


def test_filter_string_selects_runs_and_constant_settings_skip_the_regularisation_figure(store, tmp_path):
    result = compare(tracking_uri=store.uri, filter_string="params.optimizer.name = 'sgd'", out_dir=tmp_path,
                     log_to_mlflow=False)
    assert names(result, store) == ["c"]
    assert set(result.figures) == FIGURES - {"regularisation.png", *GROUP_FIGURES}  # one run: one group
    assert not (tmp_path / "regularisation.png").exists()
    assert any("regularisation.png skipped" in n for n in result.notes)


def test_sweep_selects_its_runs_and_latest_is_the_most_recent_sweep(store, tmp_path):
    first = compare(tracking_uri=store.uri, sweep="multirun_first", out_dir=tmp_path / "first", log_to_mlflow=False)
    assert sorted(names(first, store)) == ["a", "b"]
    assert "regularisation.png" in first.figures  # dropout varies; weight decay does not
    assert any("no panel for weight_decay_value" in n for n in first.notes)
    latest = compare(tracking_uri=store.uri, sweep="latest", out_dir=tmp_path / "latest", log_to_mlflow=False)
    assert names(latest, store) == ["c"]


def test_empty_selection_names_the_experiment_and_the_store(store, tmp_path):
    with pytest.raises(ConfigError, match=r"no finished runs .*experiment='mlabel-exp'.*filter=.*at sqlite:///") as e:
        compare(tracking_uri=store.uri, filter_string="params.model.name = 'vgg16'", out_dir=tmp_path)
    assert store.uri in str(e.value) and "filter=" in str(e.value)
    with pytest.raises(ConfigError, match="recent sweep ids: multirun_second, multirun_first"):
        compare(tracking_uri=store.uri, sweep="multirun_nope", out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"experiment='nope' not found .*experiments there: .*mlabel-exp"):
        compare("nope", tracking_uri=store.uri, out_dir=tmp_path)


def test_bad_filter_and_missing_store_are_clear_errors(store, tmp_path):
    with pytest.raises(ConfigError, match=r"filter=.* is not a valid MLflow filter"):
        compare(tracking_uri=store.uri, filter_string="params.model.name === 'x'", out_dir=tmp_path)
    nowhere = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(ConfigError, match="no MLflow store at .*tracking.uri="):
        compare(tracking_uri=f"sqlite:///{nowhere}", out_dir=tmp_path)
    assert not nowhere.exists()  # reading never creates an empty store


def test_a_filter_on_a_key_no_run_has_names_the_keys_they_do_have(store, tmp_path):
    with pytest.raises(ConfigError, match=r"no run has params\.model \(did you mean .*model\.name.*tags\.model\?\)"):
        compare(tracking_uri=store.uri, filter_string="params.model = 'resnet18'", out_dir=tmp_path)


def _command(monkeypatch, *args: str) -> None:
    """``python -m mlabel_exp.compare ARGS``, in this process."""
    monkeypatch.setattr(sys, "argv", ["compare", *args])
    main()


@pytest.mark.parametrize("args, expected", [
    (["experiment=nope"], "error: experiment='nope' not found"),
    (["--sweep", "latest"], "error: --sweep is not an option: settings are key=value, here sweep=latest"),
    (["sweeep=latest"], "error: sweeep is not a setting (did you mean sweep?)"),
    (["sweep=0"], "error: no finished runs to compare for experiment='mlabel-exp', sweep='0'"),
])
def test_cli_errors_are_one_line_and_exit_code_2(store, tmp_path, monkeypatch, capsys, args, expected):
    with pytest.raises(SystemExit) as e:
        _command(monkeypatch, f"tracking.uri={store.uri}", f"out={tmp_path}", *args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(expected) and err.count("\n") == 1, err


def test_cli_takes_a_sweep_by_its_parent_runs_id_prefix_and_a_filter_as_typed(store, tmp_path, monkeypatch, capsys):
    from mlabel_exp.tracking.runs import KIND_TAG

    parent = store.client.create_run(store.client.get_run(store.ids["a"]).info.experiment_id, run_name="sweep first",
                                     tags={KIND_TAG: "sweep", "sweep_id": "multirun_first"}).info.run_id
    try:
        _command(monkeypatch, f"tracking.uri={store.uri}", f"out={tmp_path}", f"sweep={parent[:7]}",
                 "filter=params.dropout_value = '0.5'", "log_to_mlflow=false")
    finally:
        store.client.delete_run(parent)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 and f"| {store.ids['b'][:8]} |" in rows[1]


def test_cli_prints_the_table_and_writes_the_files(store, compared, tmp_path, monkeypatch, capsys):
    _command(monkeypatch, "experiment=mlabel-exp", f"tracking.uri={store.uri}", f"out={tmp_path / 'cli'}")
    out = capsys.readouterr()
    runs, groups = out.out.split("Groups across seeds (paired bootstrap over images ")
    rows = [line for line in runs.splitlines() if line.startswith("|")]
    assert rows[0].split() == ["|", "run_id", "|", "group", "|", "run_name", "|", "dropout_value", "|",
                               "weight_decay_value", "|", "optimizer", "|", "lr", "|", "best_val_mAP", "|",
                               "tuned_f1_micro", "|"]
    assert len(rows) == 2 + 3
    label = dict(zip(compared.groups.table["group"], "ABC"))  # the same runs: the same groups, best first
    assert sorted(row.split("|")[2].strip() for row in rows[2:]) == ["A", "B", "C"]  # a group each run
    assert [line for line in out.out.splitlines() if len(line) > 120 and "/" not in line] == []
    # what every run shares is said once, above the table
    assert "same in every row: model=smallcnn, trainable=all, seed=0, best_epoch=" in runs
    rows = [line for line in groups.splitlines() if line.startswith("|")]
    assert rows[0].split()[:6] == ["|", "group", "|", "verdict", "|", "mean"] and len(rows) == 2 + 3
    assert [row.split("|")[1].strip() for row in rows[2:]] == ["A", "B", "C"]
    assert all(f"\n{letter}: {name}\n" in groups for name, letter in label.items())  # the legend: its settings
    assert f"runs: http://127.0.0.1:5000/#/experiments/{store.client.get_experiment_by_name('mlabel-exp').experiment_id}" \
        "/runs?viewStateShareKey=" in out.out
    assert "| best " in rows[2]  # one run a group: the others compared run against run over the images
    assert all("| worse run (p<0.05, 1 seed) " in row or "| not distinguishable from best " in row for row in rows[3:])
    _command(monkeypatch, "experiment=mlabel-exp", f"tracking.uri={store.uri}", f"out={tmp_path / 'wide'}",
             "log_to_mlflow=false", "wide=true")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| run_id")]
    assert rows[0].replace(" ", "").startswith("|run_id|group|run_name|model|dropout_value|")  # every column, in full
    assert {"comparison.csv", "comparison.md", *FIGURES} <= {p.name for p in (tmp_path / "cli").iterdir()}
    assert "MLflow run:" in out.out and "note: skipped 2 run(s)" in out.out

# ------------------------------------------------------------------ compare tells the truth (issue 33)

#: Four synthetic classes renamed as a user's might be: names holding spaces
SPACED = {"circle": "big dog", "square": "cat", "triangle": "red car", "ring": "tree"}


def _labelled_images(tmp: Path) -> tuple[Path, list[str], np.ndarray]:
    """80 synthetic 32 px images (the tiny runs' kind) and their 0/1 labels of the four SPACED classes."""
    from mlabel_exp.data.formats.folder import build_index
    from mlabel_exp.data.synthetic import SyntheticSpec, generate

    index = build_index(generate(tmp / "synthetic", SyntheticSpec(num_images=80, image_size=32, seed=0)))
    return index.image_dir, index.files, index.labels[:, [index.classes.index(c) for c in SPACED]]


def _csv_root(tmp: Path, images: Path, files: list[str], header: str, rows: list[str]) -> Path:
    import shutil

    root = tmp / "data"
    shutil.copytree(images, root / "images")
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def _tiny_run(tmp: Path, name: str, *extra: str) -> None:
    train(compose_cfg(*tiny_overrides(tmp, f"tracking.run_name={name}", "tracking.log_checkpoints=none",
                                      f"trainer.output_dir={tmp / name}", *extra)))


def _ids(tmp: Path) -> dict:
    client, runs = mlflow_runs(tmp)
    return client, {r.data.tags["mlflow.runName"]: r.info.run_id for r in runs}


@pytest.fixture(scope="module")
def spaced(tmp_path_factory):
    """A labels-column CSV (``image,tags``, names joined by ';'), classes with spaces, a test split: two runs scored on
    all their 16 validation and 20 test images (no step limit), a smoke run on 8 of each (2 steps of 4)."""
    tmp = tmp_path_factory.mktemp("spaced")
    images, files, labels = _labelled_images(tmp)
    names = list(SPACED.values())
    rows = [f"{f},{';'.join(n for n, on in zip(names, row) if on)}" for f, row in zip(files, labels)]
    root = _csv_root(tmp, images, files, "image,tags", rows)
    data = ("data=csv", f"data.root={root}", "data.label_separator=';'", "data.test_fraction=0.25")
    for name, extra in {"a": ("dropout=0.0", "trainer.max_steps_per_epoch=0"),
                        "b": ("dropout=0.5", "trainer.max_steps_per_epoch=0"), "s": ("dropout=0.0",)}.items():
        _tiny_run(tmp, name, *data, *extra)
    truth = dict(zip(files, labels))
    return SimpleNamespace(tmp=tmp, uri=f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", truth=truth, names=names)


def _float32_map_tolerance(n: int) -> float:
    """How far compare's mAP (stats.weighted_map in float64 on the written float32 probabilities) may sit from the
    run's own (torchmetrics in float32): n float32 roundings of values <= 1, plus a few (tests/test_floats.py)."""
    return (n + 3) * 2**-24


def test_compare_scores_each_run_on_its_own_images_and_labels_with_class_names_that_hold_spaces(spaced, tmp_path):
    client, ids = _ids(spaced.tmp)
    for name in ids:  # the files keep every name whole: the truth of labels.csv, image by image
        for split in ("val", "test"):
            scored = pd.read_csv(spaced.tmp / name / "predictions" / f"{split}.csv", keep_default_na=False)
            assert [c for c in scored.columns if c in spaced.names] == spaced.names
            for file, cell in zip(scored["file"], scored["true_labels"]):
                assert json.loads(cell) == [n for n, on in zip(spaced.names, spaced.truth[file]) if on]
    result = compare(tracking_uri=spaced.uri, out_dir=tmp_path, log_to_mlflow=False, cost=False)
    n = len(pd.read_csv(spaced.tmp / "a" / "predictions" / "test.csv"))
    assert n == 20 and result.groups.evaluated_on.endswith(f"the mAP on the {n} test images every run scored")
    t = result.groups.table.set_index("run_ids")
    for name in ("a", "b"):  # one run a group, on the 20 test images every compared run scored: the run's own mAP
        own = client.get_run(ids[name]).data.metrics["test/mAP"]
        assert t.loc[ids[name], "eval_mAP"] == pytest.approx(own, abs=_float32_map_tolerance(n)), name
        assert result.table.set_index("run_id").loc[ids[name], "test_mAP"] == own
    # the smoke run scored 8 of the 16 validation images (and 8 of the 20 test images): never paired or tested
    assert t.loc[ids["s"], "verdict"] == "set apart: scored on 8 validation images; the best group on 16"
    assert pd.isna(t.loc[ids["s"], "p_value"]) and pd.isna(t.loc[ids["s"], "eval_mAP"])
    (note,) = [n for n in result.notes if n.startswith("set apart")]
    assert note.startswith("set apart 1 run(s) scored on 8 validation images; the best group on 16") and \
        ids["s"][:8] in note


def test_the_chance_floor_is_the_prevalence_among_the_images_each_run_scored(spaced, tmp_path):
    from mlabel_exp.comparison.compare import per_class_ap
    from mlabel_exp.comparison.paired import PredictionFiles

    _, ids = _ids(spaced.tmp)
    scored = {name: list(pd.read_csv(spaced.tmp / name / "predictions" / "val.csv")["file"]) for name in ("s", "a")}
    # the reference: labels.csv's labels of the images each run's val.csv lists (no unknown label here)
    expected = {n: np.mean([spaced.truth[f] for f in files], axis=0) for n, files in scored.items()}
    per_class, notes = per_class_ap(spaced.uri, pd.DataFrame({"run_id": [ids["s"], ids["a"]]}), ["s", "a"],
                                    PredictionFiles(spaced.uri))
    assert list(per_class.chance.index) == ["random ranking (16 images)", "random ranking (8 images)"]
    np.testing.assert_array_equal(per_class.chance.loc["random ranking (8 images)", spaced.names], expected["s"])
    np.testing.assert_array_equal(per_class.chance.loc["random ranking (16 images)", spaced.names], expected["a"])
    assert per_class.n_images == 16 and any("different validation images (16, 8)" in n for n in notes)


@pytest.fixture(scope="module")
def unknowns(tmp_path_factory):
    """A one-hot CSV with about 15% of its cells unknown (-1 or empty); dropout 0 and 0.5, seeds 0 and 1 each, every
    run scored on all 16 validation images."""
    tmp = tmp_path_factory.mktemp("unknowns")
    images, files, labels = _labelled_images(tmp)
    hidden = np.random.default_rng(5).random(labels.shape) < 0.15
    cells = np.where(hidden, np.where(np.arange(labels.size).reshape(labels.shape) % 2, "-1", ""), labels.astype(str))
    rows = [",".join([f, *row]) for f, row in zip(files, cells)]
    root = _csv_root(tmp, images, files, ",".join(["image", *SPACED.values()]), rows)
    for dropout in ("0.0", "0.5"):
        for seed in (0, 1):
            _tiny_run(tmp, f"d{dropout}s{seed}", "data=csv", f"data.root={root}", f"dropout={dropout}", f"seed={seed}",
                      "trainer.max_steps_per_epoch=0")
    return SimpleNamespace(tmp=tmp, uri=f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", files=files, hidden=hidden)


def test_unknown_labels_are_masked_in_compares_map_and_its_welch_test_is_scipys(unknowns, tmp_path):
    from scipy.stats import ttest_ind

    client, ids = _ids(unknowns.tmp)
    val = pd.read_csv(unknowns.tmp / "d0.0s0" / "predictions" / "val.csv", keep_default_na=False)
    hidden = dict(zip(unknowns.files, unknowns.hidden))
    marked = [json.loads(cell) for cell in val["unknown_labels"]]
    assert marked == [[n for n, h in zip(SPACED.values(), hidden[f]) if h] for f in val["file"]] and any(marked)
    # single runs (seed 0 of each setting): compare's mAP is each run's own, unknown labels masked as the run masks them
    single = compare(tracking_uri=unknowns.uri, filter_string="params.seed = '0'", out_dir=tmp_path / "one",
                     log_to_mlflow=False, cost=False).groups.table.set_index("run_ids")
    for name in ("d0.0s0", "d0.5s0"):
        own = client.get_run(ids[name]).data.metrics["val/best_mAP"]
        assert single.loc[ids[name], "eval_mAP"] == pytest.approx(own, abs=_float32_map_tolerance(len(val))), name
    # two seeds a group: Welch's t-test on the runs' val/best_mAP, as scipy computes it
    t = compare(tracking_uri=unknowns.uri, out_dir=tmp_path / "all", log_to_mlflow=False,
                cost=False).groups.table.set_index("group")
    best, other = t.index
    logged = {g: [client.get_run(r).data.metrics["val/best_mAP"] for r in t.loc[g, "run_ids"].split()] for g in t.index}
    assert t.loc[other, "test"] == "Welch's t-test" and np.ptp(logged[best]) > 0 and np.ptp(logged[other]) > 0
    reference = ttest_ind(logged[best], logged[other], equal_var=False).pvalue
    # compare tests its mAP recomputed from the files, each within eps of the logged one: p moves by at most
    # sum |dp/dx| * eps (the gradient by central differences), twice that for the curvature
    eps, values = _float32_map_tolerance(len(val)), np.array(logged[best] + logged[other])

    def p_of(x):
        return ttest_ind(x[:2], x[2:], equal_var=False).pvalue

    gradient = [(p_of(values + eps * e) - p_of(values - eps * e)) / (2 * eps) for e in np.eye(4)]
    assert t.loc[other, "p_value"] == pytest.approx(reference, abs=2 * eps * np.sum(np.abs(gradient)) + 1e-15)
