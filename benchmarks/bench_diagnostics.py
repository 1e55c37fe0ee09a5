"""The diagnostics pass (galleries, calibration, confusion, per-class AP intervals) on a validation set of 10,176
images, against one training epoch over as many images with the default model (smallcnn, 64 px, batch 64: the
cheapest epoch the project trains, so the hardest comparison). The epoch is timed on 30 steps of the model's forward,
backward and AdamW step, then scaled to the images: the data loading an epoch also does is left out (it is not
cheaper than nothing), so the ratio is an upper bound. Probabilities are synthetic: each label's logit is drawn
around +-1.5 (a model with val mAP near 0.8), on the real synthetic images of the cached benchmark set.

    python benchmarks/bench_diagnostics.py [--num-images 10176] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import calibration_line, dataset, machine_line, wait_for_quiet  # noqa: E402


def synthetic_predictions(index, folder: Path) -> None:
    """predictions/val.json of every image of ``index``: logits +-1.5 plus unit noise, thresholds tuned for F1."""
    import numpy as np
    import torch

    from mlabel_exp.metrics.thresholds import tune_thresholds
    from mlabel_exp.inference.outputs import write_predictions

    rng = np.random.default_rng(0)
    labels = np.asarray(index.labels)
    logits = np.where(labels == 1, 1.5, -1.5) - 1.0 + rng.normal(0, 1.2, labels.shape)
    probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
    tuned = tune_thresholds(torch.from_numpy(probs), torch.from_numpy(labels.astype(np.float32)))
    write_predictions(folder, "val", list(index.files), probs, index.classes, np.array(tuned["per_class"]),
                      targets=labels)


def epoch_seconds(n_images: int, steps: int = 30, batch: int = 64) -> float:
    """One epoch of smallcnn at 64 px over ``n_images``, from the time of ``steps`` training steps."""
    import torch

    from mlabel_exp.models.zoo import build_model

    torch.manual_seed(0)
    net = build_model("smallcnn", 14, input_size=64)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, 64, 64), (torch.rand(batch, 14) < 0.2).float()

    def step():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / (steps * batch) * n_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=10176)
    parser.add_argument("--out", type=Path, default=None, help="keep the diagnostics here (default: deleted)")
    args = parser.parse_args()

    from mlabel_exp.diagnostics.writer import image_locator, read_evaluations, write_diagnostics
    from mlabel_exp.config import DataConfig, DiagnosticsConfig
    from mlabel_exp.data.formats import index_from_config

    print(machine_line())
    print(calibration_line())
    root = dataset(args.num_images)
    index = index_from_config(DataConfig(name="folder", root=str(root)))
    tmp = Path(tempfile.mkdtemp(prefix="bench_diag_"))
    try:
        synthetic_predictions(index, tmp / "predictions")
        out = args.out or tmp / "diagnostics"
        wait_for_quiet()
        start = time.perf_counter()
        evaluations = read_evaluations(tmp / "predictions", image_locator(index.image_dir, index.files))
        write_diagnostics(out, evaluations, DiagnosticsConfig())
        diagnostics_s = time.perf_counter() - start
        figures = len(list(out.glob("*.png")))
        wait_for_quiet()
        epoch_s = epoch_seconds(args.num_images)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"diagnostics pass on {args.num_images} validation images (14 classes, {figures} figures, defaults): "
          f"{diagnostics_s:.1f} s")
    print(f"one training epoch over {args.num_images} images (smallcnn, 64 px, batch 64, compute only): "
          f"{epoch_s:.1f} s")
    print(f"ratio diagnostics / epoch: {diagnostics_s / epoch_s:.2f}x")


if __name__ == "__main__":
    main()
