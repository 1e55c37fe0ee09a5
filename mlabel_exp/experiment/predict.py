"""Predictions on new images (``python -m mlabel_exp.predict run=<run> input=<folder or glob>``); a run is named by its
id, any unique prefix of it, ``latest``, ``best`` or a sweep parent's id (its winning run): tracking.run_ids.

Uses the trained run's class names, input transform and tuned thresholds (from its best
checkpoint; or, with ``model=<file>.onnx``, from an exported model's metadata, run by onnxruntime), and writes ``predictions.csv`` and ``predictions.json`` (per image: one probability per
class and the labels at the thresholds) plus ``submission.csv`` (the original course's format: one
row per image, 0/1 columns in alphabetical class order). Unreadable files are reported and skipped.
``checkpoint=path/to/best.pt`` works without MLflow.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlabel_exp.config import PredictConfig, resolve_path
from mlabel_exp.data.formats.common import some, unfollowable_link
from mlabel_exp.errors import ConfigError
from mlabel_exp.experiment.hydra_job import output_dir_of_job
from mlabel_exp.floats import decide
from mlabel_exp.fsutil import write_atomic
from mlabel_exp.inference.outputs import label_names, write_predictions, write_submission
from mlabel_exp.tracking.query import download_best_checkpoint
from mlabel_exp.tracking.run_ids import newest_experiment, resolve_run
from mlabel_exp.tracking.runs import log_files

log = logging.getLogger(__name__)
SAME_LABELS_MIN = 10  # images from which one label set for all of them is worth a warning (fewer: chance, and shown)


# ------------------------------------------------------------------ inputs

def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_inputs(spec: str, unreadable: dict[str, str] | None = None) -> tuple[list[Path], list[str]]:
    """Files of a folder (not recursive) or of a glob, in natural order (im2 before im10), and their names in the
    outputs: the path below the folder, or below the glob's last folder without a wildcard ('g/*/x.jpg' gives
    'a/x.jpg' and 'b/x.jpg', two rows, not two 'x.jpg'). Symbolic links that cannot be followed (a loop, a missing
    target) go to ``unreadable`` (name -> why), to be reported with the files that do not decode."""

    folder = resolve_path(spec)
    if folder.is_dir():
        base, found = folder, [p for p in folder.iterdir() if not p.name.startswith(".")]
    else:
        pattern = Path(spec if Path(spec).expanduser().is_absolute() else str(resolve_path(".") / spec)).expanduser()
        found = [Path(p) for p in glob.glob(str(pattern))]
        fixed = [part for part in pattern.parts[:-1]]
        cut = next((i for i, part in enumerate(fixed) if glob.has_magic(part)), len(fixed))
        base = Path(*fixed[:cut]) if cut else Path(pattern.anchor or ".")
    files, links = [], {}
    for p in found:
        why = unfollowable_link(p)  # a loop: one stat, never followed
        if why:
            links[p.relative_to(base).as_posix()] = why
        elif p.is_file():
            files.append(p)
    if unreadable is not None:
        unreadable.update(sorted(links.items(), key=lambda kv: _natural_key(kv[0])))
    if not files:
        why = f" ({some([f'{n}: {w}' for n, w in links.items()], sep='; ')})" if links else ""
        raise ConfigError(f"input={spec!r}: no files found{why} (give a folder of images or a glob such as "
                          "'images/*.jpg')")
    named = sorted(((p, p.relative_to(base).as_posix()) for p in files), key=lambda pn: _natural_key(pn[1]))
    return [p for p, _ in named], [n for _, n in named]


# ------------------------------------------------------------------ the job

def same_labels_warning(hits, classes: list[str]) -> str | None:
    """A warning when at least SAME_LABELS_MIN images all got one label set (or none): a model fed images unlike its
    training images (another kind, size or colour) or thresholds that do not suit them does that, and the files alone
    would not say so. One comparison over the N x C labels: cheap."""
    if len(hits) < SAME_LABELS_MIN or not (hits == hits[:1]).all():
        return None
    labels = ", ".join(label_names(hits[0], classes)) or "no label"
    return (f"every one of the {len(hits)} images got the same labels ({labels}): check that the images are like the "
            "run's training images and the model is the one meant (run=, model=), and look at the probabilities in "
            "predictions.csv")


@dataclass
class PredictResult:
    files: list[str]
    probs: Any
    classes: list[str]
    thresholds: Any
    skipped: dict[str, str]
    outputs: list[Path]
    out_dir: Path | None = None
    logged_to: str | None = None         # the run's artifact folder the outputs were logged under (with run=)
    run: str | None = None


def load_run_checkpoint(cfg) -> tuple[dict, str]:
    """The checkpoint of ``cfg.run`` or ``cfg.checkpoint`` (and where it came from): the run's best.pt from MLflow, or a
    file. Shared with the export command."""
    from mlabel_exp.training.checkpoints import load_checkpoint

    if not cfg.run:
        path = resolve_path(cfg.checkpoint)
        return load_checkpoint(path), str(path)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path, source = download_best_checkpoint(cfg.tracking.uri, cfg.run, Path(tmp))
        return load_checkpoint(path), source


def named_run(cfg):
    """``cfg`` with ``run`` spelt out: a prefix, latest, best or a sweep parent stands for the full id of the training
    run it names (tracking.run_ids)."""
    import dataclasses

    experiment = newest_experiment(cfg.tracking.uri, cfg.tracking.experiment)
    return dataclasses.replace(cfg, run=resolve_run(cfg.tracking.uri, experiment, cfg.run))


def _predictor(cfg: PredictConfig, device):
    """(the predictor of the run, checkpoint or exported model, where it came from, cfg with the run's full id)."""
    import numpy as np

    from mlabel_exp.inference.predictor import Predictor

    if cfg.model_file:
        from mlabel_exp.inference.exported import OnnxPredictor

        source, tuned = str(resolve_path(cfg.model_file)), True
        predictor = OnnxPredictor.from_file(resolve_path(cfg.model_file))
        if predictor.graph_tta == "flip" and cfg.tta != "flip":
            log.info("model=%s averages each image with its mirror image in its graph (exported with tta=flip)", source)
        if device.type != "cpu":
            log.info("model=%s runs on onnxruntime's CPUExecutionProvider (device=%s is for runs)", source, device)
    else:
        cfg = named_run(cfg) if cfg.run else cfg
        ckpt, source = load_run_checkpoint(cfg)
        predictor, tuned = Predictor.from_checkpoint(ckpt, device), bool(ckpt.get("thresholds"))
    predictor.tta = cfg.tta
    if cfg.threshold != "tuned":
        predictor.thresholds = np.full(len(predictor.classes), float(cfg.threshold), dtype=np.float32)
    elif not tuned:
        log.warning("%s holds no tuned thresholds: using 0.5 for every class", source)
    return predictor, source, cfg


def predict(cfg: PredictConfig, out_dir: Path) -> PredictResult:
    from mlabel_exp.data.loaders import default_workers
    from mlabel_exp.runtime.precision import select_device

    device = select_device(cfg.device, "device")  # a device that is not there fails first, in one line
    skipped: dict[str, str] = {}  # links that cannot be followed, then files that do not decode
    paths, names = list_inputs(cfg.input, skipped)
    predictor, source, cfg = _predictor(cfg, device)
    workers = min(default_workers(cfg.num_workers), max(1, len(paths) // cfg.batch_size))
    files, p, undecoded = predictor.predict_files(paths, cfg.batch_size, workers, names)
    skipped.update(undecoded)
    for name, err in skipped.items():
        log.warning("skipped %s: %s", name, err)
    classes, thresholds = predictor.classes, predictor.thresholds
    outputs = write_predictions(out_dir, "predictions", files, p, classes, thresholds)
    outputs.append(write_submission(out_dir / "submission.csv", files, p, classes, thresholds))
    tta = "flip" if "flip" in (cfg.tta, getattr(predictor, "graph_tta", "none")) else "none"
    summary = {"input": cfg.input, "images": len(files), "skipped": len(skipped), "skipped_files": skipped,
               "checkpoint": None if cfg.model_file else source, "model": cfg.model_file and source, "run": cfg.run,
               "tta": tta}
    outputs.append(write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1)))
    warning = same_labels_warning(decide(p, thresholds), classes)
    if warning:
        log.warning(warning)
    where = None
    if cfg.run and cfg.log_to_run:
        where = f"predictions/{Path(cfg.input.rstrip('/*')).name or 'input'}"
        log_files(cfg.tracking.uri, cfg.run, outputs, where)
    return PredictResult(files, p, classes, thresholds, skipped, outputs, out_dir, where, cfg.run)


def predict_job(cfg: PredictConfig) -> PredictResult:
    """``predict`` into out= (default: the Hydra job's folder, outputs/predict/<time>)."""
    out = resolve_path(cfg.out) if cfg.out else output_dir_of_job()
    out.mkdir(parents=True, exist_ok=True)
    return predict(cfg, out)
