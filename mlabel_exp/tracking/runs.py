"""A run's lifecycle in MLflow: start (or attach to, on resume) a run, record what it produces, end it with a status.
``Tracker`` is one run; ``NullTracker`` stands in where nothing is recorded. One MLflow run per Hydra job, named
after the model and the overrides; what a training run records is in ``tracking.record``."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

from mlabel_exp.config import PACKAGE_DIR
from mlabel_exp.tracking.client import check_writable, client, experiment_id, resolve_uri
from mlabel_exp.tracking.pyfunc import log_model

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow 3's param value limit is 6000 characters
BEST_SCORE = "val/best_mAP"  # a run's headline figure (its best validation mAP), which sweeps and compare rank by
KIND_TAG = "mlabel.kind"  # set on runs that are not training runs: "sweep" (parents), "comparison"
VERSION_TAG = "mlabel.version"  # the installed package's version, on every run


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their JSON text."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = json.dumps(d) if isinstance(d, (list, tuple)) else d
    return out


def git_commit(package_dir: Path = PACKAGE_DIR) -> str | None:
    """HEAD of the git checkout the package's own files are tracked in; None for an installed copy (a wheel in
    site-packages, an unpacked sdist), also one that lies inside some other checkout (a virtualenv in a repository)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=package_dir, capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "--", "__init__.py")  # fails unless this very file is tracked
        return git("rev-parse", "HEAD") or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlabel-exp")
    except PackageNotFoundError:  # a checkout on PYTHONPATH that was never installed
        return "unknown"


class Tracker:
    """One MLflow run: ``start`` it, report metrics per epoch, add artifacts, ``end`` with a status."""

    def __init__(self, uri: str | None, experiment: str, artifact_location: str | None = None):
        self.uri = resolve_uri(uri)
        check_writable(self.uri)
        self.run_id: str | None = None
        self.model_location: str | None = None  # where log_model put the run's model
        self.client = client(self.uri, create=True)
        self.experiment_id = experiment_id(self.uri, experiment, artifact_location)

    def start(self, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        from mlflow.entities import Param

        commit = git_commit()
        tags = {"mlflow.runName": run_name, VERSION_TAG: package_version(), "hostname": socket.gethostname(),
                **({"mlflow.source.git.commit": commit} if commit else {}), **tags}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        log.info("MLflow run %s (%s) in experiment %s at %s", self.run_id, run_name, self.experiment_id, self.uri)
        return self.run_id

    def attach(self, run_id: str, params: dict[str, Any] | None = None) -> None:
        """Continue an existing run (resume): same run id, status back to RUNNING; ``params``: settings the resume adds
        (resume.length_params). MLflow never changes a logged param: one already logged with another value (a resume
        that ended before its first epoch, retried with another length) is a tag of the same name instead."""
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        logged = self.client.get_run(run_id).data.params if params else {}
        new = {k: v for k, v in (params or {}).items() if k not in logged}
        if new:
            from mlflow.entities import Param

            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in new.items()])
        self.set_tags({k: v for k, v in (params or {}).items() if k in logged and logged[k] != str(v)})
        log.info("MLflow run %s resumed at %s", run_id, self.uri)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

    def log_datasets(self, name: str, source: Path, digests: dict[str, str]) -> None:
        """The data the run used, with MLflow's dataset API (the UI's Dataset column): one entry per split (context
        train / validation / test), each with the digest of its images and labels; ``source`` is the data root."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [DatasetInput(MetaDataset(LocalArtifactDatasetSource(str(source)), name=name, digest=digest)
                               ._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
                  for context, digest in digests.items()]
        self.client.log_inputs(self.run_id, datasets=inputs)

    def log_model(self, checkpoint: Path, classes: list[str], input_size: int, timm: bool = False) -> str:
        """The run's MLflow pyfunc model (tracking.pyfunc; ``timm``: a timm model, which needs timm to load); returns
        its URI."""
        model_uri, self.model_location = log_model(self.client, self.uri, self.run_id, checkpoint, classes, timm)
        return model_uri

    def stored_file(self, path: str, in_model: bool = False) -> Path | None:
        """The file on this machine that holds the run's artifact ``path`` (with ``in_model``: the logged model's,
        e.g. artifacts/best.pt), where the store keeps artifacts in a local folder; None for a server or an object
        store."""
        from mlflow.utils.file_utils import local_file_uri_to_path

        location = self.model_location if in_model else self.client.get_run(self.run_id).info.artifact_uri
        if not location or urllib.parse.urlparse(location).scheme not in ("", "file"):
            return None
        file = Path(local_file_uri_to_path(location)) / path
        return file if file.is_file() else None


def _nothing(self, *args, **kwargs) -> None:
    return None


class NullTracker:
    """Stands in when ``tracking.enabled=false`` and on DDP ranks but 0: Tracker's recording methods, recording
    nothing. Explicit names, so that a misspelt call fails here as it would on a real Tracker."""

    run_id = None
    start = attach = log_metrics = set_tags = log_artifact = log_artifacts = log_text = _nothing
    end = log_model = log_datasets = stored_file = _nothing


def open_tracker(cfg) -> Tracker | NullTracker:
    if not cfg.enabled:
        return NullTracker()
    return Tracker(cfg.uri, cfg.experiment, cfg.artifact_location)


def log_files(uri: str | None, run_id: str, paths: list[Path], artifact_path: str) -> None:
    """Attach files to an existing run (e.g. predictions made after training)."""
    store = client(uri)
    for p in paths:
        store.log_artifact(run_id, str(p), artifact_path)


def log_metrics_to_run(uri: str | None, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Add metrics to an existing run (e.g. diagnostics computed after training) at ``step``."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client(uri).log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def file_run(uri: str, experiment: str, name: str, tags: dict[str, str], params: dict[str, Any],
             files: list[Path], metrics: dict[str, float] | None = None) -> str:
    """A run that holds only ``files`` (a comparison's table and figures) and a few single ``metrics``: FINISHED once
    they are all logged, FAILED if one cannot be. Returns its id."""
    tracker = Tracker(uri, experiment)
    tracker.start(name, tags, params)
    try:
        if metrics:
            tracker.log_metrics(metrics, step=0)
        for path in files:
            tracker.log_artifact(path)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return tracker.run_id


AUDIT = "audit"  # the KIND_TAG of a data audit's run (python -m mlabel_exp.inspect)


def log_audit(tracking_cfg, experiment: str, name: str, params: dict[str, Any], files: list[Path]) -> str:
    """A data audit as a run tagged mlabel.kind=audit in ``experiment`` (the data set's): its report and figures."""
    return file_run(tracking_cfg.uri, experiment, name, {KIND_TAG: AUDIT}, params, files)
