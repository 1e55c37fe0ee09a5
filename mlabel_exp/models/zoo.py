"""Model zoo: torchvision backbones (and a small CNN of our own) with a new multi-label head.

Every backbone is one ``REGISTRY`` entry; the code around it is generic. Pretrained weights are always
loaded into the original torchvision architecture first and only then the classifier is replaced, so
ImageNet weights, a state dict on disk and random init all give the same module layout. Weights that
cannot be downloaded (this machine may be offline) raise ``WeightsUnavailable`` naming the exact file
to place in the torch hub cache.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import numbers
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from mlabel_exp.config import TRAINABLE_MODES, UserError, one_of

log = logging.getLogger(__name__)


class ModelError(UserError):
    """Bad model settings or weights; the message names the setting or file and the fix."""


class WeightsUnavailable(ModelError):
    """Pretrained weights that cannot be downloaded here (offline); the message names the file to place."""


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


# ---------------------------------------------------------------- weights

def _is_path(weights: str) -> bool:
    return "/" in weights or os.sep in weights or weights.endswith((".pt", ".pth")) or os.path.isfile(weights)


def _weights_enum_member(name: str, weights: str):
    """The torchvision weights enum member for a name such as DEFAULT, IMAGENET1K_V2 or ResNet50_Weights.DEFAULT."""
    b = backbone(name)
    if b.arch is None:
        raise ModelError(f"model.weights={weights!r}: {name} has no pretrained weights; "
                         "set model.weights=null (random init) or the path of a state dict")
    enum = torchvision.models.get_model_weights(b.arch)
    key = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    try:
        return enum[key]
    except KeyError:
        raise ModelError(f"model.weights={weights!r} is not a weights name for {name}: choose one of "
                         f"{', '.join(enum.__members__)}, null (random init) or the path of a state dict") from None


def _weights_file(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(f"model.weights={weights!r}: no such file {path.resolve()}; "
                         "give the path of a saved state dict, a weights name such as DEFAULT, or null")
    return path


def _sha256_prefix(path: Path, length: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def weights_description(name: str, weights: str | None) -> str:
    """What ``weights`` resolves to, for the run's log: enum member, "random init" or file + sha256 prefix."""
    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if weights is None:
        return "random init"
    if _is_path(weights):
        path = _weights_file(weights)
        return f"state dict {path.resolve()} (sha256 {_sha256_prefix(path)})"
    return str(_weights_enum_member(name, weights))


def hub_file(member) -> Path:
    """Where torch hub keeps the weights ``member``: <TORCH_HOME>/hub/checkpoints/<the URL's file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(member.url)


def _unavailable(member, error: Exception) -> WeightsUnavailable:
    file = hub_file(member)
    state = (f"{file} exists but cannot be read; replace it with {member.url}" if file.exists() else
             f"download {member.url} on a machine with internet and place {file.name} in {file.parent}{os.sep}")
    return WeightsUnavailable(f"pretrained weights {member} are unavailable ({type(error).__name__}: {error}): {state}; "
                              "or train from random init with model.weights=null model.trainable=all")


def fetch_weights(name: str, weights: str | None, timeout: float = 15.0) -> None:
    """Checked before any data is read: a weights file exists, or the named pretrained weights are in the torch hub
    cache, downloaded now with torch hub's progress bar when absent. Offline, the error names the file and folder
    within seconds (every network wait is bounded by ``timeout``: a blocked network does not hang the run). One
    process downloads; others (a parallel sweep, DDP ranks) wait for its file."""
    import http.client
    import socket

    from mlabel_exp.fsutil import file_lock

    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if weights is None:
        return
    if _is_path(weights):
        _weights_file(weights)
        return
    member = _weights_enum_member(name, weights)
    file = hub_file(member)
    if file.is_file():
        return
    file.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(file.with_name(file.name + ".lock")):  # parallel jobs and DDP ranks: one download, the rest wait
        if file.is_file():
            return
        before = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)  # a stalled transfer fails too, not only an unreachable host
        try:
            digest = torch.hub.HASH_REGEX.search(file.name)
            log.info("downloading %s to %s", member.url, file)
            torch.hub.download_url_to_file(member.url, str(file), digest and digest.group(1), progress=True)
        except (OSError, RuntimeError, http.client.HTTPException) as e:  # offline, timeout, full disk, bad hash
            raise _unavailable(member, e) from e
        finally:
            socket.setdefaulttimeout(before)


def _download_state_dict(member) -> dict[str, torch.Tensor]:
    """The enum's state dict from the torch hub cache, downloading it if absent."""
    try:
        # Torchvision's own call: the hash in the file name is checked on download only, not for a cached file.
        return member.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # URLError is an OSError
        raise _unavailable(member, e) from e


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: plain, or under a "model" / "state_dict" key; DataParallel's module. dropped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ModelError(f"model.weights={str(path)!r}: cannot read it as a PyTorch state dict "
                         f"({type(e).__name__}: {str(e)[:200]}); save one with torch.save(model.state_dict(), "
                         "path), not the whole model") from e
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise ModelError(f"model.weights={str(path)!r} holds no state dict (a dict of tensors, possibly under "
                         "a 'model' or 'state_dict' key); save one with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _mismatches(state: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Differences between a state dict and a model: missing, unexpected and shape-mismatched keys."""
    own = model.state_dict()
    problems = [f"{k}: file has {list(v.shape)}, model has {list(own[k].shape)}"
                for k, v in state.items() if k in own and v.shape != own[k].shape]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [f"missing {k}" for k in own if k not in state]
    if problems:
        problems.insert(0, f"keys in common {len(state.keys() & own.keys())} (file {len(state)}, model {len(own)})")
    return problems


# ---------------------------------------------------------------- building

def _make_head(in_features: int, num_classes: int, dropout: float, hidden: int) -> nn.Sequential:
    if hidden > 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                             nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, last = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, last, new)


