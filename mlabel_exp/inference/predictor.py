"""The one inference path: a model, the run's preprocessing, its thresholds, a device and an autocast dtype.

Validation during training, the predict command and the MLflow pyfunc model all turn images into
probabilities through ``Predictor.logits``, so the three cannot drift apart. A checkpoint records the
preprocessing it was trained with; ``Predictor.from_checkpoint`` replays it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mlabel_exp.config import model_key
from mlabel_exp.data.images import BatchTransform, image_steps, load_image
from mlabel_exp.data.index import check_class_names
from mlabel_exp.data.loaders import MultiLabelImages, make_loader
from mlabel_exp.errors import DataError
from mlabel_exp.runtime.precision import CHANNELS_LAST_DEVICES, autocast_dtype

log = logging.getLogger(__name__)


def preprocessing_of(model_cfg, decode_size: int | None = None) -> dict:
    """What a checkpoint records of the input pipeline: the size images are decoded to (a decoded cache may keep
    them smaller), then the model's input size and normalisation, applied on whole batches, and the interpolation of
    both resizes (absent in older checkpoints: bilinear, the only one then)."""
    return {"decode_size": int(decode_size or model_cfg.input_size), "input_size": int(model_cfg.input_size),
            "mean": [float(v) for v in model_cfg.mean], "std": [float(v) for v in model_cfg.std],
            "interpolation": str(model_cfg.interpolation)}


def split_outputs(out):
    """(main logits, aux logits or None): inception returns both in train mode."""
    if isinstance(out, tuple):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


class Predictor:
    """uint8 image batches -> float32 logits / probabilities, exactly as the run validated."""

    def __init__(self, model: torch.nn.Module, preprocessing: dict, classes: list[str], *,
                 thresholds: Sequence[float] | None = None, device: torch.device = torch.device("cpu"),
                 amp_dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 transform: BatchTransform | None = None, tta: str = "none"):
        """``transform``: the training run's own BatchTransform (it also flips in training); else one is made
        from ``preprocessing``. ``tta``: none, or flip (test-time augmentation: each image's probabilities are the mean
        of its own and its mirror image's)."""
        p = preprocessing
        self.model, self.preprocessing, self.classes, self.device = model, p, list(classes), device
        self.tta = tta
        # float32, as the probabilities: the numbers the outputs write and decide labels from (floats.decide)
        self.thresholds = np.asarray(thresholds if thresholds is not None else [0.5] * len(classes), dtype=np.float32)
        interpolation = p.get("interpolation", "bilinear") if p else "bilinear"  # older checkpoints: bilinear
        self.transform = transform or BatchTransform(p["input_size"], p["mean"], p["std"], interpolation=interpolation)
        # per image, in DataLoader workers
        self.image_steps = image_steps(p["decode_size"], interpolation=interpolation) if p else None
        self.amp_dtype, self.channels_last = autocast_dtype(device, amp_dtype), channels_last
        self.autocast = self.amp_dtype != torch.float32

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device: torch.device = torch.device("cpu")) -> "Predictor":
        """The trained model (eval mode) on ``device`` with the run's preprocessing and tuned thresholds, in the autocast
        dtype the run validated in (the thresholds were tuned on those probabilities) where ``device`` computes it
        natively, else in float32 (a bfloat16 run's model on a CPU without bfloat16 instructions)."""
        from mlabel_exp.models.zoo import build_model

        check_class_names(ckpt["classes"], "the checkpoint", "its run was trained before such names were refused: "
                          "rename that annotation file and train again")
        m = ckpt["config"]["model"]
        model = build_model(model_key(m["name"], m.get("source", "builtin")), len(ckpt["classes"]), hidden=m.get("hidden", 0),
                            aux_logits=m.get("aux_logits", True), input_size=m["input_size"])
        model.load_state_dict(ckpt["model"])
        preprocessing = ckpt.get("preprocessing") or {"decode_size": m["input_size"], "input_size": m["input_size"],
                                                       "mean": m["mean"], "std": m["std"],
                                                       "interpolation": m.get("interpolation", "bilinear")}
        thresholds = (ckpt.get("thresholds") or {}).get("per_class")
        # the memory layout the run validated in: the same kernels, so the same probabilities
        channels_last = bool(ckpt.get("channels_last")) and device.type in CHANNELS_LAST_DEVICES
        model = model.eval().to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        return cls(model, preprocessing, ckpt["classes"], thresholds=thresholds, device=device,
                   amp_dtype=getattr(torch, ckpt.get("amp_dtype", "float32")), channels_last=channels_last)

    def inputs(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """The model's input on the device, in its memory layout, from a uint8 batch (``train``: with the run's
        training augmentation, for the Trainer's steps)."""
        x = self.transform(images.to(self.device, non_blocking=True), train=train)
        if self.channels_last and x.dim() == 4:  # image batches; other inputs keep their layout
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(main logits, aux logits or None) of the model on ``inputs`` in the autocast dtype; training and validation
        both run the model through here."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.autocast):
            return split_outputs(self.model(x))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """float32 logits (on the device) of a uint8 batch from ``image_steps``; the model's mode is the caller's."""
        return self.outputs(self.inputs(images))[0].float()

    def probabilities_of(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """float32 probabilities (on the device) of a uint8 batch whose ``logits`` were computed: their sigmoid; with
        tta=flip, the mean of theirs and the horizontally mirrored images' (one more pass)."""
        probs = torch.sigmoid(logits)
        if self.tta == "flip":
            probs = (probs + torch.sigmoid(self.logits(images.to(self.device, non_blocking=True).flip(-1)))) / 2
        return probs

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """float32 probabilities (on the CPU) of a uint8 batch, with the ``tta`` set."""
        return self.probabilities_of(images, self.logits(images)).cpu()

    def predict_encoded(self, blobs) -> tuple[np.ndarray, list[str]]:
        """(probabilities, errors) of encoded images (bytes), row for row: an image that cannot be read (not an image,
        truncated, over the pixel limit: data.images.load_image) has NaN probabilities and its error; the others are answered.
        Each is decoded and brought to the decode size before the next is read, so a request holds one full-size
        image at a time."""
        steps, errors = {}, [""] * len(blobs)
        for row, blob in enumerate(blobs):
            try:
                if not isinstance(blob, (bytes, bytearray, memoryview)):  # never a str: load_image reads paths
                    raise TypeError(f"{type(blob).__name__}, not bytes")
                steps[row] = self.image_steps(load_image(bytes(blob)))
            except DataError as e:  # too large, an unsupported TIFF: the message names the fix
                errors[row] = f"row {row}: {e}"
            except Exception as e:  # noqa: BLE001 - any undecodable input is that row's error, not the request's
                errors[row] = f"row {row}: not a readable image ({type(e).__name__})"
        probs = np.full((len(blobs), len(self.classes)), np.nan, dtype=np.float32)
        if steps:
            probs[list(steps)] = self.probabilities(torch.stack(list(steps.values()))).numpy()
        return probs, errors

    def predict_files(self, paths: list[Path], batch_size: int, num_workers: int, names: list[str] | None = None):
        """(names, probabilities, {unreadable file: error}) of image files, decoded in DataLoader workers; ``names``
        name the files in the outputs (default: their file names)."""
        from tqdm.auto import tqdm


        dataset = MultiLabelImages(paths, None, self.image_steps, on_bad_image="skip", names=names)
        loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers,
                             pin_memory=self.device.type == "cuda")
        files, probs, skipped = [], [], {}
        for batch in tqdm(loader, desc="predict", unit="batch", disable=None):
            skipped.update(dict(batch["bad"]))
            if batch["image"] is not None:
                probs.append(self.probabilities(batch["image"]))
                files += batch["name"]
        p = torch.cat(probs).numpy() if probs else np.zeros((0, len(self.classes)), dtype=np.float32)
        return files, p, skipped
