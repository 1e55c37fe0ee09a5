"""Reading runs back from an existing store: runs as plain dicts, metric histories and artifacts (compare, predict),
and the runs a resume may continue."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mlabel_exp.errors import ConfigError
from mlabel_exp.tracking.client import client, quiet_downloads, resolve_uri, store_exists
from mlabel_exp.tracking.runs import KIND_TAG, Tracker


def run_record(run) -> dict[str, Any]:
    """An MLflow run as a plain dict: run_id, name, status, start_time and end_time (ms; end_time 0 while it runs),
    tags, params, metrics (last values), and datasets: the digest of each data set it logged, by context (train,
    validation, test; record.dataset_digests)."""
    info, data = run.info, run.data
    return {"run_id": info.run_id, "name": info.run_name or data.tags.get("mlflow.runName", ""),
            "status": info.status, "start_time": info.start_time or 0, "end_time": info.end_time or 0,
            "tags": dict(data.tags), "params": dict(data.params), "metrics": dict(data.metrics),
            "datasets": dataset_digests(run)}


def dataset_digests(run) -> dict[str, str]:
    """{context: digest} of the data sets a run logged as inputs ({} for a run that logged none)."""
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    found = {}
    for entry in (run.inputs.dataset_inputs if run.inputs is not None else []):
        context = next((t.value for t in entry.tags if t.key == MLFLOW_DATASET_CONTEXT), "")
        found[context] = entry.dataset.digest
    return found


def list_runs(uri: str | None, experiment: str, filter_string: str | None = None) -> list[dict[str, Any]]:
    """Every run of ``experiment`` matching ``filter_string`` (any status), newest first, as ``run_record``s."""
    from mlflow.exceptions import MlflowException

    store = client(uri)
    exp = store.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in store.search_experiments())
        raise ConfigError(f"experiment={experiment!r} not found at {resolve_uri(uri)} (experiments there: "
                          f"{', '.join(names) or 'none'}); pass one of them with experiment=NAME")
    runs, token = [], None
    while True:
        try:
            page = store.search_runs([exp.experiment_id], filter_string or "", max_results=1000,
                                     order_by=["attributes.start_time DESC"], page_token=token)
        except MlflowException as e:
            raise ConfigError(f"filter={filter_string!r} is not a valid MLflow filter ({e.message}); "
                              "e.g. filter=\"params.model.name = 'resnet18'\"") from e
        runs += [run_record(r) for r in page]
        token = page.token
        if not token:
            return runs


def get_run(uri: str | None, run_id: str) -> dict[str, Any]:
    """One run, by its full id, as a ``run_record``."""
    return run_record(client(uri).get_run(run_id))


def run_tags(uri: str | None, run_id: str) -> dict[str, str]:
    """The tags of one run (its output_dir among them)."""
    return dict(client(uri).get_run(run_id).data.tags)


def metric_history(uri: str | None, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of a run, by step; the last value logged at a step wins."""
    by_step = {m.step: m.value for m in sorted(client(uri).get_metric_history(run_id, key), key=lambda m: m.timestamp)}
    return sorted(by_step.items())


def run_param(uri: str | None, run_id: str, key: str) -> str | None:
    """One param of a run, None where it has none."""
    return client(uri).get_run(run_id).data.params.get(key)


def artifact_text(uri: str | None, run_id: str, path: str) -> str | None:
    """The text of one artifact file of a run; None when the run has no such file."""
    store = client(uri)
    folder = os.path.dirname(path) or None
    if path not in {f.path for f in store.list_artifacts(run_id, folder) if not f.is_dir}:
        return None
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        return Path(store.download_artifacts(run_id, path, tmp)).read_text()


def download_artifact(uri: str | None, run_id: str, path: str, dst: Path) -> Path:
    """One artifact of a run, copied locally; the error names the run and the artifact."""
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client(uri).download_artifacts(run_id, path, str(dst)))
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError(f"run={run_id!r}: cannot read artifact {path!r} from {resolve_uri(uri)} ({e.message}); "
                          "check the run id (MLflow UI) and tracking.uri, or pass checkpoint=<path>") from None