def _in_features(model: nn.Module, path: str) -> int:
    layer = model.get_submodule(path)
    if not isinstance(layer, nn.Linear):
        raise ModelError(f"registry entry: {path} is a {type(layer).__name__}, expected the final nn.Linear")
    return layer.in_features


def build_model(name: str, num_classes: int, *, weights: str | None = None, dropout: float = 0.0,
                hidden: int = 0, aux_logits: bool = True, input_size: int | None = None) -> nn.Module:
    """The backbone ``name`` with a new ``num_classes`` head, initialised from ``weights``.

    ``weights``: None (random init), a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...), or the path of
    a state dict, either ImageNet-shaped for the original architecture or one of this model with its head.
    Settings are range-checked by the config schema; only what the config cannot know is checked here.
    """
    b = backbone(name)
    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if not (isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool) and num_classes >= 1):
        raise ModelError(f"num_classes={num_classes!r}: expected an integer >= 1 (the data set has no classes?)")
    has_aux = b.aux_classifier is not None
    if input_size is not None:
        check_input_size(name, input_size, aux_logits and has_aux)
    member = path = file_state = None
    if weights is not None:
        if _is_path(weights):
            path = _weights_file(weights)
            file_state = _read_state_dict(path)
        else:
            member = _weights_enum_member(name, weights)
    # 1. The original architecture (ImageNet classifier, aux head on), pretrained weights loaded into it.
    model, loaded, original_problems = _original(name, b, member, file_state, path)
    # 2. The new head(s).
    _replace(model, b.classifier, _make_head(_in_features(model, b.classifier), num_classes, dropout, hidden))
    if b.dropout_in:
        for m in model.get_submodule(b.dropout_in).modules():
            if isinstance(m, nn.Dropout):
                m.p = dropout
    if has_aux:
        if aux_logits:
            _replace(model, b.aux_classifier, nn.Linear(_in_features(model, b.aux_classifier), num_classes))
        else:
            aux_module = b.aux_classifier.split(".")[0]
            setattr(model, aux_module, None)
            model.aux_logits = False
            if file_state is not None and not loaded:  # a checkpoint trained with the aux head still fits
                file_state = {k: v for k, v in file_state.items() if not k.startswith(aux_module + ".")}
    # 3. A state dict of this very model (new head included).
    if file_state is not None and not loaded:
        problems = _mismatches(file_state, model)
        if problems:
            against = f"{name} with {num_classes} classes (model.hidden={hidden}" + (
                f", model.aux_logits={str(aux_logits).lower()})" if has_aux else ")")
            _does_not_fit(path, original_problems, problems, f"the original {b.arch} architecture", against)
        model.load_state_dict(file_state)
        log.info("%s: loaded %s (this model, head included)", name, path)
    return model


