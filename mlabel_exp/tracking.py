"""MLflow: the only module that imports mlflow.

Default store: SQLite at ``<project root>/mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts``
(MLflow 3 refuses a plain ./mlruns file store). ``tracking.uri=http://HOST:PORT`` switches to a server.
One MLflow run per Hydra job, named after the model and the overrides.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .config import ConfigError, project_root

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow 3's param value limit is 6000 characters


def default_uri() -> str:
    return f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def resolve_uri(uri: str | None) -> str:
    """The tracking URI; a relative sqlite path resolves against the project root, not the job folder."""
    if not uri:
        return default_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{project_root() / uri[len('sqlite:///'):]}"
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialise first-time creation of a SQLite store (schema migration) across processes."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".mlflow-db.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their JSON text."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = json.dumps(d) if isinstance(d, (list, tuple)) else d
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracker:
    """One MLflow run: ``start`` it, report metrics per epoch, add artifacts, ``end`` with a status."""

    def __init__(self, uri: str | None, experiment: str, artifact_location: str | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = resolve_uri(uri)
        check_writable(self.uri)
        self.client = MlflowClient(self.uri)
        self.run_id: str | None = None
        with _store_lock(self.uri):
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                if artifact_location is None and _sqlite_path(self.uri) is not None:
                    artifact_location = (_sqlite_path(self.uri).parent / "artifacts").as_uri()
                try:
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location)
                except mlflow.exceptions.MlflowException:  # created meanwhile by a job on another node
                    self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
            else:
                self.experiment_id = exp.experiment_id

    def start(self, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        from mlflow.entities import Param, RunTag

        tags = {"mlflow.runName": run_name, "mlflow.source.git.commit": git_commit() or "unknown",
                "hostname": socket.gethostname(), **tags}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        log.info("MLflow run %s (%s) in experiment %s at %s", self.run_id, run_name, self.experiment_id, self.uri)
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)


class NullTracker:
    """Stands in when ``tracking.enabled=false``: the same interface, nothing recorded."""

    run_id = None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def open_tracker(cfg) -> Tracker | NullTracker:
    if not cfg.enabled:
        return NullTracker()
    return Tracker(cfg.uri, cfg.experiment, cfg.artifact_location)
