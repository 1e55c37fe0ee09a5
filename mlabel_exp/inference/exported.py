"""A run's model as an ONNX file that runs without our code: float32 NCHW images, normalised as the run trained, in;
one probability per class (the sigmoid inside the graph) out; the class names, the tuned thresholds and the
preprocessing in the file's metadata. ``OnnxPredictor`` runs such a file through onnxruntime behind the Predictor's
own preprocessing, so predict writes the same files from it as from the run.

Written by torch.onnx.export: the dynamo exporter (torch.export, then onnxscript) where it works, else the legacy
TorchScript-based one; which one wrote a file is in its metadata (``exporter``). onnx, onnxscript and onnxruntime are
the optional extra ``export``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlabel_exp.errors import ConfigError, UserError
from mlabel_exp.floats import written
from mlabel_exp.fsutil import write_atomic
from mlabel_exp.inference.predictor import Predictor, split_outputs

log = logging.getLogger(__name__)

EXTRA = "pip install mlabel-exp[export]"
OPSET = 20  # the dynamo exporter's default in torch 2.14; the legacy exporter writes it too
INPUT, OUTPUT = "image", "probabilities"
#: What a consumer needs beside the graph, as text: how images become the input tensor (with ``resize``).
PIPELINE = {"layout": "NCHW", "channels": "RGB", "dtype": "float32",
            "value_range": "uint8 0..255 divided by 255, then (x - mean) / std per channel"}


def resize_steps(decode_size: int, input_size: int, interpolation: str) -> dict:
    """The resize a consumer must apply, exactly as data.images.image_steps and BatchTransform do it: torchvision's
    resize of the uint8 image to a square (both sides, no crop), antialiased, then of the float batch where the
    sizes differ. Bilinear: PIL's Image.resize BILINEAR gives the same pixels within 1 grey level (not bicubic)."""
    mode = f"InterpolationMode.{interpolation.upper()}"
    steps = (f"torchvision.transforms.v2.functional.resize(x, [{decode_size}, {decode_size}], interpolation={mode}, "
             "antialias=True) on x, the uint8 3 x H x W tensor of the RGB image (pil_to_tensor): both sides to "
             f"{decode_size} px (aspect ratio not kept), no crop, the result uint8")
    steps += (f"; then the same resize of the float32 batch (0..255, before the division) to {input_size} x "
              f"{input_size}" if decode_size != input_size else "; no second resize (decode_size = input_size)")
    if interpolation == "bilinear":
        steps += "; PIL's Image.resize((size, size), Image.BILINEAR) on the RGB image agrees within 1 grey level"
    return {"resize": steps, "interpolation": interpolation, "antialias": True, "resize_dtype": "uint8",
            "keep_aspect_ratio": False, "crop": None}


def require_extra() -> None:
    """onnx, onnxscript and onnxruntime, or one line naming the extra that installs them."""
    import importlib

    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UserError(f"ONNX export and predict need the optional packages onnx, onnxscript and onnxruntime "
                            f"({e}): {EXTRA}") from None


class Probabilities(nn.Module):
    """The model with its sigmoid: what the exported graph computes; with tta=flip, the mean of the probabilities of
    the images and of their mirror images (the Predictor's flip TTA, inside the graph)."""

    def __init__(self, model: nn.Module, tta: str = "none"):
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(split_outputs(self.model(x))[0])
        if self.tta == "flip":
            probs = (probs + torch.sigmoid(split_outputs(self.model(x.flip(-1)))[0])) / 2
        return probs


def to_onnx(model: nn.Module, input_size: int, exporter: str = "auto", tta: str = "none"):
    """(onnx ModelProto, the exporter that wrote it: 'dynamo' or 'legacy') of ``model`` (eval mode, float32, the
    contiguous layout, on the CPU) with its sigmoid (and ``tta``), for any batch size. ``exporter=auto`` tries dynamo
    first and falls back to the legacy exporter, saying why."""
    import onnx

    plain = copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format)
    wrapped = Probabilities(plain, tta).eval()
    example = torch.zeros(2, 3, input_size, input_size)
    names = {"input_names": [INPUT], "output_names": [OUTPUT], "opset_version": OPSET}
    if exporter in ("auto", "dynamo"):
        try:
            with _quiet("onnx_ir", "onnxscript"):  # a line per optimisation pass otherwise
                program = torch.onnx.export(wrapped, (example,), dynamo=True, verbose=False, optimize=True,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
            return program.model_proto, "dynamo"
        except Exception as e:  # noqa: BLE001 - whatever torch.export cannot trace: the legacy exporter may
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            if exporter == "dynamo":
                raise UserError(f"exporter=dynamo: torch.onnx's dynamo exporter failed ({reason}); "
                                "try exporter=legacy") from e
            log.warning("the dynamo exporter failed (%s): using the legacy TorchScript-based exporter", reason)
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))  # chosen knowingly: it is the fallback
        torch.onnx.export(wrapped, (example,), buffer, dynamo=False, dynamic_axes={INPUT: {0: "batch"},
                                                                                   OUTPUT: {0: "batch"}}, **names)
    return onnx.load_from_string(buffer.getvalue()), "legacy"


