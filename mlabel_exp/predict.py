"""Predictions on new images: ``python -m mlabel_exp.predict run=<mlflow run id> input=<folder or glob>``.

Uses the trained run's class names, input transform and tuned thresholds (from its best
checkpoint), and writes ``predictions.csv`` and ``predictions.json`` (per image: one probability per
class and the labels at the thresholds) plus ``submission.csv`` (the original course's format: one
row per image, 0/1 columns in alphabetical class order). Unreadable files are reported and skipped.
``checkpoint=path/to/best.pt`` works without MLflow.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from .config import CONF_DIR, ConfigError, TrackingConfig, resolve_path

log = logging.getLogger(__name__)


@dataclass
class PredictConfig:
    input: str = MISSING                 # a folder of images or a glob such as 'images/im2*.jpg'
    run: Optional[str] = None            # an MLflow run id: its checkpoints/best.pt is used
    checkpoint: Optional[str] = None     # or a checkpoint file (best.pt)
    out: Optional[str] = None            # output folder; default: Hydra's job folder (outputs/predict/...)
    threshold: Any = "tuned"             # tuned (the run's per-class thresholds, else 0.5) | a number
    batch_size: int = 64
    num_workers: int = -1
    device: str = "auto"
    log_to_run: bool = True              # with run=: log the outputs to that run as artifacts
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        if bool(self.run) == bool(self.checkpoint):
            raise ConfigError("predict needs exactly one of run=<mlflow run id> or checkpoint=<path to best.pt>")
        if isinstance(self.threshold, str) and self.threshold != "tuned":
            try:
                self.threshold = float(self.threshold)
            except ValueError:
                raise ConfigError(f"threshold={self.threshold!r} is invalid: expected 'tuned' or a number") from None
        if not isinstance(self.threshold, str) and not 0 < float(self.threshold) < 1:
            raise ConfigError(f"threshold={self.threshold!r} is invalid: expected a number in (0, 1)")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r} is invalid: expected an integer >= 1")


# ------------------------------------------------------------------ outputs (shared with run.py)

def label_names(row, classes) -> list[str]:
    return [c for c, on in zip(classes, row) if on]


def write_predictions(folder: Path, stem: str, files: list[str], probs, classes: list[str], thresholds=0.5,
                      targets=None) -> list[Path]:
    """``<stem>.csv`` and ``<stem>.json`` keyed by file: a probability per class and the labels at ``thresholds``
    (one number or one per class); with ``targets`` also the true labels."""
    import numpy as np
    import pandas as pd

    from .data import write_atomic

    p = probs.numpy() if hasattr(probs, "numpy") else np.asarray(probs)
    t = np.asarray(thresholds, dtype=np.float64)
    predicted = p >= t
    frame = pd.DataFrame(p, columns=classes)
    frame.insert(0, "file", files)
    frame["labels"] = [" ".join(label_names(row, classes)) for row in predicted]
    records = {f: {"probabilities": {c: round(float(v), 6) for c, v in zip(classes, row)},
                   "labels": label_names(hit, classes)} for f, row, hit in zip(files, p, predicted)}
    if targets is not None:
        true = np.asarray(targets) > 0.5
        frame["true_labels"] = [" ".join(label_names(row, classes)) for row in true]
        for f, row in zip(files, true):
            records[f]["true_labels"] = label_names(row, classes)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    write_atomic(csv_path, frame.to_csv(index=False, float_format="%.6f"))
    payload = {"classes": classes, "thresholds": dict(zip(classes, np.broadcast_to(t, len(classes)).tolist())),
               "predictions": records}
    write_atomic(json_path, json.dumps(payload, indent=1))
    return [csv_path, json_path]


def write_submission(path: Path, files: list[str], probs, classes: list[str], thresholds=0.5) -> Path:
    """One row per image, 0/1 columns in alphabetical class order."""
    import numpy as np
    import pandas as pd

    from .data import write_atomic

    order = sorted(range(len(classes)), key=lambda i: classes[i])
    hits = (np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)).astype(int)[:, order]
    frame = pd.DataFrame(hits, columns=[classes[i] for i in order])
    frame.insert(0, "image", files)
    write_atomic(path, frame.to_csv(index=False))
    return path


# ------------------------------------------------------------------ inputs

def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def list_inputs(spec: str) -> list[Path]:
    """Files of a folder (not recursive) or of a glob, in natural order (im2 before im10)."""
    folder = resolve_path(spec)
    if folder.is_dir():
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    else:
        pattern = spec if Path(spec).expanduser().is_absolute() else str(resolve_path(".") / spec)
        files = [Path(p) for p in glob.glob(str(Path(pattern).expanduser())) if Path(p).is_file()]
    if not files:
        raise ConfigError(f"input={spec!r}: no files found (give a folder of images or a glob such as 'images/*.jpg')")
    return sorted(files, key=_natural_key)


# ------------------------------------------------------------------ the job

@dataclass
class PredictResult:
    files: list[str]
    probs: Any
    classes: list[str]
    thresholds: Any
    skipped: dict[str, str]
    outputs: list[Path]


def load_checkpoint(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise ConfigError(f"checkpoint={str(path)!r}: no such file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    for key in ("model", "classes", "config"):
        if key not in ckpt:
            raise ConfigError(f"{path} is not a mlabel-exp checkpoint: it has no {key!r} entry")
    return ckpt


def model_from_checkpoint(ckpt: dict):
    """The trained model (eval mode) and its eval transform, rebuilt from the checkpoint's own config."""
    from .data import build_transform
    from .models import build_model

    m = ckpt["config"]["model"]
    model = build_model(m["name"], len(ckpt["classes"]), hidden=m.get("hidden", 0),
                        aux_logits=m.get("aux_logits", True), input_size=m["input_size"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), build_transform(m["input_size"], m["mean"], m["std"])


def predict(cfg: PredictConfig, out_dir: Path) -> PredictResult:
    import numpy as np
    import torch

    from . import tracking
    from .data import BatchTransform, MultiLabelImages, default_workers, image_steps, make_loader
    from .engine import select_device

    if cfg.run:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = load_checkpoint(tracking.download_artifact(cfg.tracking.uri, cfg.run, "checkpoints/best.pt", Path(tmp)))
        ckpt_path = f"runs:/{cfg.run}/checkpoints/best.pt"
    else:
        ckpt_path = resolve_path(cfg.checkpoint)
        ckpt = load_checkpoint(ckpt_path)
    classes = list(ckpt["classes"])
    if cfg.threshold == "tuned":
        thresholds = np.asarray(ckpt.get("thresholds", {}).get("per_class", [0.5] * len(classes)))
        if "thresholds" not in ckpt:
            log.warning("%s holds no tuned thresholds: using 0.5 for every class", ckpt_path)
    else:
        thresholds = np.full(len(classes), float(cfg.threshold))
    model, _ = model_from_checkpoint(ckpt)
    device = select_device(cfg.device)
    model.to(device)
    paths = list_inputs(cfg.input)
    m = ckpt["config"]["model"]  # the training run's validation pipeline: uint8 from the workers, finished on the device
    finish = BatchTransform(m["input_size"], m["mean"], m["std"])
    loader = make_loader(MultiLabelImages(paths, None, image_steps(m["input_size"]), on_bad_image="skip"),
                         cfg.batch_size, shuffle=False, pin_memory=device.type == "cuda",
                         num_workers=min(default_workers(cfg.num_workers), max(1, len(paths) // cfg.batch_size)))
    from tqdm.auto import tqdm

    files, probs, skipped = [], [], {}
    # On CUDA, the autocast dtype the run validated in: the tuned thresholds were fitted to those probabilities.
    amp = getattr(torch, ckpt.get("amp_dtype", "float32"))
    autocast = torch.autocast(device.type, dtype=amp, enabled=device.type == "cuda" and amp != torch.float32)
    with torch.inference_mode(), autocast:
        for batch in tqdm(loader, desc="predict", unit="batch", disable=None):
            skipped.update(dict(batch["bad"]))
            if batch["image"] is not None:
                logits = model(finish(batch["image"].to(device, non_blocking=True))).float()
                probs.append(torch.sigmoid(logits).cpu())  # as in training: sigmoid of float32 logits
                files += batch["name"]
    for name, err in skipped.items():
        log.warning("skipped %s: %s", name, err)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, len(classes)), dtype=np.float32)
    outputs = write_predictions(out_dir, "predictions", files, p, classes, thresholds)
    outputs.append(write_submission(out_dir / "submission.csv", files, p, classes, thresholds))
    summary = {"input": cfg.input, "images": len(files), "skipped": len(skipped), "skipped_files": skipped,
               "checkpoint": str(ckpt_path), "run": cfg.run}
    from .data import write_atomic

    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1))
    outputs.append(out_dir / "summary.json")
    if cfg.run and cfg.log_to_run:
        tracking.log_files(cfg.tracking.uri, cfg.run, outputs, f"predictions/{Path(cfg.input.rstrip('/*')).name or 'input'}")
    print(f"predicted {len(files)} image(s), skipped {len(skipped)} unreadable file(s); outputs in {out_dir}")
    return PredictResult(files, p, classes, thresholds, skipped, outputs)


def _main(cfg) -> None:
    from omegaconf import OmegaConf

    from .run import output_dir_of_job

    typed: PredictConfig = OmegaConf.to_object(cfg)
    out = resolve_path(typed.out) if typed.out else output_dir_of_job()
    out.mkdir(parents=True, exist_ok=True)
    predict(typed, out)


def main() -> None:
    import hydra
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="predict_schema", node=PredictConfig)
    hydra.main(config_path=str(CONF_DIR), config_name="predict", version_base="1.3")(_main)()


if __name__ == "__main__":
    main()
