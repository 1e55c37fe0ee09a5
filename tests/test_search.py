"""Optuna search: trials are MLflow child runs, poor trials are pruned, an interrupted study continues."""

import pytest

from tests.conftest import compose_cfg, mlflow_runs, tiny_overrides


def _cfg(tmp_path, n_trials):
    cfg = compose_cfg(*tiny_overrides(tmp_path, "trainer.epochs=3", "tracking.log_model=false",
                                      f"search.n_trials={n_trials}", f"search.storage=sqlite:///{tmp_path / 'optuna.db'}",
                                      "search.pruner_startup_trials=1", "search.pruner_warmup_epochs=0"))
    # a range wide enough that some trials barely learn, so the median pruner has something to prune
    cfg.search.space["optimizer.lr"] = {"type": "float", "low": 1.0e-7, "high": 1.0e-1, "log": True}
    return cfg


@pytest.mark.slow
def test_search_prunes_and_nests_trials_and_resumes_its_study(tmp_path):
    import optuna

    from mlabel_exp.search import search

    study = search(_cfg(tmp_path, 4))
    states = [t.state for t in study.trials]
    assert len(states) == 4 and optuna.trial.TrialState.PRUNED in states
    assert optuna.trial.TrialState.COMPLETE in states
    client, runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("mlabel.kind") == "sweep"]
    trials = [r for r in runs if "mlabel.kind" not in r.data.tags]
    assert len(trials) == 4 and {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    pruned = [r for r in trials if r.data.tags.get("pruned") == "true"]
    assert len(pruned) == states.count(optuna.trial.TrialState.PRUNED)
    assert {r.info.status for r in pruned} == {"KILLED"}
    # the same command again continues the stored study up to the new total
    again = search(_cfg(tmp_path, 5))
    assert len(again.trials) == 5 and again.study_name == study.study_name