@contextlib.contextmanager
def _quiet(*loggers: str):
    before = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def metadata(classes: list[str], thresholds, preprocessing: dict, **extra: str) -> dict[str, str]:
    """The file's metadata_props: class names, thresholds (lossless: floats.written), preprocessing, as JSON text."""
    decode, size = int(preprocessing["decode_size"]), int(preprocessing["input_size"])
    interpolation = str(preprocessing.get("interpolation", "bilinear"))  # older checkpoints: bilinear, the only one
    pre = {"decode_size": decode, "input_size": size, "mean": [float(v) for v in preprocessing["mean"]],
           "std": [float(v) for v in preprocessing["std"]], **resize_steps(decode, size, interpolation), **PIPELINE}
    return {"classes": json.dumps(list(classes)), "thresholds": json.dumps(written(thresholds).tolist()),
            "preprocessing": json.dumps(pre), "output": f"{OUTPUT}: sigmoid of the logits, one per class, in the "
            "order of classes (tta flip: the mean of the image's and its mirror image's); a label where probability "
            ">= its threshold", **extra}


def save(proto, meta: dict[str, str], path: Path) -> Path:
    """``proto`` with ``meta`` as its metadata_props, written atomically as one self-contained file."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return write_atomic(path, proto.SerializeToString())


def session(model, threads: int | None = None):
    """An onnxruntime CPU session on ``model`` (a path or serialized bytes), every graph optimisation on, one intra-op
    thread per core available."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cores()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(model) if isinstance(model, Path) else model, options,
                                providers=["CPUExecutionProvider"])


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OnnxPredictor(Predictor):
    """An exported file behind the Predictor's preprocessing (decode, resize, normalise: the run's, from the file's
    metadata): the same predict_files and predict_encoded, the probabilities from onnxruntime."""

    def __init__(self, onnx_session, meta: dict):
        super().__init__(None, meta["preprocessing"], meta["classes"], thresholds=meta["thresholds"])
        self.session, self.meta = onnx_session, meta
        self.graph_tta = meta.get("tta", "none")  # what the graph itself averages (export tta=flip)

    @classmethod
    def from_file(cls, path: Path, setting: str = "model") -> "OnnxPredictor":
        require_extra()
        if not path.is_file():
            raise ConfigError(f"{setting}={str(path)!r}: no such file (python -m mlabel_exp.export run=<run> writes one)")
        try:
            s = session(path)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own errors: not a readable ONNX file
            raise ConfigError(f"{setting}={str(path)!r}: onnxruntime cannot load it ({str(e)[:200]})") from None
        return cls(s, read_metadata(s.get_modelmeta().custom_metadata_map, f"{setting}={str(path)!r}"))

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(self.inputs(images).numpy())
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: x})[0])

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The graph's probabilities; tta=flip on a graph exported without it: the mean with the mirror images'."""
        probs = self._run(images)
        if self.tta == "flip" and self.graph_tta != "flip":
            probs = (probs + self._run(images.flip(-1))) / 2
        return probs


def read_metadata(props: dict[str, str], where: str) -> dict:
    """classes, thresholds (float32) and preprocessing of an exported file's metadata; one line when they are missing."""
    missing = [k for k in ("classes", "thresholds", "preprocessing") if k not in props]
    if missing:
        raise ConfigError(f"{where}: not a model exported by mlabel_exp.export (its metadata lacks {', '.join(missing)})")
    meta = {k: json.loads(props[k]) for k in ("classes", "thresholds", "preprocessing")}
    meta["thresholds"] = np.asarray(meta["thresholds"], dtype=np.float32)
    return {**props, **meta}
