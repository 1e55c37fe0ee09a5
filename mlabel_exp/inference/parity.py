"""Does an exported model compute what the run's Predictor computes? Both on the same uint8 batches (the Predictor's
own decoding and normalisation), judged where the file's output is: the largest probability difference against a
tolerance derived from float32 arithmetic, and the labels at the run's thresholds compared.

The tolerance (docs/export.md#the-parity-check). Two implementations of one layer (PyTorch's oneDNN kernels and
onnxruntime's MLAS, which also folds batch norm into the convolution weights) add the same K products in another
order: their results differ by a few roundings, which grow like sqrt(K) units of the dtype's eps relative to the
layer's magnitude when the order is unrelated (a random walk of roundings). Layer by layer the relative differences
add up, so a logit z may move by ``depth * sqrt(K) * eps * max(1, |z|)``, with depth the number of weight layers
(convolutions and linear layers) and K the largest fan-in. The probability moves by the sigmoid's slope times that,
and sigmoid'(z) * max(1, |z|) <= 1/4 for every z (sigmoid' <= 1/4, and z * sigmoid'(z) <= 0.224): the |logit| drops
out, so a large logit, where the sigmoid is flat, widens nothing. Each side then computes its own float32 sigmoid,
within ``SIGMOID_EPS`` eps of the other. A wrong weight, a missing sigmoid or another preprocessing moves
probabilities by far more (a logit by 0.1 moves p by up to 0.025).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlabel_exp.floats import decide, written


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


#: How far two float32 sigmoids of one logit may lie apart, in eps: torch's is within 0.75 eps of the exact value and
#: onnxruntime's (MLAS, an approximation) within 1.4 eps, 1.5 eps apart at most over [-40, 40]
#: (tests/test_export.py measures it); a correctly rounded p in [0, 1] would be within eps / 4.
SIGMOID_EPS = 2


def tolerance(model: nn.Module, dtype: torch.dtype) -> tuple[float, str]:
    """The probability tolerance of ``model`` computed in ``dtype`` by two implementations (module docstring), and
    how it was derived."""
    depth, fan_in = weight_layers(model)
    eps = torch.finfo(dtype).eps
    tol = depth * math.sqrt(fan_in) * eps / 4 + SIGMOID_EPS * eps
    return tol, (f"{depth} weight layers x sqrt(largest fan-in {fan_in}) x {str(dtype).removeprefix('torch.')} eps "
                 f"{eps:.3g} / 4 (the sigmoid's slope x max(1, |logit|) <= 1/4) + {SIGMOID_EPS} eps (the sigmoids' "
                 "own error)")


def compare(reference, candidate, paths: list[Path], names: list[str], batch_size: int) -> Parity:
    """``candidate`` (anything with ``probabilities(uint8 batch)``, e.g. an OnnxPredictor) against ``reference`` (a
    Predictor in float32) on the images ``paths``, decoded once by the reference's steps."""
    from mlabel_exp.data.loaders import MultiLabelImages, make_loader

    dataset = MultiLabelImages(paths, None, reference.image_steps, on_bad_image="skip", names=names)
    files, ref, got = [], [], []
    for batch in make_loader(dataset, batch_size, shuffle=False, num_workers=0):
        if batch["image"] is None:
            continue
        ref.append(reference.probabilities(batch["image"]).numpy())
        got.append(candidate.probabilities(batch["image"]).numpy())
        files += batch["name"]
    empty = np.zeros((0, len(reference.classes)), dtype=np.float32)
    ref, got = (np.concatenate(a) if a else empty for a in (ref, got))
    tol, how = tolerance(reference.model, torch.float32)
    t = reference.thresholds
    differ = np.argwhere(decide(ref, t) != decide(got, t))
    rows = [(files[i], reference.classes[c], *(float(written(v)) for v in (ref[i, c], got[i, c], t[c])))
            for i, c in differ]
    near = [r for r in rows if abs(r[2] - r[4]) <= tol]
    diff = float(np.abs(ref.astype(np.float64) - got).max()) if len(files) else 0.0
    return Parity(len(files), diff, tol, how, rows, near)
