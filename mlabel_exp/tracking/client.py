"""The MLflow store: where it is (URI resolution), whether it can be written, and the one client every part of the
package uses on it (writers and readers alike, one per store).

Default store: SQLite at ``<project root>/mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts``
(MLflow 3 refuses a plain ./mlruns file store). ``tracking.uri=http://HOST:PORT`` switches to a server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from mlabel_exp.config import project_root
from mlabel_exp.errors import ConfigError
from mlabel_exp.fsutil import file_lock
from mlabel_exp.render.shell import command, script

logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
logging.getLogger("alembic").setLevel(logging.WARNING)

# The MLflow 3 UI opens an experiment on its GenAI view unless the URL asks for the model-training one (3.17 reads
# the view from the URL or the browser's last choice, not from the experiment); the experiment tag below is what its
# own "experiment type" selector writes, kept for UIs that read it.
UI_VIEW = "workflowType=machine_learning"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
LOCAL_UI = "http://127.0.0.1:5000"


def ui_command(uri: str) -> str:
    """How to look at a local store, as a command that runs as printed (this environment's mlflow, whether or not it
    is on the PATH; render.shell); one web worker starts in seconds on 2 busy cores, the default 4 take a minute."""
    return command(*script("mlflow"), "ui", "--backend-store-uri", uri, "--workers", "1", "--port", "5000")


# The runs table as the project's link opens it. MLflow 3.17's UI takes the table's sort from the URL (orderByKey,
# orderByAsc) and its columns from the browser's stored view state, first visit: Source, Models, Dataset, no metric;
# a "shared view" is the one way a link sets both: ?viewStateShareKey=KEY loads the JSON in the experiment tag
# mlflow.sharedViewState.KEY (search facets and UI state: selectedColumns, columnWidths, ...), unless the URL already
# holds a sort or filter. docs/mlflow-ui.md says how this was found.
BEST_METRIC = "val/best_mAP"
VIEW_KEY = "mlabel-best-first"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's column and sort keys (makeCanonicalSortKey)


def runs_view() -> dict:
    """The runs table's view: best val mAP first, the key metrics and settings as columns in that order (a column's
    width applies only to one listed in columnOrder), run names not cut short."""
    columns = [_column("metrics", k) for k in (BEST_METRIC, "test/mAP")]
    columns += [_column("params", k) for k in ("model.name", "dropout_value", "weight_decay_value", "optimizer.lr",
                                               "seed")]
    name = _column("attributes", "Run Name")
    return {"orderByKey": _column("metrics", BEST_METRIC), "orderByAsc": False, "selectedColumns": columns,
            "columnOrder": [name, *columns], "columnWidths": {name: 300, **{c: 120 for c in columns}}}


def run_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI page of a run, or of the experiment's runs table sorted by best val mAP with the key columns showing
    (the shared view ``runs_view``, stored on the experiment by ``experiment_id``); on the model-training view."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&{UI_VIEW}"


def default_uri() -> str:
    return f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def resolve_sqlite(uri: str) -> str:
    """A relative ``sqlite:///path`` resolves against the project root, not the job folder."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{project_root() / uri[len('sqlite:///'):]}"
    return uri


def resolve_uri(uri: str | None) -> str:
    """The tracking URI: the default SQLite store, or ``uri`` with a relative SQLite path resolved."""
    return resolve_sqlite(uri) if uri else default_uri()


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def store_exists(uri: str | None) -> bool:
    """Whether a local store's database file is there (a server's store: assumed to be)."""
    db = _sqlite_path(resolve_uri(uri))
    return db is None or db.exists()


@contextlib.contextmanager
def store_lock(uri: str):
    """Serialise first-time creation of a SQLite store (schema migration) across processes."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return

    with file_lock(db.parent / ".mlflow-db.lock"):
        yield


def check_writable(uri: str) -> None:
    """Fail before training when a local store cannot be written; names the path and the setting."""
    db = _sqlite_path(uri)
    if db is None:
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=db.parent):
            pass
    except OSError as e:
        raise ConfigError(f"tracking.uri={uri!r}: cannot write to {db.parent} ({e.strerror}); choose a writable "
                          "location, e.g. tracking.uri=sqlite:////tmp/mlruns/mlflow.db") from e


_CLIENTS: dict[str, Any] = {}


def client(uri: str | None, create: bool = False):
    """The MlflowClient of the store at ``uri`` (resolved), one per store and process. ``create``: a local store that
    is not there yet is created (a run's writer); without it, a wrong local path is an error, never a new empty store
    (readers). The registry is the store's own, whatever the environment says."""
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(uri)
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        if not create:
            raise ConfigError(f"tracking URI {uri!r}: no MLflow store at {db}; pass the store the runs were logged "
                              f"to (tracking.uri=, default {default_uri()})")
        _CLIENTS.pop(uri, None)  # a store removed since: a new client creates it again
    if uri not in _CLIENTS:
        with store_lock(uri):  # the client creates (migrates) the SQLite schema: one process at a time
            _CLIENTS[uri] = MlflowClient(uri, registry_uri=uri)
    return _CLIENTS[uri]


def experiment_id(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name`` in the store at ``uri``, created on first use (artifacts beside a local store),
    tagged as a model-training experiment for the UI, with the runs table's view (``runs_view``)."""
    import json

    import mlflow

    mlflow_client = client(uri, create=True)
    wanted = {**EXPERIMENT_KIND, VIEW_TAG: json.dumps(runs_view())}
    with store_lock(uri):
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            if artifact_location is None and _sqlite_path(uri) is not None:
                artifact_location = (_sqlite_path(uri).parent / "artifacts").as_uri()
            try:
                return mlflow_client.create_experiment(name, artifact_location, wanted)
            except mlflow.exceptions.MlflowException:  # created meanwhile by a job on another node
                return mlflow_client.get_experiment_by_name(name).experiment_id
        for k, v in wanted.items():  # an experiment made before (or by another version): brought up to date
            if exp.tags.get(k) != v:
                mlflow_client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id


@contextlib.contextmanager
def quiet_logger(name: str = "mlabel_exp.tracking.runs"):
    """No INFO lines from the logger ``name``: by default the run lifecycle's "MLflow run ...", for a command that names
    its run once, at the end (compare)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def quiet_downloads():
    """No progress bar per file (one per compared run would flood the output), unless the user set one."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)
