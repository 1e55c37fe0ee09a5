"""The architectures a run can name: one ``REGISTRY`` entry each (torchvision models and our SmallCNN), with what
the generic code needs to know about them (classifier, head, partial-training preset, smallest input)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mlabel_exp.errors import ModelError


@dataclass(frozen=True)
class Backbone:
    """What the generic code needs to know about one architecture."""

    arch: str | None                       # torchvision model name; None = SmallCNN (ours)
    classifier: str                        # dotted path of the final layer, replaced by the new head
    head: tuple[str, ...]                  # module prefixes of the "head" parameter group
    partial: tuple[str, ...]               # fnmatch patterns trained by trainable="partial" (plus the head)
    min_size: int = 32                     # smallest square input the model accepts
    build_kwargs: dict = field(default_factory=dict, hash=False)  # extra torchvision constructor arguments
    dropout_in: str | None = None          # module whose existing Dropout layers take p=dropout
    aux_classifier: str | None = None      # final layer of an auxiliary head (replaced by a Linear)
    min_size_aux: int | None = None        # smallest input with the auxiliary head on


REGISTRY: dict[str, Backbone] = {
    "smallcnn": Backbone(None, "head", ("head",), ("features.3",)),
    "resnet18": Backbone("resnet18", "fc", ("fc",), ("layer3", "layer4")),
    "resnet50": Backbone("resnet50", "fc", ("fc",), ("layer3", "layer4")),
    # The whole classifier (the fully connected layers) is the head; partial adds the last conv block.
    "vgg16": Backbone("vgg16", "classifier.6", ("classifier",), ("features.24", "features.26", "features.28"),
                      dropout_in="classifier"),
    # Inputs are normalised once by the data pipeline, so torchvision's transform_input stays off.
    # Sizes from the layer arithmetic, checked by forward passes in tests/test_models.py.
    "inception": Backbone("inception_v3", "fc", ("fc", "AuxLogits.fc"), ("Mixed_6*", "Mixed_7*"), min_size=75,
                          build_kwargs={"aux_logits": True, "transform_input": False, "init_weights": True},
                          aux_classifier="AuxLogits.fc", min_size_aux=299),
}


class SmallCNN(nn.Module):
    """Four blocks of two Conv-BN-ReLU and a MaxPool (16/32/64/128 channels), global max pool, linear head.

    Global max pooling answers "is the object anywhere in the image", which is what multi-label
    presence needs; on the synthetic set it learns about twice as fast as average pooling.
    """

    def __init__(self, num_classes: int = 1000, channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        blocks, c_in = [], 3
        for c in channels:
            blocks.append(nn.Sequential(
                nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                nn.MaxPool2d(2)))
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


# ---------------------------------------------------------------- registry look-ups

def backbone(name: str) -> Backbone:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"model.name={name!r} is not a known model: choose one of {', '.join(REGISTRY)}") from None


def min_input_size(name: str, aux_logits: bool = True) -> int:
    """Smallest square input (pixels) the model accepts; with ``aux_logits`` the auxiliary head included."""
    b = backbone(name)
    return b.min_size_aux if (aux_logits and b.min_size_aux) else b.min_size


def check_input_size(name: str, input_size: int, aux_logits: bool) -> None:
    need = min_input_size(name, aux_logits)
    if input_size >= need:
        return
    b = backbone(name)
    if aux_logits and b.min_size_aux:
        raise ModelError(f"model.input_size={input_size} is too small for {name} with aux logits (needs >= {need}): "
                         f"set model.input_size={need}, or model.aux_logits=false to drop the aux head "
                         f"(then >= {b.min_size} works)")
    raise ModelError(f"model.input_size={input_size} is too small for {name} (needs >= {need}): "
                     f"set model.input_size={need} or more")
