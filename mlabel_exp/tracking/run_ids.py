"""Short run ids, wherever a command names a run (predict, diagnose and export ``run=``, run ``resume=``, compare
``sweep=``): a full id, any unique prefix of one, ``latest`` (the FINISHED training run that ended last: the one whose
end a user has just seen, even where another run started later and is still going or ended earlier), ``best`` (the
finished training run with the highest best val mAP); a sweep parent's id stands for its winning run. ``resume=latest``
is not this: an unfinished run has no end time, so it takes the newest run with a last.pt, finished or not
(query.find_resumable). Every failure is one line naming the setting, the experiment and the store."""

from __future__ import annotations

import logging
import re

from mlabel_exp.errors import ConfigError
from mlabel_exp.tracking.client import client, resolve_uri, store_exists
from mlabel_exp.tracking.query import list_runs, run_record
from mlabel_exp.tracking.runs import BEST_SCORE, KIND_TAG

log = logging.getLogger(__name__)

FULL_ID = re.compile(r"[0-9a-f]{32}")
SHOWN = 5  # candidates an ambiguous prefix lists


def _store(uri: str | None, setting: str, ref: str) -> str:
    """The resolved URI of an existing store: a wrong local path is this setting's error, never a new empty store."""
    uri = resolve_uri(uri)
    if not store_exists(uri):
        raise ConfigError(f"{setting}={ref}: no MLflow store at {uri}; set tracking.uri= to the store the run was "
                          "logged to")
    return uri


def _experiment_runs(uri: str, experiment: str, setting: str, ref: str, experiment_setting: str) -> list[dict]:
    names = sorted(e.name for e in client(uri).search_experiments())
    if experiment not in names:
        raise ConfigError(f"{setting}={ref}: no experiment {experiment!r} at {uri} (experiments there: "
                          f"{', '.join(names) or 'none'}); set {experiment_setting}=NAME")
    return list_runs(uri, experiment)


def _training(runs: list[dict]) -> list[dict]:
    return [r for r in runs if KIND_TAG not in r["tags"] and r["status"] == "FINISHED"]


def ended_last(finished: list[dict]) -> dict:
    """The run of ``finished`` that ended last (the later start breaks a tie of end times)."""
    return max(finished, key=lambda r: (r["end_time"], r["start_time"]))


def _short(run: dict) -> str:
    return f"{run['run_id'][:8]} ({run['name']})" if run.get("name") else run["run_id"][:8]


def match_prefix(runs: list[dict], ref: str, setting: str, where: str) -> dict:
    """The one run whose id starts with ``ref``; one line listing the candidates when several do, or saying where
    none does."""
    found = [r for r in runs if r["run_id"].startswith(ref.lower())]
    if len(found) > 1:
        listed = ", ".join(_short(r) for r in found[:SHOWN]) + (", ..." if len(found) > SHOWN else "")
        raise ConfigError(f"{setting}={ref}: {len(found)} runs of {where} have an id starting with {ref!r} "
                          f"({listed}); give more of the id")
    if not found:
        raise ConfigError(f"{setting}={ref}: no run of {where} has an id starting with {ref!r} (run ids: MLflow UI, "
                          "or the line a run prints when it ends)")
    return found[0]


def _named(uri: str, experiment: str, ref: str, setting: str, experiment_setting: str) -> dict:
    """The run ``ref`` names: latest, best, a full id (in any experiment) or a prefix (in ``experiment``)."""
    if FULL_ID.fullmatch(ref):
        import mlflow

        try:
            return run_record(client(uri).get_run(ref))
        except mlflow.exceptions.MlflowException:
            raise ConfigError(f"{setting}={ref}: no such run at {uri} (check tracking.uri)") from None
    runs = _experiment_runs(uri, experiment, setting, ref, experiment_setting)
    where = f"experiment {experiment!r} at {uri}"
    if ref in ("latest", "best"):
        finished = _training(runs)
        if ref == "best":
            finished = [r for r in finished if BEST_SCORE in r["metrics"]]
        if not finished:
            raise ConfigError(f"{setting}={ref}: no finished training run in {where}")
        return (max(finished, key=lambda r: r["metrics"][BEST_SCORE]) if ref == "best" else ended_last(finished))
    return match_prefix(runs, ref, setting, where)


