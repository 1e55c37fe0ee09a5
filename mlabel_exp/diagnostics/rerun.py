"""An earlier run's diagnostics, without retraining (``python -m mlabel_exp.diagnose run=<run>``; a run is named as
tracking.run_ids says).

Reads the run's logged prediction files (validation, and test when present: probabilities, true labels and the
thresholds they were decided at) and writes what a training run writes at its end into ``<out>/diagnostics/``: error
galleries, reliability diagrams with ECE and Brier, the confusion matrix beside the labels' co-occurrence, per-class AP
with bootstrap intervals and index.json; rewrites the run's report.html beside them (from the run's own files, fetched
from the store where the folder lacks them); then logs them into that run (artifacts under diagnostics/, report.html,
metrics ``<split>/ece`` and ``<split>/brier``). The galleries read the images from the run's data settings
(config.yaml); where the data is not on this machine they say so and everything else is drawn. What it finds first
(the weakest classes, the top confusions) is returned for the console.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlabel_exp.config import DataConfig, DiagnoseConfig, resolve_path
from mlabel_exp.data.formats import index_from_config
from mlabel_exp.diagnostics import measures as D
from mlabel_exp.diagnostics import writer as P
from mlabel_exp.diagnostics.report import FIGURES, worst_classes, write_run_report
from mlabel_exp.errors import ConfigError, UserError
from mlabel_exp.tracking.client import quiet_downloads
from mlabel_exp.tracking.query import artifact_text, download_artifact, download_best_checkpoint, get_run
from mlabel_exp.tracking.run_ids import newest_experiment, resolve_run
from mlabel_exp.tracking.runs import log_files, log_metrics_to_run

log = logging.getLogger(__name__)


def _data_index(uri: str | None, run_id: str):
    """The run's data set, indexed from its logged config.yaml (no image decoded); None when it cannot be found here."""
    found = run_data(uri, run_id)
    return found[1] if found is not None else None


def run_data(uri: str | None, run_id: str):
    """(data settings, index) of the run's data set, from its logged config.yaml (no image decoded); None when it
    cannot be found here (said in a warning)."""
    from omegaconf import OmegaConf


    text = artifact_text(uri, run_id, "config.yaml")
    if text is None:
        log.warning("run %s has no config.yaml: the galleries show no images", run_id)
        return None
    try:
        data = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig),
                                                   OmegaConf.create(text).get("data", {})))
        return data, index_from_config(data)
    except (UserError, OSError, ValueError, KeyError) as e:
        log.warning("the run's data is not readable here (%s): the galleries show no images", e)
        return None
    except Exception as e:  # an older config the schema no longer takes: the numbers do not need the images
        log.warning("the run's data settings do not load (%s: %s): the galleries show no images", type(e).__name__, e)
        return None


def _out_folder(cfg: DiagnoseConfig, run: dict) -> Path:
    """out=, else the run's own output folder where it is still on this machine, else outputs/diagnose/<run id>."""
    if cfg.out:
        return resolve_path(cfg.out)
    own = run["tags"].get("output_dir")
    if own and Path(own).is_dir():
        return Path(own)
    return resolve_path("outputs") / "diagnose" / run["run_id"]


#: The run's own files its report.html is built from (beside the diagnostics folder)
REPORT_FILES = ("summary.json", "per_class.csv", "thresholds.json", *FIGURES)


@dataclass
class Diagnosed:
    """What ``diagnose`` did: the run, the splits it read, where the files are, the summary metrics, and per split the
    weakest classes (class, AP, positives) and the top confusions (class present, class predicted although absent,
    share, images)."""
    run_id: str
    splits: list[str]
    folder: Path
    metrics: dict[str, float]
    logged: bool
    worst: dict[str, list[tuple[str, float, int]]]
    confusions: dict[str, list[tuple[str, str, float, int]]]
    report: Path | None = None


def confusions(ev: D.Evaluation, k: int = 3) -> list[tuple[str, str, float, int]]:
    """The top confusions of one split: the cells of confusion_<split>.csv (the same function's numbers) surest to be
    high, each with the images behind it."""
    share, n = D.false_positive_given_present(ev.targets, ev.predicted)
    return [(ev.classes[i], ev.classes[j], float(share[i, j]), int(n[i, j])) for i, j in D.top_confusions(share, n, k)]


def _report(uri: str | None, run: dict, folder: Path) -> Path:
    """The run's report.html, rewritten beside ``folder`` from the run's own files (fetched from the store where the
    output folder lacks them: out= elsewhere, or another machine)."""
    out = folder.parent
    with quiet_downloads():
        for name in REPORT_FILES:
            if not (out / name).is_file():
                try:
                    download_artifact(uri, run["run_id"], name, out)
                except ConfigError:  # a run without it (one that ended early): the page leaves its part out
                    log.info("run %s has no %s: report.html goes without it", run["run_id"], name)
    return write_run_report(out, f"{run['params'].get('model.name', 'model')}: run {run['run_id'][:8]}")


def _log(uri: str | None, run: dict, folder: Path, metrics: dict[str, float], report: Path) -> None:
    run_id = run["run_id"]
    log_metrics_to_run(uri, run_id, metrics, step=int(run["tags"].get("best_epoch", 0)))
    log_files(uri, run_id, sorted(p for p in folder.iterdir() if p.is_file()), P.FOLDER)
    maps = folder / "activation_maps"
    if maps.is_dir():
        log_files(uri, run_id, sorted(maps.iterdir()), f"{P.FOLDER}/activation_maps")
    log_files(uri, run_id, [report], None)


def _evaluations(uri: str | None, cfg: DiagnoseConfig, run_id: str) -> list[D.Evaluation]:
    """The run's prediction files read back (validation, and test when present), with its images where found here."""
    index = _data_index(uri, run_id)
    image_of = labels_of = None
    if index is not None:
        image_of, labels_of = P.image_locator(index.image_dir, index.files), P.label_lookup(index.files, index.labels)
    with tempfile.TemporaryDirectory() as tmp:
        predictions = Path(tmp)
        for split in P.SPLITS:
            text = artifact_text(uri, run_id, f"predictions/{split}.json")
            if text is None and split == "val":
                raise ConfigError(f"run={cfg.run}: run {run_id} has no predictions/val.json (a run that ended before "
                                  "its first validation has none); diagnose a finished run")
            if text is not None:
                (predictions / f"{split}.json").write_text(text)
        return P.read_evaluations(predictions, image_of, labels_of)


def diagnose(cfg: DiagnoseConfig) -> Diagnosed:
    """Write (and log) the diagnostics of the run ``cfg.run`` names, and its report.html again."""
    uri = cfg.tracking.uri
    run_id = resolve_run(uri, newest_experiment(uri, cfg.tracking.experiment), cfg.run)
    run = get_run(uri, run_id)
    evaluations = _evaluations(uri, cfg, run_id)
    folder = _out_folder(cfg, run) / P.FOLDER
    metrics = P.write_diagnostics(folder, evaluations, cfg.diagnostics)
    if cfg.diagnostics.activation_maps:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint, _ = download_best_checkpoint(uri, run_id, Path(tmp))
            P.activation_maps(folder, evaluations, checkpoint, cfg.diagnostics)
    report = _report(uri, run, folder)
    if cfg.log_to_run:
        _log(uri, run, folder, metrics, report)
    splits = [e.split for e in evaluations]
    return Diagnosed(run_id, splits, folder, metrics, cfg.log_to_run, {s: worst_classes(folder, s) for s in splits},
                     {e.split: confusions(e) for e in evaluations}, report)