def _original(name: str, b: Backbone, member, file_state, path) -> tuple[nn.Module, bool, list[str]]:
    """The original architecture with the pretrained weights (``member``) or an ImageNet-shaped state dict loaded;
    returns (model, loaded, why ``file_state`` does not fit it)."""
    if b.arch is None:
        model = SmallCNN()
    else:
        kwargs = dict(b.build_kwargs)
        if (member is not None or file_state is not None) and "init_weights" in kwargs:
            kwargs["init_weights"] = False  # overwritten anyway
        model = torchvision.models.get_model(b.arch, weights=None, **kwargs)
    if member is not None:
        try:
            model.load_state_dict(_download_state_dict(member))
        except RuntimeError as e:  # a wrong file placed under the expected name
            raise ModelError(f"{hub_file(member)} does not hold the weights {member} ({str(e)[:300]}); delete it "
                             f"or replace it with {member.url}") from e
        return model, True, []
    if file_state is not None and b.arch is not None:
        problems = _mismatches(file_state, model)
        if not problems:  # ImageNet-shaped: load now, the head is replaced afterwards
            model.load_state_dict(file_state)
            log.info("%s: loaded %s into the original %s architecture", name, path, b.arch)
            return model, True, []
        return model, False, problems
    return model, False, []


def _does_not_fit(path, original_problems: list[str], problems: list[str], original: str, against: str):
    """The error for a state dict that fits neither the original architecture nor this model: the closer one."""
    if original_problems and len(original_problems) < len(problems):
        problems, against = original_problems, original
    shown = "; ".join(problems[:6]) + (f"; ... ({len(problems) - 1} in all)" if len(problems) > 6 else "")
    raise ModelError(f"model.weights={str(path)!r} does not fit {against}: {shown}. Use a state dict "
                     f"saved from the same model.name, class count and model.hidden, or model.weights=null")


# ---------------------------------------------------------------- training which parameters

def _under(param_name: str, prefixes: Iterable[str]) -> bool:
    return any(param_name == p or param_name.startswith(p + ".") for p in prefixes)


def head_parameter_names(model: nn.Module, name: str) -> set[str]:
    """Names of the parameters of the new head (for their own learning rate)."""
    prefixes = backbone(name).head
    return {n for n, _ in model.named_parameters() if _under(n, prefixes)}


def _ancestors(param_name: str) -> list[str]:
    parts = param_name.split(".")[:-1]
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def set_trainable(model: nn.Module, name: str, trainable: Any) -> int:
    """Freeze everything but the chosen part; returns the number of trainable parameters.

    ``trainable``: "all", "head", "partial" (the registry preset plus the head) or a list of fnmatch
    patterns matched against module names (e.g. ["layer4", "Mixed_7*"]), plus the head.
    """
    b = backbone(name)
    if isinstance(trainable, str):
        if trainable not in TRAINABLE_MODES:
            raise ModelError(f"model.trainable={trainable!r} is invalid: expected {one_of(TRAINABLE_MODES)}, "
                             "or a list of module-name patterns such as ['layer4']")
        patterns = {"all": None, "head": [], "partial": list(b.partial)}[trainable]
    else:
        patterns = list(trainable) if isinstance(trainable, Iterable) else [trainable]
        if not all(isinstance(p, str) and p for p in patterns):
            raise ModelError(f"model.trainable={patterns!r}: every entry must be a module-name pattern (a string)")
    if patterns:
        module_names = [n for n, _ in model.named_modules() if n]
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in module_names):
                top = [n for n, _ in model.named_children()]
                raise ModelError(f"model.trainable: pattern {p!r} matches no module of {name}; top-level modules "
                                 f"are {', '.join(top[:12])}{', ...' if len(top) > 12 else ''} "
                                 "(patterns match dotted module names, e.g. layer4 or Mixed_7*)")
    for pname, param in model.named_parameters():
        if patterns is None:
            train = True
        else:
            train = _under(pname, b.head) or any(fnmatch.fnmatchcase(a, p) for a in _ancestors(pname)
                                                 for p in patterns)
        param.requires_grad_(train)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def keep_frozen_bn_in_eval(model: nn.Module) -> None:
    """Call after ``model.train()``: BatchNorm layers whose parameters are all frozen keep their running stats."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
