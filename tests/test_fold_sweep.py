"""A 3-fold sweep end to end (`python -m mlabel_exp.run -m data.folds=3 data.fold=0,1,2` with a test split, trained
once for the module): the out-of-fold table on its parent holds every non-test image exactly once, scored by its
fold's run, with the out-of-fold mAP recomputed by scikit-learn; compare sees one setting over 3 folds; the label check
writes its ranked table, the lines to change and its page."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mlabel_exp.config import LabelsConfig, TrackingConfig
from mlabel_exp.errors import ConfigError
from mlabel_exp.inference.outputs import read_predictions
from tests.conftest import artifact_paths, mlflow_runs, tiny_overrides

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folds")
    cmd = [sys.executable, "-m", "mlabel_exp.run", "-m", *tiny_overrides(tmp), "data.folds=3", "data.fold=0,1,2",
           "data.test_fraction=0.2", "trainer.max_steps_per_epoch=0", "trainer.batch_size=16",
           f"hydra.sweep.dir={tmp / 'multirun'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MLABEL_EXP_ROOT": str(tmp)})
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = mlflow_runs(tmp)
    (parent,) = [r for r in runs if r.data.tags.get("mlabel.kind") == "sweep"]
    children = [r for r in runs if "mlabel.kind" not in r.data.tags]
    return tmp, client, parent, children, done.stdout


def _text(client, run_id: str, path: str, tmp) -> str:
    return open(client.download_artifacts(run_id, path, str(tmp))).read()


def test_the_out_of_fold_table_holds_every_non_test_image_once_scored_by_its_folds_run(sweep, tmp_path):
    from sklearn.metrics import average_precision_score

    tmp, client, parent, children, log = sweep
    assert {"out_of_fold/out_of_fold.csv", "out_of_fold/out_of_fold.json", "out_of_fold/per_class.csv",
            "out_of_fold/summary.json"} <= artifact_paths(client, parent.info.run_id)
    oof = read_predictions(_text(client, parent.info.run_id, "out_of_fold/out_of_fold.csv", tmp_path), "csv",
                           extra=("fold",))
    splits = {int(r.data.params["data.fold"]): json.loads(_text(client, r.info.run_id, "split.json", tmp_path / "s"))
              for r in children}
    assert sorted(splits) == [0, 1, 2] and {s["meta"]["fold"] for s in splits.values()} == {0, 1, 2}
    non_test = sorted(splits[0]["train"] + splits[0]["val"])
    assert oof.files == non_test and len(set(oof.files)) == len(oof.files)  # every one, once
    assert not set(oof.files) & set(splits[0]["test"]) and len(splits[0]["test"]) == 16
    by_fold = {r.data.params["data.fold"]: r for r in children}
    for fold, run in by_fold.items():
        own = read_predictions(_text(client, run.info.run_id, "predictions/val.csv", tmp_path / fold), "csv").sorted()
        rows = [i for i, f in enumerate(oof.files) if oof.extra["fold"][i] == fold]
        assert [oof.files[i] for i in rows] == own.files == sorted(splits[int(fold)]["val"])
        assert np.array_equal(oof.probs[rows], own.probs) and np.array_equal(oof.targets[rows], own.targets)
    known = oof.targets >= 0
    aps = [average_precision_score(oof.targets[known[:, c], c], oof.probs[known[:, c], c])
           for c in range(len(oof.classes)) if (oof.targets[:, c] == 1).any()]
    assert parent.data.metrics["oof/mAP"] == pytest.approx(np.mean(aps), abs=1e-12)
    per_class = pd.read_csv(io.StringIO(_text(client, parent.info.run_id, "out_of_fold/per_class.csv", tmp_path)))
    assert per_class["AP"].dropna().to_numpy() == pytest.approx(aps, abs=1e-12)
    assert parent.data.metrics["oof/mAP_low"] <= parent.data.metrics["oof/mAP"] <= parent.data.metrics["oof/mAP_high"]
    assert f"out-of-fold: mAP {parent.data.metrics['oof/mAP']:.4f}" in log
    assert f"-m mlabel_exp.labels run={parent.info.run_id[:8]}" in log  # after this environment's python


def test_a_setting_over_its_folds_is_one_setting_and_the_sweep_says_folds(sweep):
    from mlabel_exp.comparison.groups import compare_groups, rank_settings
    from mlabel_exp.tracking.query import list_runs

    tmp, _, parent, children, log = sweep
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    runs = [r for r in list_runs(uri, "mlabel-exp") if "mlabel.kind" not in r["tags"]]
    (setting,) = rank_settings(runs)
    assert setting.unit == "fold" and len(setting.values) == 3 and setting.seeds == ["0", "1", "2"]
    assert parent.data.metrics["val/best_mAP"] == pytest.approx(np.mean(setting.values))
    assert "over 3 folds (" in parent.data.tags["mlflow.note.content"]
    (row,) = compare_groups(uri, runs, n_resamples=100).table.itertuples()
    assert row.n == 3 and row.unit == "fold" and row.seeds == "folds 0 1 2"
    assert len({r.data.tags["data.fold_set"] for r in children}) == 1
    assert len({r.data.params["data.num_val"] for r in children} | {"x"}) >= 2  # the folds differ, the group not


def test_the_label_check_ranks_the_flagged_labels_and_names_the_line_to_change(sweep, tmp_path):
    from mlabel_exp.comparison.labels import check_labels

    tmp, client, parent, _, _ = sweep
    tracking = TrackingConfig(uri=f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", experiment="mlabel-exp")
    done = check_labels(LabelsConfig(run=parent.info.run_id[:8], out=str(tmp_path), per_class=2, tracking=tracking))
    table = pd.read_csv(done.csv)
    assert len(table) > 0 and table["rank"].tolist() == list(range(1, len(table) + 1))
    confidence = np.where(table["given"] == "present", table["probability"], 1 - table["probability"])
    assert np.all(np.diff(confidence) >= 0)  # the surest errors first
    assert set(table["suggested"]) <= {"present", "absent"} and (table["given"] != table["suggested"]).all()
    missing = int((table["given"] == "absent").sum())
    assert f"{len(table)} of " in done.summary and f": {missing} missing" in done.summary
    assert f"{len(table) - missing} given but absent" in done.summary
    for row in table.head(20).to_dict("records"):
        number = int(row["file"].removeprefix("im").removesuffix(".jpg"))
        annotations = row["fix"].split(":")[0]
        assert annotations.endswith(f"annotations/{row['class']}.txt")
        listed = open(annotations).read().splitlines()
        if row["given"] == "present":  # the line named holds the image's number: delete it
            line = int(row["fix"].split(":")[1])
            assert listed[line - 1].strip() == str(number) and f"delete the line {number}" in row["fix"]
        else:
            assert str(number) not in {v.strip() for v in listed} and f"add a line {number}" in row["fix"]
    html = done.page.read_text()
    assert html.count("data:image/png;base64,") >= 1 and "Labels most likely wrong" in html
    assert {"labels/label_issues.csv", "labels/label_issues.html"} <= artifact_paths(client, parent.info.run_id)


def test_out_of_fold_predictions_need_a_fold_sweep():
    from mlabel_exp.comparison.folds import out_of_fold

    plain = {"run_id": "a" * 32, "status": "FINISHED", "params": {"seed": "0"}, "tags": {}, "metrics": {}}
    with pytest.raises(ConfigError, match="no finished fold run .* python -m mlabel_exp.run -m data.folds=5"):
        out_of_fold("unused", [plain])
