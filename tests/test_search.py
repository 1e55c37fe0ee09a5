"""Optuna search: trials are MLflow child runs, poor trials are pruned, an interrupted study continues.

Which trial is pruned must not depend on how well a tiny model happens to learn: the val mAP each trial
*reports* to the pruner is scripted (trial 0 reports 0.9 every epoch, later trials 0.1), so with one startup
trial and no warm-up every later trial is below the median at epoch 1, and pruned there, whatever the sampler
draws. The trials are real training runs all the same; only the reported number is replaced.
"""

import sys

import pytest

from mlabel_exp.experiment import train as training
from tests.conftest import compose_cfg, mlflow_runs, tiny_overrides

pytestmark = pytest.mark.integration  # every test here trains or starts processes


def _cfg(tmp_path, n_trials):
    return compose_cfg(*tiny_overrides(tmp_path, "trainer.epochs=3", f"search.n_trials={n_trials}",
                                       f"search.storage=sqlite:///{tmp_path / 'optuna.db'}",
                                       "search.pruner_startup_trials=1", "search.pruner_warmup_epochs=0"),
                       command="search")


@pytest.fixture
def scripted_reports(monkeypatch):
    real_train = training.train

    def train(cfg, *, on_epoch=None, group=None):
        score = 0.9 if group["optuna_trial"] == "0" else 0.1
        return real_train(cfg, on_epoch=lambda epoch, metrics: on_epoch(epoch, {**metrics, "val/mAP": score}),
                          group=group)

    monkeypatch.setattr(training, "train", train)


def test_search_prunes_and_nests_trials_and_resumes_its_study(tmp_path, scripted_reports, capsys):
    import optuna

    from mlabel_exp.cli.search import search_and_report

    study = search_and_report(_cfg(tmp_path, 4))
    # the console: one line per trial (finished or pruned), then the settings and where to look, once each
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["trial 0", "trial 1", "trial 2", "trial 3"], lines
    assert "val mAP" in lines[0] and all("pruned after epoch 1" in line for line in lines[1:4])
    assert lines[4].startswith("study 'regularisation' (1 complete, 3 pruned)") and "  not finished: 3 pruned" in lines
    assert sum(line.startswith("look:") for line in lines) == 1 and not any(line.startswith("outputs:") for line in lines)
    assert sum(line.startswith("runs:") and "viewStateShareKey=" in line for line in lines) == 1  # the runs table
    assert all(len(line) <= 120 for line in lines if str(tmp_path) not in line and sys.prefix not in line)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.PRUNED] * 3
    client, runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("mlabel.kind") == "sweep"]
    trials = [r for r in runs if "mlabel.kind" not in r.data.tags]
    assert len(trials) == 4 and {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    pruned = [r for r in trials if r.data.tags.get("pruned") == "true"]
    assert sorted(r.data.tags["optuna_trial"] for r in pruned) == ["1", "2", "3"]
    assert {r.info.status for r in pruned} == {"KILLED"}
    for r in pruned:  # stopped at the first epoch's report, not trained to the end
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/mAP")] == [1]
    # the same command again continues the stored study up to the new total
    again = search_and_report(_cfg(tmp_path, 5))
    assert len(again.trials) == 5 and again.study_name == study.study_name