def download_best_checkpoint(uri: str | None, run_id: str, dst: Path) -> tuple[Path, str]:
    """A run's best.pt, copied locally, and where it came from: the run's checkpoints/best.pt (runs without a model,
    and runs of earlier versions), else its model's artifacts/best.pt (the one copy the store keeps by default)."""
    import mlflow

    try:
        listed = {f.path for f in client(uri).list_artifacts(run_id, "checkpoints")}
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError(f"run={run_id!r}: cannot read artifact checkpoints/best.pt from {resolve_uri(uri)} "
                          f"({e.message}); check the run id (MLflow UI) and tracking.uri, or pass "
                          "checkpoint=<path>") from None
    if "checkpoints/best.pt" in listed:
        return download_artifact(uri, run_id, "checkpoints/best.pt", dst), f"runs:/{run_id}/checkpoints/best.pt"
    source = f"runs:/{run_id}/model/artifacts/best.pt"
    # MLflow 3 finds a run's logged model through the default store whatever tracking_uri a download is given: in a
    # fresh process (python -m mlabel_exp.predict) that is ./mlflow.db, which it would create, and where the model is not
    mlflow.set_tracking_uri(resolve_uri(uri))
    try:
        with quiet_downloads():
            path = mlflow.artifacts.download_artifacts(source, dst_path=str(dst), tracking_uri=resolve_uri(uri))
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError(f"run={run_id!r}: no best checkpoint in {resolve_uri(uri)}: neither checkpoints/best.pt nor "
                          f"a model holding one ({e.message}); the run may have logged none (tracking.log_checkpoints="
                          "none, or trainer.checkpoint=false): pass checkpoint=<path to its best.pt>") from None
    return Path(path), source


# ------------------------------------------------------------------ runs a resume may continue

def preempted_runs(tracking_cfg, identity: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """(run id, tags) of the runs that may be this job's, stopped by its scheduler, newest first: KILLED and tagged
    preempted=true, and under a scheduler also RUNNING ones of its job id (killed before they could stop cleanly: a
    node failure, a time limit reached during the clean stop). Selected in the store by the job's scheduler id, sweep
    and job number where it has them; none where tracking is off or the store or experiment does not exist yet."""
    if not tracking_cfg.enabled or not store_exists(tracking_cfg.uri):
        return []
    store = client(tracking_cfg.uri)
    exp = store.get_experiment_by_name(tracking_cfg.experiment)
    if exp is None:
        return []
    same = "".join(f" and tags.{k} = '{identity[k]}'" for k in ("scheduler_job", "sweep_id", "job_num")
                   if identity.get(k) and "'" not in identity[k])
    queries = ["attributes.status = 'KILLED' and tags.preempted = 'true'" + same]
    if identity.get("scheduler_job"):
        queries.append("attributes.status = 'RUNNING'" + same)
    runs = [r for q in queries for r in store.search_runs([exp.experiment_id], q, max_results=1000)]
    return [(r.info.run_id, dict(r.data.tags)) for r in sorted(runs, key=lambda r: -(r.info.start_time or 0))]


LATEST_SEARCHED = 50  # resume=latest looks at this many of the newest runs


def find_resumable(tracking_cfg, run_id: str, why_not=lambda tags, latest: None) -> tuple[str, dict[str, str], str]:
    """(run id, tags, status) of ``run_id``, or when it is 'latest' of the training run that started last, finished or
    not, that ``why_not`` does not pass over, in the store and experiment of ``tracking_cfg`` (opened as a run opens
    it). A finished run continues too (to train it longer). ``why_not(tags, latest)`` names a reason to pass a run over
    (None: usable); for 'latest' it also says when a run has no checkpoint to continue from."""
    import mlflow

    if not tracking_cfg.enabled:
        raise ConfigError(f"resume={run_id!r}: runs are found and continued in MLflow; set tracking.enabled=true")
    tracker = Tracker(tracking_cfg.uri, tracking_cfg.experiment, tracking_cfg.artifact_location)
    store, uri = tracker.client, tracker.uri
    if run_id == "latest":
        runs = store.search_runs([tracker.experiment_id], "", order_by=["attributes.start_time DESC"],
                                  max_results=LATEST_SEARCHED)
        passed_over = []
        for r in runs:
            if KIND_TAG in r.data.tags:  # a sweep's parent, a comparison, an audit: nothing to continue
                continue
            reason = why_not(r.data.tags, True)
            if reason is None:
                return r.info.run_id, r.data.tags, r.info.status
            passed_over.append(f"{r.info.run_id} ({reason})")
        raise ConfigError(f"resume=latest: no resumable run among the {len(runs)} newest of experiment "
                          f"{tracker.experiment_id} at {uri}" + (f"; passed over: {'; '.join(passed_over[:5])}"
                                                                 if passed_over else "")
                          + ("; an older one: resume=<run id>" if len(runs) == LATEST_SEARCHED else ""))
    try:
        run = store.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"resume={run_id!r}: no such run at {uri} (check tracking.uri)") from None
    reason = why_not(run.data.tags, False)
    if reason is not None:
        raise ConfigError(f"resume={run_id!r}: {reason}")
    return run_id, run.data.tags, run.info.status
