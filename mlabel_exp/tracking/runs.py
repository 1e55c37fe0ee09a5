"""MLflow: the only module that imports mlflow.

Default store: SQLite at ``<project root>/mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts``
(MLflow 3 refuses a plain ./mlruns file store). ``tracking.uri=http://HOST:PORT`` switches to a server.
One MLflow run per Hydra job, named after the model and the overrides.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import tempfile
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

from mlabel_exp.config import PACKAGE_DIR, ConfigError, project_root

log = logging.getLogger(__name__)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
logging.getLogger("alembic").setLevel(logging.WARNING)

MAX_PARAM_CHARS = 6000  # MLflow 3's param value limit is 6000 characters
BEST_SCORE = "val/best_mAP"  # a run's headline figure (its best validation mAP), which sweeps and compare rank by
KIND_TAG = "mlabel.kind"  # set on runs that are not training runs: "sweep" (parents), "comparison"
# The MLflow 3 UI opens an experiment on its GenAI view unless the URL asks for the model-training one (3.17 reads
# the view from the URL or the browser's last choice, not from the experiment); the experiment tag below is what its
# own "experiment type" selector writes, kept for UIs that read it.
UI_VIEW = "workflowType=machine_learning"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
LOCAL_UI = "http://127.0.0.1:5000"


def ui_command(uri: str) -> str:
    """How to look at a local store (one web worker starts in seconds on 2 busy cores; the default 4 take a minute)."""
    return f"mlflow ui --backend-store-uri {uri} --workers 1 --port 5000"


def run_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI page of a run (or of the experiment's runs table), on the model-training view."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    page = f"experiments/{experiment_id}/runs/{run_id}" if run_id else f"experiments/{experiment_id}/runs"
    return f"{base}/#/{page}?{UI_VIEW}"


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


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialise first-time creation of a SQLite store (schema migration) across processes."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    from mlabel_exp.fsutil import file_lock

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


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their JSON text."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = json.dumps(d) if isinstance(d, (list, tuple)) else d
    return out


VERSION_TAG = "mlabel.version"  # the installed package's version, on every run


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
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = resolve_uri(uri)
        check_writable(self.uri)
        self.run_id: str | None = None
        self.model_location: str | None = None  # where log_model put the run's model
        with _store_lock(self.uri):  # the client creates (migrates) the SQLite schema: one process at a time
            self.client = MlflowClient(self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                if artifact_location is None and _sqlite_path(self.uri) is not None:
                    artifact_location = (_sqlite_path(self.uri).parent / "artifacts").as_uri()
                try:
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location, EXPERIMENT_KIND)
                except mlflow.exceptions.MlflowException:  # created meanwhile by a job on another node
                    self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
            else:
                self.experiment_id = exp.experiment_id
                if not set(EXPERIMENT_KIND) <= set(exp.tags):
                    for k, v in EXPERIMENT_KIND.items():
                        self.client.set_experiment_tag(self.experiment_id, k, v)

    def start(self, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        from mlflow.entities import Param, RunTag

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

    def find_resumable(self, run_id: str, why_not=lambda tags, latest: None) -> tuple[str, dict[str, str]]:
        """(run id, tags) of ``run_id``, or of the newest unfinished run when it is 'latest'; ``why_not(tags, latest)``
        names a reason to pass a run over (None: usable)."""
        if run_id == "latest":
            runs = self.client.search_runs([self.experiment_id], "attributes.status != 'FINISHED'",
                                           order_by=["attributes.start_time DESC"], max_results=50)
            passed_over = []
            for r in runs:
                reason = why_not(r.data.tags, True) if KIND_TAG not in r.data.tags else "not a training run"
                if reason is None:
                    return r.info.run_id, r.data.tags
                if KIND_TAG not in r.data.tags:
                    passed_over.append(f"{r.info.run_id} ({reason})")
            raise ConfigError(f"resume=latest: no resumable run in experiment {self.experiment_id} at {self.uri}"
                              + (f"; passed over: {'; '.join(passed_over[:5])}" if passed_over else ""))
        import mlflow

        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            raise ConfigError(f"resume={run_id!r}: no such run at {self.uri} (check tracking.uri)") from None
        if run.info.status == "FINISHED":
            raise ConfigError(f"resume={run_id!r}: that run already FINISHED; start a new run instead")
        reason = why_not(run.data.tags, False)
        if reason is not None:
            raise ConfigError(f"resume={run_id!r}: {reason}")
        return run_id, run.data.tags

    def sweep_parent(self, sweep_id: str, sweep_dir: str, name: str | None = None) -> str:
        """The parent run of a Hydra sweep, created by whichever job asks first.

        Jobs of one sweep run in other processes (joblib) or on other nodes (SLURM). On a local SQLite
        store the file lock makes creation one-at-a-time; on a server two jobs may both create one,
        so each then keeps the oldest parent and deletes its own extra.
        """
        query = _sweep_parent_query(sweep_id)

        def parents():
            runs = self.client.search_runs([self.experiment_id], query, max_results=10)
            return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

        with _store_lock(self.uri):
            found = parents()
            if found:
                return found[0].info.run_id
            name = name or f"sweep {Path(sweep_dir).name or sweep_id}"
            mine = self.client.create_run(self.experiment_id, run_name=name, tags={
                KIND_TAG: "sweep", "sweep_id": sweep_id, "sweep_dir": sweep_dir, "mlflow.runName": name})
        first = parents()[0].info.run_id
        if first != mine.info.run_id:
            self.client.delete_run(mine.info.run_id)
        return first

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        import time

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

    def log_figure(self, figure, artifact_file: str) -> None:
        """Log and close a matplotlib figure (pyplot keeps every open figure alive otherwise)."""
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, figure, artifact_file)
        plt.close(figure)

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

    def register(self, model_uri: str, name: str, alias: str | None = None) -> int:
        return register_model(self.uri, model_uri, name, alias)

    def log_model(self, checkpoint: Path, classes: list[str], input_size: int) -> str:
        """An MLflow pyfunc model at runs:/<id>/model: a batch of images (bytes) -> per-class probabilities, the labels
        at the run's thresholds and a per-row error (pyfunc_model.py). Returns the model's URI."""
        import mlflow
        import torch
        import torchvision
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        signature = ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                                   outputs=Schema([*(ColSpec("double", c) for c in classes), ColSpec("string", "labels"),
                                                   ColSpec("string", "error")]))
        mlflow.set_tracking_uri(self.uri)
        with (mlflow.start_run(run_id=self.run_id), _quiet_downloads(), _no_requirements_scan(),
              warnings.catch_warnings()):
            # The signature is given explicitly (bytes in, one probability per class out), so MLflow's advice to add
            # type hints or an input example (to infer one) does not apply: that is noise, and only that is silenced.
            for noise in ("Add type hints to the `predict` method", "input example was not provided"):
                warnings.filterwarnings("ignore", message=f".*{noise}.*")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")), artifacts={"checkpoint": str(checkpoint)},
                signature=signature, code_paths=[str(PACKAGE_DIR)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"torchvision=={torchvision.__version__.split('+')[0]}",
                                  "pillow", "numpy", "pandas", "omegaconf"])
        self.model_location = self.client.get_logged_model(info.model_id).artifact_location
        return info.model_uri

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


def register_model(uri: str | None, model_uri: str, name: str, alias: str | None = None) -> int:
    """A new version of the registered model ``name`` from ``model_uri`` (runs:/<id>/model or models:/...) in the
    store at ``uri``; ``alias`` (e.g. champion) moved to it. Returns the version."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints two lines of its own; ours follows
            version = int(mlflow.register_model(model_uri, name).version)
    except MlflowException as e:
        raise ConfigError(f"cannot register {model_uri} as {name!r}: {e.message} (a run logs its model with "
                          "tracking.log_model=true)") from e
    if alias:
        MlflowClient(uri).set_registered_model_alias(name, alias, str(version))
    log.info("registered model %s version %d%s: models:/%s/%d", name, version,
             f", alias @{alias}" if alias else "", name, version)
    return version