def winner(uri: str, parent: dict, setting: str, ref: str) -> str:
    """The winning run of a sweep: the best_run_id its parent was closed with, else its best child so far."""
    if parent["tags"].get("best_run_id"):
        return parent["tags"]["best_run_id"]
    store = client(uri)
    experiment_id = store.get_run(parent["run_id"]).info.experiment_id
    children = [run_record(r) for r in store.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent['run_id']}'", max_results=1000)]
    scored = [c for c in children if BEST_SCORE in c["metrics"]]
    if not scored:
        raise ConfigError(f"{setting}={ref}: run {parent['run_id']} is the parent of sweep "
                          f"{parent['tags'].get('sweep_dir', parent['tags'].get('sweep_id', ''))}, none of whose "
                          f"{len(children)} run(s) has a {BEST_SCORE} yet; name one of its runs instead")
    return max(scored, key=lambda c: c["metrics"][BEST_SCORE])["run_id"]


def resolve_run(uri: str | None, experiment: str, ref: str, setting: str = "run",
                experiment_setting: str = "tracking.experiment") -> str:
    """The full id of the training run ``ref`` names (see the module's docstring); ``setting`` and
    ``experiment_setting`` are how messages name what the user typed."""
    ref = str(ref).strip()
    uri = _store(uri, setting, ref)
    run = _named(uri, experiment, ref, setting, experiment_setting)
    kind = run["tags"].get(KIND_TAG)
    if kind == "sweep":
        run_id = winner(uri, run, setting, ref)
        log.info("%s=%s: sweep parent %s stands for its winning run %s", setting, ref, run["run_id"], run_id)
        return run_id
    if kind is not None:
        raise ConfigError(f"{setting}={ref}: run {run['run_id']} is a {kind} ({KIND_TAG}={kind}), not a training run")
    if ref != run["run_id"]:
        log.info("%s=%s: run %s (%s)", setting, ref, run["run_id"], run["name"])
    return run["run_id"]


def sweep_parent_id(runs: list[dict], ref: str, where: str) -> str | None:
    """The sweep_id of the sweep whose parent run's id starts with ``ref`` (compare ``sweep=<parent id>``); None when
    no sweep parent's does (``ref`` may then be a sweep_id tag)."""
    parents = [r for r in runs if r["tags"].get(KIND_TAG) == "sweep" and r["tags"].get("sweep_id")]
    if not any(r["run_id"].startswith(ref.lower()) for r in parents):
        return None
    return match_prefix(parents, ref, "sweep", where)["tags"]["sweep_id"]


def newest_experiment(uri: str | None, experiment: str | None, setting: str = "tracking.experiment") -> str:
    """``experiment``, or where none is given (compare, predict: commands without data settings) the experiment of the
    newest run in the store, a comparison's excepted: where the last run, search or audit landed (a run's experiment
    is its data set's name, config.experiment_name)."""
    if experiment:
        return experiment
    uri = resolve_uri(uri)
    if not store_exists(uri):  # the command's own check names the missing store
        return ""
    store = client(uri)
    ids = {e.experiment_id: e.name for e in store.search_experiments() if not e.name.endswith("-comparisons")}
    runs = store.search_runs(list(ids), order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    if not runs:
        raise ConfigError(f"{setting} is not set and the store at {uri} holds no run to take it from; "
                          f"set {setting}=NAME (a data set's name: python -m mlabel_exp.run prints it)")
    name = ids[runs[0].info.experiment_id]
    log.info("%s not set: using %r, the experiment of the newest run at %s", setting, name, uri)
    return name
