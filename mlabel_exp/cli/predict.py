"""Predictions on new images: ``python -m mlabel_exp.predict run=<run> input=<folder or glob>``; a run is named by its
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

from mlabel_exp.config import ConfigError, PredictConfig, resolve_path
from mlabel_exp.fsutil import write_atomic

log = logging.getLogger(__name__)
SHOWN = 20  # images whose labels predict prints


# ------------------------------------------------------------------ inputs

def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_inputs(spec: str) -> tuple[list[Path], list[str]]:
    """Files of a folder (not recursive) or of a glob, in natural order (im2 before im10), and their names in the
    outputs: the path below the folder, or below the glob's last folder without a wildcard ('g/*/x.jpg' gives
    'a/x.jpg' and 'b/x.jpg', two rows, not two 'x.jpg')."""
    folder = resolve_path(spec)
    if folder.is_dir():
        base, files = folder, [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    else:
        pattern = Path(spec if Path(spec).expanduser().is_absolute() else str(resolve_path(".") / spec)).expanduser()
        files = [Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file()]
        fixed = [part for part in pattern.parts[:-1]]
        cut = next((i for i, part in enumerate(fixed) if glob.has_magic(part)), len(fixed))
        base = Path(*fixed[:cut]) if cut else Path(pattern.anchor or ".")
    if not files:
        raise ConfigError(f"input={spec!r}: no files found (give a folder of images or a glob such as 'images/*.jpg')")
    named = sorted(((p, p.relative_to(base).as_posix()) for p in files), key=lambda pn: _natural_key(pn[1]))
    return [p for p, _ in named], [n for _, n in named]


# ------------------------------------------------------------------ the job

@dataclass
class PredictResult:
    files: list[str]
    probs: Any
    classes: list[str]
    thresholds: Any
    skipped: dict[str, str]
    outputs: list[Path]


def load_run_checkpoint(cfg) -> tuple[dict, str]:
    """The checkpoint of ``cfg.run`` or ``cfg.checkpoint`` (and where it came from): the run's best.pt from MLflow, or a
    file. Shared with the export command."""
    from mlabel_exp.training.checkpoints import load_checkpoint

    if not cfg.run:
        path = resolve_path(cfg.checkpoint)
        return load_checkpoint(path), str(path)
    import tempfile

    from mlabel_exp.tracking.query import download_best_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path, source = download_best_checkpoint(cfg.tracking.uri, cfg.run, Path(tmp))
        return load_checkpoint(path), source


def named_run(cfg):
    """``cfg`` with ``run`` spelt out: a prefix, latest, best or a sweep parent stands for the full id of the training
    run it names (tracking.run_ids)."""
    import dataclasses

    from mlabel_exp.tracking.run_ids import newest_experiment, resolve_run

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
    from mlabel_exp.inference.outputs import label_names, write_predictions, write_submission
    from mlabel_exp.tracking.runs import log_files
    from mlabel_exp.data.loaders import default_workers
    from mlabel_exp.training.precision import select_device
    from mlabel_exp.floats import decide

    device = select_device(cfg.device, "device")  # a device that is not there fails first, in one line
    paths, names = list_inputs(cfg.input)
    predictor, source, cfg = _predictor(cfg, device)
    workers = min(default_workers(cfg.num_workers), max(1, len(paths) // cfg.batch_size))
    files, p, skipped = predictor.predict_files(paths, cfg.batch_size, workers, names)
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
    for name, hits in zip(files, decide(p[:SHOWN], thresholds)):  # a handful: the labels at a glance
        print(f"  {name}: {', '.join(label_names(hits, classes)) or '(no label)'}")
    if len(files) > SHOWN:
        print(f"  ... {len(files) - SHOWN} more in predictions.csv")
    print(f"predicted {len(files)} image(s), skipped {len(skipped)} unreadable file(s); outputs in {out_dir}")
    if cfg.run and cfg.log_to_run:
        where = f"predictions/{Path(cfg.input.rstrip('/*')).name or 'input'}"
        log_files(cfg.tracking.uri, cfg.run, outputs, where)
        print(f"outputs logged to run {cfg.run} under {where}/")
    return PredictResult(files, p, classes, thresholds, skipped, outputs)


def _main(cfg) -> None:
    from mlabel_exp.cli.hydra_job import output_dir_of_job
    from mlabel_exp.config import validate

    typed: PredictConfig = validate(cfg, PredictConfig)
    out = resolve_path(typed.out) if typed.out else output_dir_of_job()
    out.mkdir(parents=True, exist_ok=True)
    predict(typed, out)


def main() -> None:
    from mlabel_exp.cli.app import command

    command(_main, "predict", PredictConfig, "predict_schema")()


if __name__ == "__main__":
    main()
