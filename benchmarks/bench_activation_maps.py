"""Cost of the activation maps (diagnostics/activation_maps.py): resnet50 (random weights), 224 px, a page for each of
the 14 classes (diagnostics.activation_map_classes=0) with 2 images of each kind (its most confident true positives,
false positives and false negatives; a map of the class and of the image's other predicted labels), on the CPU.

Baseline, in the same run: a plain inference pass (``Predictor.probabilities``) over the same images, and one training
step of resnet50 at 224 px, from which one training epoch on the real 10,176-image set is estimated (steps x
images). The last line is the ratio of the maps' time to that epoch.

    .venv/bin/python benchmarks/bench_activation_maps.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _common

PER_KIND = 2
REAL_SET = 10_176  # the original course's data set


def main() -> None:
    import matplotlib.pyplot  # noqa: F401 - imports out of the timings
    import pytorch_grad_cam  # noqa: F401

    from mlabel_exp.diagnostics import activation_maps as am
    from mlabel_exp.data.formats.folder import build_index
    from mlabel_exp.inference.predictor import Predictor
    from mlabel_exp.models.zoo import build_model

    print(_common.machine_line())
    print(_common.calibration_line())
    index = build_index(_common.dataset(300, 224))
    torch.manual_seed(0)
    model = build_model("resnet50", len(index.classes)).eval()
    predictor = Predictor(model, {"decode_size": 224, "input_size": 224, "mean": _common.IMAGENET_MEAN,
                                  "std": _common.IMAGENET_STD}, index.classes)
    labels = (index.labels > 0).astype(np.float32)  # a fair model's probabilities: its labels, noise, some errors
    probs = np.clip(0.1 + 0.8 * labels + np.random.default_rng(0).normal(0, 0.25, labels.shape), 0, 1)
    thresholds = [0.5] * len(index.classes)
    picked = am.pick_images(probs, thresholds, PER_KIND, index.labels)
    rows = sorted({r for kinds in picked.values() for rs in kinds.values() for r in rs})
    paths = index.paths()

    start = time.perf_counter()
    predictor.predict_files([paths[r] for r in rows], batch_size=16, num_workers=0)
    inference_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        entries = am.write_activation_maps(Path(out), predictor, paths, probs, thresholds, index.classes,
                                           per_kind=PER_KIND, targets=index.labels, pages=0)
        maps_s = time.perf_counter() - start
    model.train()
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.randn(16, 3, 224, 224), torch.rand(16, len(index.classes)).round()
    step_s = []
    for _ in range(2):  # the first warms up
        start = time.perf_counter()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        step_s.append(time.perf_counter() - start)
    epoch_s = step_s[-1] / 16 * REAL_SET
    print(f"resnet50, 224 px, {torch.get_num_threads()} threads: {len(entries)} class pages of {len(rows)} images")
    print(f"  inference of those {len(rows)} images: {inference_s:.1f} s")
    print(f"  activation maps (reading, Grad-CAM, {len(entries)} pages drawn): {maps_s:.1f} s")
    print(f"  one training epoch on {REAL_SET} images, estimated from one step of 16: {epoch_s:.0f} s")
    print(f"ratio: maps / inference of the same images {maps_s / inference_s:.1f}; "
          f"maps / one training epoch {maps_s / epoch_s:.4f}")


if __name__ == "__main__":
    main()
