"""Does an exported model compute what the run's Predictor computes? Both on the same uint8 batches (the Predictor's
own decoding and normalisation), the largest probability difference against a tolerance derived from the
arithmetic, and the labels at the run's thresholds compared.

The tolerance. Two implementations of one layer (PyTorch's oneDNN kernels and onnxruntime's MLAS, which also folds
batch norm into the convolution weights) add the same K products in another order: their results differ by a few
roundings, which grow like sqrt(K) units of the dtype's eps relative to the layer's magnitude when the order is
unrelated (a random walk of roundings). Layer by layer the relative differences add up, so a logit z may move by
``depth * sqrt(K) * eps * max(1, |z|)``, with depth the number of weight layers (convolutions and linear layers) and
K the largest fan-in; the sigmoid's slope is at most 1/4, which gives the probability tolerance. A wrong weight, a
missing sigmoid or another preprocessing moves probabilities by far more (a logit by 0.1 moves p by up to 0.025).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass
class Parity:
    images: int
    max_difference: float
    tolerance: float
    how: str                                    # how the tolerance was derived, with its numbers
    #: (file, class, reference probability, exported probability, threshold) where the labels differ
    label_differences: list[tuple] = field(default_factory=list)
    #: those of them excused: the reference probability lies within the tolerance of the threshold
    near_threshold: list[tuple] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.max_difference <= self.tolerance and len(self.label_differences) == len(self.near_threshold)

    def line(self, candidate: str) -> str:
        verdict = "within" if self.max_difference <= self.tolerance else "OVER"
        near = f"; {len(self.near_threshold)} label(s) differ within the tolerance of a threshold" \
            if self.near_threshold else ""
        wrong = len(self.label_differences) - len(self.near_threshold)
        return (f"parity: {candidate} against the run's Predictor on {self.images} image(s): max |difference| of a "
                f"probability {self.max_difference:.3g}, {verdict} the tolerance {self.tolerance:.3g}; "
                f"{wrong} label(s) differ{near}")


def weight_layers(model: nn.Module) -> tuple[int, int]:
    """(number of weight layers: modules whose weight has 2 or more dimensions, the largest fan-in among them)."""
    fans = [m.weight[0].numel() for m in model.modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2]
    return len(fans), max(fans, default=1)


def tolerance(model: nn.Module, dtype: torch.dtype, max_abs_logit: float) -> tuple[float, str]:
    """The probability tolerance of ``model`` computed in ``dtype`` by two implementations (module docstring), and
    how it was derived."""
    depth, fan_in = weight_layers(model)
    eps, scale = torch.finfo(dtype).eps, max(1.0, max_abs_logit)
    tol = depth * math.sqrt(fan_in) * eps * scale / 4
    return tol, (f"{depth} weight layers x sqrt(largest fan-in {fan_in}) x {str(dtype).removeprefix('torch.')} eps "
                 f"{eps:.3g} x max(1, largest |logit| {max_abs_logit:.3g}) / 4 (the sigmoid's largest slope)")


def compare(reference, candidate, paths: list[Path], names: list[str], batch_size: int) -> Parity:
    """``candidate`` (anything with ``probabilities(uint8 batch)``, e.g. an OnnxPredictor) against ``reference`` (a
    Predictor in float32) on the images ``paths``, decoded once by the reference's steps."""
    from mlabel_exp.data.loaders import MultiLabelImages, make_loader
    from mlabel_exp.floats import decide, written

    dataset = MultiLabelImages(paths, None, reference.image_steps, on_bad_image="skip", names=names)
    files, logits, got = [], [], []
    for batch in make_loader(dataset, batch_size, shuffle=False, num_workers=0):
        if batch["image"] is None:
            continue
        with torch.inference_mode():
            logits.append(reference.logits(batch["image"]).cpu())
        got.append(candidate.probabilities(batch["image"]).numpy())
        files += batch["name"]
    z = torch.cat(logits) if logits else torch.zeros(0, len(reference.classes))
    ref, got = torch.sigmoid(z).numpy(), np.concatenate(got) if got else np.zeros((0, len(reference.classes)))
    tol, how = tolerance(reference.model, torch.float32, float(z.abs().max()) if len(z) else 0.0)
    t = reference.thresholds
    differ = np.argwhere(decide(ref, t) != decide(got, t))
    rows = [(files[i], reference.classes[c], *(float(written(v)) for v in (ref[i, c], got[i, c], t[c])))
            for i, c in differ]
    near = [r for r in rows if abs(r[2] - r[4]) <= tol]
    diff = float(np.abs(ref - got).max()) if len(files) else 0.0
    return Parity(len(files), diff, tol, how, rows, near)