def _sweep_parent_query(sweep_id: str) -> str:
    """MLflow filter for the parent run of one sweep."""
    return f"tags.`{KIND_TAG}` = 'sweep' and tags.sweep_id = '{sweep_id}'"


def end_sweep_parent(tracking_cfg, sweep_id: str, status: str, summary: str) -> list[dict[str, Any]]:
    """Close a sweep's parent run (from the process that launched the sweep) with the winner on it: the best child's
    val mAP as a metric, its id and settings as tags and in the run description. Returns the children, best first."""
    db = _sqlite_path(resolve_uri(tracking_cfg.uri))
    if db is not None and not db.exists():  # no job got as far as starting a run: no store to create now
        return []
    tracker = Tracker(tracking_cfg.uri, tracking_cfg.experiment, tracking_cfg.artifact_location)
    children: list[dict[str, Any]] = []
    for run in tracker.client.search_runs([tracker.experiment_id], _sweep_parent_query(sweep_id), max_results=10):
        parent = run.info.run_id
        found = tracker.client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'",
                                           max_results=1000)
        children = sorted((_run_record(r) for r in found),
                          key=lambda r: -r["metrics"].get(BEST_SCORE, float("-inf")))
        best = next((c for c in children if BEST_SCORE in c["metrics"]), None)
        tags = {"summary": summary[:5000]}
        if best is not None:
            settings, score = best["tags"].get("overrides", ""), best["metrics"][BEST_SCORE]
            tracker.client.log_metric(parent, BEST_SCORE, score)
            tags |= {"best_run_id": best["run_id"], "best_run_name": best["name"], "best_settings": settings,
                     "mlflow.note.content": f"**Best of {len(children)} runs**: {best['name']} "
                                            f"(val mAP {score:.4f}; {settings}; "
                                            f"run {best['run_id']})\n\n{summary[:2000]}"}
        for k, v in tags.items():
            tracker.client.set_tag(parent, k, v)
        tracker.client.set_terminated(parent, status)
    return children


