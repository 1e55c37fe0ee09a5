"""A run's model as a file that runs without our code (``python -m mlabel_exp.export run=<run> format=onnx``).

Writes ``model.onnx`` (float32 NCHW images in, one probability per class out, dynamic batch size; class names,
thresholds and preprocessing in its metadata: inference.exported) and ``export.json``, checks the file with onnxruntime
against the run's Predictor on the run's validation images (inference.parity: fails, exit status 2, when they differ
by more than the float32 tolerance of the model), then logs it under the run through MLflow's ONNX flavor
(tracking.onnx_model). ``python -m mlabel_exp.predict model=<file>.onnx input=...`` predicts with it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlabel_exp.config import DataConfig, ExportConfig, resolve_path, upgraded
from mlabel_exp.data.formats import index_from_config
from mlabel_exp.errors import ConfigError, ParityError, UserError
from mlabel_exp.experiment.hydra_job import output_dir_of_job
from mlabel_exp.experiment.predict import list_inputs, load_run_checkpoint, named_run
from mlabel_exp.fsutil import write_atomic
from mlabel_exp.tracking.onnx_model import log_onnx_model
from mlabel_exp.tracking.query import run_tags
from mlabel_exp.tracking.registry import register_model
from mlabel_exp.tracking.runs import log_files

log = logging.getLogger(__name__)



@dataclass
class ExportResult:
    path: Path
    exporter: str
    parity: Any
    run: str | None
    model_uri: str | None
    tta: str = "none"
    computed_in: str = "float32"         # the run's autocast precision (the exported model computes in float32)
    registered: tuple[str, int] | None = None  # (name, version) registered under cfg.register


def validation_images(ckpt: dict, limit: int) -> tuple[list[Path], list[str]]:
    """The first ``limit`` validation images of the checkpoint's run (their names in best.pt, their folder from the
    run's data settings); one line naming images= when they are not on this machine."""
    import dataclasses

    from omegaconf import OmegaConf


    fix = "give images=<folder or glob> for the parity check"
    names = list((ckpt.get("val") or {}).get("names") or [])[:limit]
    if not names:
        raise ConfigError(f"the checkpoint records no validation images; {fix}")
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    data = {k: v for k, v in upgraded({"data": dict(ckpt["config"]["data"])})["data"].items() if k in fields}
    try:
        folder = index_from_config(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), data))).image_dir
    except UserError as e:
        raise ConfigError(f"the run's validation images cannot be found ({e}); {fix}") from None
    paths = [folder / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"the run's validation image {missing[0]} is not on this machine; {fix}")
    return paths, names


def _out_dir(cfg: ExportConfig) -> Path:
    """out=, else the run's output folder's export/ where that folder is on this machine, else Hydra's job folder."""
    if cfg.out:
        return resolve_path(cfg.out)
    if cfg.run:
        folder = run_tags(cfg.tracking.uri, cfg.run).get("output_dir")
        if folder and Path(folder).is_dir():
            return Path(folder) / "export"
    return output_dir_of_job()


def _write(cfg: ExportConfig, predictor, source: str, out: Path):
    """(the ONNX ModelProto with its metadata, the exporter, its path): exported and written to ``out``."""
    import torch

    from mlabel_exp.inference import exported

    proto, exporter = exported.to_onnx(predictor.model, predictor.preprocessing["input_size"], cfg.exporter, cfg.tta)
    meta = exported.metadata(predictor.classes, predictor.thresholds, predictor.preprocessing, exporter=exporter,
                             opset=str(exported.OPSET), source=source, run_id=cfg.run or "", tta=cfg.tta,
                             torch=torch.__version__.split("+")[0])
    out.mkdir(parents=True, exist_ok=True)
    return proto, exporter, exported.save(proto, meta, out / "model.onnx")


class _Averaged:
    """A Predictor with flip TTA as the parity check reads a reference (it compares the sigmoid of its ``logits``): the
    logit of the mean probability, clamped to [eps, 1 - eps] (float32's eps) so that it stays finite; the sigmoid gives
    the mean back within eps."""

    def __init__(self, predictor):
        self.predictor = predictor

    def __getattr__(self, name: str):
        return getattr(self.predictor, name)

    def logits(self, images):
        import torch

        probs = self.predictor.probabilities_of(images, self.predictor.logits(images))
        return torch.logit(probs, eps=torch.finfo(torch.float32).eps)


def export(cfg: ExportConfig) -> ExportResult:
    import torch

    from mlabel_exp.inference import exported
    from mlabel_exp.inference.parity import compare
    from mlabel_exp.inference.predictor import Predictor

    exported.require_extra()
    cfg = named_run(cfg) if cfg.run else cfg
    ckpt, source = load_run_checkpoint(cfg)
    reference = Predictor.from_checkpoint(ckpt)  # on the CPU; in float32, as the exported graph computes
    reference.amp_dtype, reference.autocast, reference.tta = torch.float32, False, cfg.tta
    proto, exporter, path = _write(cfg, reference, source, _out_dir(cfg))
    limit = cfg.parity_batches * cfg.batch_size
    paths, names = (list_inputs(cfg.images) if cfg.images else validation_images(ckpt, limit))
    candidate = exported.OnnxPredictor.from_file(path, "the exported file")  # the file as written, read back
    parity = compare(_Averaged(reference) if cfg.tta == "flip" else reference, candidate, paths[:limit], names[:limit],
                     cfg.batch_size)
    if not parity.images:
        where = f"images={cfg.images}" if cfg.images else "the run's validation images"
        raise ConfigError(f"no readable image among the {len(paths[:limit])} parity image(s) of {where}; give "
                          "images=<folder or glob>")
    summary = {"file": str(path), "exporter": exporter, "opset": exported.OPSET, "source": source, "run": cfg.run,
               "tta": cfg.tta,
               "parity": {"images": parity.images, "max_difference": parity.max_difference,
                          "tolerance": parity.tolerance, "tolerance_derivation": parity.how, "ok": parity.ok,
                          "label_differences": parity.label_differences, "near_threshold": parity.near_threshold}}
    summary_path = write_atomic(path.with_name("export.json"), json.dumps(summary, indent=1))
    result = ExportResult(path, exporter, parity, cfg.run, None, cfg.tta, ckpt.get("amp_dtype", "float32"))
    if not parity.ok:
        error = ParityError(f"parity check failed: the exported model differs from the run (max |difference| "
                            f"{parity.max_difference:.3g} > tolerance {parity.tolerance:.3g}, or labels differ away "
                            f"from the thresholds); {path} is kept for a look and logged nowhere")
        error.result = result  # what was measured, for the command to show
        raise error
    if cfg.run and cfg.log_to_run:  # the model under the run (MLflow's ONNX flavor), export.json beside it
        result.model_uri = log_onnx_model(cfg.tracking.uri, cfg.run, proto,
                                          {p.key: p.value for p in proto.metadata_props})
        log_files(cfg.tracking.uri, cfg.run, [summary_path], "export")
        if cfg.register:
            result.registered = (cfg.register, register_model(cfg.tracking.uri, result.model_uri, cfg.register))
    return result

