"""Short run ids (tracking.run_ids) against a real SQLite MLflow store whose runs are made with MlflowClient (no
training): a full id, a unique prefix, latest, best, and a sweep parent's id standing for its winning run."""

from types import SimpleNamespace

import pytest

from mlabel_exp.errors import ConfigError
from mlabel_exp.tracking.run_ids import match_prefix, resolve_run, sweep_parent_id
from mlabel_exp.tracking.runs import BEST_SCORE, KIND_TAG


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """old (0.7), new (0.5, the finished one that ended last), running (0.9, newest of all), a closed sweep parent of
    old and new (best_run_id: old), an open one whose child has no score yet, a comparison run."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('run_ids') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("mlabel-exp")
    runs = {}

    def run(name, status="FINISHED", score=None, start=0, **tags):
        r = client.create_run(exp, start_time=1000 + start, run_name=name, tags=tags)
        if score is not None:
            client.log_metric(r.info.run_id, BEST_SCORE, score)
        if status != "RUNNING":
            client.set_terminated(r.info.run_id, status)
        runs[name] = r.info.run_id

    run("sweep", score=0.7, start=0, **{KIND_TAG: "sweep", "sweep_id": "multirun_a"})
    run("old", score=0.7, start=1, sweep_id="multirun_a")
    run("new", score=0.5, start=2, sweep_id="multirun_a")
    client.set_tag(runs["sweep"], "best_run_id", runs["old"])
    for child in ("old", "new"):
        client.set_tag(runs[child], "mlflow.parentRunId", runs["sweep"])
    run("running", "RUNNING", score=0.9, start=3)
    run("open sweep", "RUNNING", start=4, **{KIND_TAG: "sweep", "sweep_id": "multirun_b"})
    run("unscored", "RUNNING", start=5, **{"mlflow.parentRunId": runs["open sweep"], "sweep_id": "multirun_b"})
    run("comparison", start=6, **{KIND_TAG: "comparison"})
    return SimpleNamespace(uri=uri, client=client, ids=runs)


def _unused_prefix(ids) -> str:
    return next(p for p in (f"{a}{b}" for a in "0123456789abcdef" for b in "0123456789abcdef")
                if not any(i.startswith(p) for i in ids))


def test_a_full_id_or_a_unique_prefix_names_that_run(store):
    new = store.ids["new"]
    assert resolve_run(store.uri, "mlabel-exp", new) == new
    assert resolve_run(store.uri, "mlabel-exp", new[:10]) == new
    assert resolve_run(store.uri, "mlabel-exp", new[:10].upper()) == new


def test_latest_is_the_newest_finished_training_run_and_best_the_highest_best_val_map(store):
    assert resolve_run(store.uri, "mlabel-exp", "latest") == store.ids["new"]  # not the running one, nor a comparison
    assert resolve_run(store.uri, "mlabel-exp", "best") == store.ids["old"]


def test_latest_is_the_finished_training_run_that_ended_last_not_the_one_that_started_last(store):
    """Right after a long run ends, a smoke run that started later but ended earlier is not `latest`; neither is a run
    still going, a failed run that ended after it, nor a comparison; a tie of end times goes to the later start."""
    exp = store.client.create_experiment("ended")

    def run(name, start, end=None, status="FINISHED", **tags):
        r = store.client.create_run(exp, start_time=start, run_name=name, tags=tags)
        if end is not None:
            store.client.set_terminated(r.info.run_id, status, end_time=end)
        return r.info.run_id

    long = run("long", start=1_000, end=9_000)
    run("smoke", start=2_000, end=3_000)
    run("still running", start=4_000)
    run("failed", start=5_000, end=9_500, status="FAILED")
    run("comparison", start=6_000, end=9_900, **{KIND_TAG: "comparison"})
    assert resolve_run(store.uri, "ended", "latest") == long
    tie = run("same end, later start", start=1_500, end=9_000)
    assert resolve_run(store.uri, "ended", "latest") == tie


def test_compare_sweep_latest_is_the_sweep_whose_job_finished_last():
    """Sweep a started first and ended last; b started later and ended first; c's one job failed after both."""
    from mlabel_exp.comparison.compare import latest_sweep

    def job(sweep, start, end, status="FINISHED"):
        return {"tags": {"sweep_id": sweep}, "status": status, "start_time": start, "end_time": end}

    runs = [job("a", 0, 500), job("a", 10, 9_000), job("b", 100, 200), job("b", 110, 300),
            job("c", 200, 9_500, "FAILED"), {"tags": {}, "status": "FINISHED", "start_time": 300, "end_time": 9_900}]
    assert latest_sweep(runs) == "a"
    assert latest_sweep([job("b", 100, 200, "FAILED"), job("c", 200, 0, "RUNNING")]) == "c"  # none finished
    assert latest_sweep(runs[-1:]) is None


def test_a_sweep_parent_stands_for_its_winning_run(store):
    assert resolve_run(store.uri, "mlabel-exp", store.ids["sweep"]) == store.ids["old"]
    assert resolve_run(store.uri, "mlabel-exp", store.ids["sweep"][:12]) == store.ids["old"]
    with pytest.raises(ConfigError, match=r"run=\w+: run \w+ is the parent of sweep multirun_b, none of whose 1 "
                                          r"run\(s\) has a val/best_mAP yet"):
        resolve_run(store.uri, "mlabel-exp", store.ids["open sweep"])


def test_a_failure_is_one_line_naming_the_setting_the_experiment_and_the_store(store, tmp_path):
    unused = _unused_prefix(store.ids.values())
    with pytest.raises(ConfigError, match=f"resume={unused}: no run of experiment 'mlabel-exp' at sqlite:///"):
        resolve_run(store.uri, "mlabel-exp", unused, setting="resume")
    with pytest.raises(ConfigError, match=r"run=latest: no experiment 'other' at .*experiments there: .*mlabel-exp.*"
                                          r"set tracking.experiment=NAME"):
        resolve_run(store.uri, "other", "latest")
    with pytest.raises(ConfigError, match=r"run=\w+: run \w+ is a comparison \(mlabel.kind=comparison\)"):
        resolve_run(store.uri, "mlabel-exp", store.ids["comparison"])
    nowhere = tmp_path / "none" / "mlflow.db"
    with pytest.raises(ConfigError, match=f"run=latest: no MLflow store at sqlite:///{nowhere}; set tracking.uri="):
        resolve_run(f"sqlite:///{nowhere}", "mlabel-exp", "latest")
    assert not nowhere.exists()


def test_an_ambiguous_prefix_lists_the_candidates():
    runs = [{"run_id": f"ab{i}" + "0" * 29, "name": f"run {i}"} for i in range(7)] + [{"run_id": "c" * 32, "name": ""}]
    assert match_prefix(runs, "ab3", "run", "here")["name"] == "run 3"
    with pytest.raises(ConfigError, match=r"^run=ab: 7 runs of here have an id starting with 'ab' \(ab000000 \(run 0\), "
                                          r"ab100000 \(run 1\), .*ab400000 \(run 4\), \.\.\.\); give more of the id$"):
        match_prefix(runs, "ab", "run", "here")


def test_compare_takes_a_sweep_by_its_parent_runs_id():
    parent = {"run_id": "f" * 32, "name": "sweep", "tags": {KIND_TAG: "sweep", "sweep_id": "multirun_a"}}
    child = {"run_id": "e" * 32, "name": "a", "tags": {"sweep_id": "multirun_a"}}
    assert sweep_parent_id([parent, child], "fff", "here") == "multirun_a"
    assert sweep_parent_id([parent, child], "eee", "here") is None  # not a sweep parent's: maybe a sweep_id
