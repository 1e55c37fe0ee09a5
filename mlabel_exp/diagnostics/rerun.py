"""An earlier run's diagnostics, without retraining (``python -m mlabel_exp.diagnose run=<run>``; a run is named as
tracking.run_ids says).

Reads the run's logged prediction files (validation, and test when present: probabilities, true labels and the
thresholds they were decided at) and writes what a training run writes at its end into ``<out>/diagnostics/``: error
galleries, reliability diagrams with ECE and Brier, the confusion matrix beside the labels' co-occurrence, per-class AP
with bootstrap intervals and index.json; then logs them into that run (artifacts under diagnostics/, metrics
``<split>/ece`` and ``<split>/brier``). The galleries read the images from the run's data settings (config.yaml); where
the data is not on this machine they say so and everything else is drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mlabel_exp.config import DataConfig, DiagnoseConfig, resolve_path
from mlabel_exp.data.formats import index_from_config
from mlabel_exp.diagnostics import writer as P
from mlabel_exp.errors import ConfigError, UserError
from mlabel_exp.tracking.query import artifact_text, download_best_checkpoint, get_run
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


@dataclass
class Diagnosed:
    """What ``diagnose`` did: the run, the splits it read, where the files are, the summary metrics."""
    run_id: str
    splits: list[str]
    folder: Path
    metrics: dict[str, float]
    logged: bool


def diagnose(cfg: DiagnoseConfig) -> Diagnosed:
    """Write (and log) the diagnostics of the run ``cfg.run`` names."""
    import tempfile


    uri = cfg.tracking.uri
    run_id = resolve_run(uri, newest_experiment(uri, cfg.tracking.experiment), cfg.run)
    run = get_run(uri, run_id)
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
        evaluations = P.read_evaluations(predictions, image_of, labels_of)
    folder = _out_folder(cfg, run) / P.FOLDER
    metrics = P.write_diagnostics(folder, evaluations, cfg.diagnostics)
    if cfg.diagnostics.activation_maps:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint, _ = download_best_checkpoint(uri, run_id, Path(tmp))
            P.activation_maps(folder, evaluations, checkpoint, cfg.diagnostics)
    if cfg.log_to_run:
        log_metrics_to_run(uri, run_id, metrics, step=int(run["tags"].get("best_epoch", 0)))
        log_files(uri, run_id, sorted(p for p in folder.iterdir() if p.is_file()), P.FOLDER)
        maps = folder / "activation_maps"
        if maps.is_dir():
            log_files(uri, run_id, sorted(maps.iterdir()), f"{P.FOLDER}/activation_maps")
    return Diagnosed(run_id, [e.split for e in evaluations], folder, metrics, cfg.log_to_run)