def download_artifact(uri: str | None, run_id: str, path: str, dst: Path) -> Path:
    """One artifact of a run, copied locally; the error names the run and the artifact."""
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(_reader(uri).download_artifacts(run_id, path, str(dst)))
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError(f"run={run_id!r}: cannot read artifact {path!r} from {resolve_uri(uri)} ({e.message}); "
                          "check the run id (MLflow UI) and tracking.uri, or pass checkpoint=<path>") from None


def preempted_runs(tracking_cfg, identity: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """(run id, tags) of the runs that may be this job's, stopped by its scheduler, newest first: KILLED and tagged
    preempted=true, and under a scheduler also RUNNING ones of its job id (killed before they could stop cleanly: a
    node failure, a time limit reached during the clean stop). Selected in the store by the job's scheduler id, sweep
    and job number where it has them; none where tracking is off or the store or experiment does not exist yet."""
    db = _sqlite_path(resolve_uri(tracking_cfg.uri))
    if not tracking_cfg.enabled or (db is not None and not db.exists()):
        return []
    client = _reader(tracking_cfg.uri)
    exp = client.get_experiment_by_name(tracking_cfg.experiment)
    if exp is None:
        return []
    same = "".join(f" and tags.{k} = '{identity[k]}'" for k in ("scheduler_job", "sweep_id", "job_num")
                   if identity.get(k) and "'" not in identity[k])
    queries = ["attributes.status = 'KILLED' and tags.preempted = 'true'" + same]
    if identity.get("scheduler_job"):
        queries.append("attributes.status = 'RUNNING'" + same)
    runs = [r for q in queries for r in client.search_runs([exp.experiment_id], q, max_results=1000)]
    return [(r.info.run_id, dict(r.data.tags)) for r in sorted(runs, key=lambda r: -(r.info.start_time or 0))]


def download_best_checkpoint(uri: str | None, run_id: str, dst: Path) -> tuple[Path, str]:
    """A run's best.pt, copied locally, and where it came from: the run's checkpoints/best.pt (runs without a model,
    and runs of earlier versions), else its model's artifacts/best.pt (the one copy the store keeps by default)."""
    import mlflow

    try:
        listed = {f.path for f in _reader(uri).list_artifacts(run_id, "checkpoints")}
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError(f"run={run_id!r}: cannot read artifact checkpoints/best.pt from {resolve_uri(uri)} "
                          f"({e.message}); check the run id (MLflow UI) and tracking.uri, or pass "
                          "checkpoint=<path>") from None
    if "checkpoints/best.pt" in listed:
        return download_artifact(uri, run_id, "checkpoints/best.pt", dst), f"runs:/{run_id}/checkpoints/best.pt"
    source = f"runs:/{run_id}/model/artifacts/best.pt"
    try:
        with _quiet_downloads():
            path = mlflow.artifacts.download_artifacts(source, dst_path=str(dst), tracking_uri=resolve_uri(uri))
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError(f"run={run_id!r}: no best checkpoint in {resolve_uri(uri)}: neither checkpoints/best.pt nor "
                          f"a model holding one ({e.message}); the run may have logged none (tracking.log_checkpoints="
                          "none, or trainer.checkpoint=false): pass checkpoint=<path to its best.pt>") from None
    return Path(path), source


def log_files(uri: str | None, run_id: str, paths: list[Path], artifact_path: str) -> None:
    """Attach files to an existing run (e.g. predictions made after training)."""
    client = _reader(uri)
    for p in paths:
        client.log_artifact(run_id, str(p), artifact_path)


def _nothing(self, *args, **kwargs) -> None:
    return None


class NullTracker:
    """Stands in when ``tracking.enabled=false`` and on DDP ranks but 0: Tracker's recording methods, recording
    nothing. Explicit names, so that a misspelt call fails here as it would on a real Tracker."""

    run_id = None
    start = attach = sweep_parent = log_metrics = set_tags = log_artifact = log_artifacts = log_text = _nothing
    end = log_model = log_datasets = register = stored_file = _nothing

    def log_figure(self, figure, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        plt.close(figure)


@contextlib.contextmanager
def quiet_logger(name: str = __name__):
    """No INFO lines from the logger ``name``: this module's "MLflow run ..." for a command that names its run once,
    at the end (compare)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(before)


def open_tracker(cfg) -> Tracker | NullTracker:
    if not cfg.enabled:
        return NullTracker()
    return Tracker(cfg.uri, cfg.experiment, cfg.artifact_location)


# ---- reading runs (compare)

_READERS: dict[str, Any] = {}


def _reader(uri: str | None):
    """A client on an existing store: a wrong local path is an error, never a new empty store."""
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(uri)
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"tracking URI {uri!r}: no MLflow store at {db}; pass the store the runs were logged to "
                          f"(--tracking-uri / tracking_uri=, default {default_uri()})")
    if uri not in _READERS:
        _READERS[uri] = MlflowClient(uri)
    return _READERS[uri]


def _run_record(run) -> dict[str, Any]:
    info, data = run.info, run.data
    return {"run_id": info.run_id, "name": info.run_name or data.tags.get("mlflow.runName", ""),
            "status": info.status, "start_time": info.start_time or 0,
            "tags": dict(data.tags), "params": dict(data.params), "metrics": dict(data.metrics)}


def list_runs(uri: str | None, experiment: str, filter_string: str | None = None) -> list[dict[str, Any]]:
    """Every run of ``experiment`` matching ``filter_string`` (any status), newest first, as plain dicts:
    run_id, name, status, start_time (ms), tags, params, metrics (last values)."""
    from mlflow.exceptions import MlflowException

    client = _reader(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(f"experiment={experiment!r} not found at {resolve_uri(uri)} (experiments there: "
                          f"{', '.join(names) or 'none'}); pass one of them with --experiment NAME")
    runs, token = [], None
    while True:
        try:
            page = client.search_runs([exp.experiment_id], filter_string or "", max_results=1000,
                                      order_by=["attributes.start_time DESC"], page_token=token)
        except MlflowException as e:
            raise ConfigError(f"filter={filter_string!r} is not a valid MLflow filter ({e.message}); "
                              "e.g. --filter \"params.model.name = 'resnet18'\"") from e
        runs += [_run_record(r) for r in page]
        token = page.token
        if not token:
            return runs


def metric_history(uri: str | None, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of a run, by step; the last value logged at a step wins."""
    by_step = {m.step: m.value for m in sorted(_reader(uri).get_metric_history(run_id, key), key=lambda m: m.timestamp)}
    return sorted(by_step.items())


def artifact_text(uri: str | None, run_id: str, path: str) -> str | None:
    """The text of one artifact file of a run; None when the run has no such file."""
    client = _reader(uri)
    folder = os.path.dirname(path) or None
    if path not in {f.path for f in client.list_artifacts(run_id, folder) if not f.is_dir}:
        return None
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def _no_requirements_scan():
    """MLflow checks a model's pip requirements against this environment by indexing the files of every installed
    distribution (importlib_metadata.packages_distributions: ~1 s, most of log_model). Ours are read from this very
    environment (torch and torchvision at their installed versions, the rest unpinned dependencies of this package),
    so that check cannot find a mismatch: it is skipped for our call. Should MLflow move it, nothing breaks; the test
    that guards this speed fails."""
    from unittest import mock

    from mlflow.utils import environment

    check = "warn_dependency_requirement_mismatches"
    if not hasattr(environment, check):
        return contextlib.nullcontext()
    return mock.patch.object(environment, check, lambda requirements: None)


@contextlib.contextmanager
def _quiet_downloads():
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
