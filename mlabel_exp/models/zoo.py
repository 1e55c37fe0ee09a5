"""Building a model: the backbone ``name`` (models.backbones, or ``timm:<name>``: models.timm_backbones) with a new
multi-label head.

Pretrained weights are always loaded into the original torchvision architecture first and only then the classifier
is replaced, so ImageNet weights, a state dict on disk and random init all give the same module layout. A timm model
is built by timm with our class count (its own classifier, timm's weights loaded by timm).
"""

from __future__ import annotations

import logging
import numbers
import os

import torch
import torchvision
from torch import nn

from mlabel_exp.errors import ModelError
from mlabel_exp.models import backbones, timm_backbones
from mlabel_exp.models.backbones import Backbone, SmallCNN, backbone
from mlabel_exp.models.weights import (check_timm_weights, download_state_dict, hub_file, is_weights_file,
                                       read_state_dict, weights_file, weights_member)

log = logging.getLogger(__name__)


def check_input_size(name: str, input_size: int, aux_logits: bool = True) -> None:
    """``input_size`` goes through model ``name`` (a registry name, or ``timm:<name>``), else the error with the fix."""
    if timm_backbones.is_timm(name):
        timm_backbones.check_input_size(timm_backbones.timm_name(name), input_size)
    else:
        backbones.check_input_size(name, input_size, aux_logits)


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
    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if not (isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool) and num_classes >= 1):
        raise ModelError(f"num_classes={num_classes!r}: expected an integer >= 1 (the data set has no classes?)")
    if timm_backbones.is_timm(name):
        return _timm_model(name, num_classes, weights, dropout, input_size)
    b = backbone(name)
    has_aux = b.aux_classifier is not None
    if input_size is not None:
        check_input_size(name, input_size, aux_logits and has_aux)
    member = path = file_state = None
    if weights is not None:
        if is_weights_file(weights):
            path = weights_file(weights)
            file_state = read_state_dict(path)
        else:
            member = weights_member(name, weights)
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


def _timm_model(key: str, num_classes: int, weights: str | None, dropout: float, input_size: int | None) -> nn.Module:
    """A timm model: timm's DEFAULT weights loaded by timm, or a state dict of its architecture (ImageNet-shaped: the
    classifier that does not fit ``num_classes`` is left out, with a note; or this model's own)."""
    name = timm_backbones.timm_name(key)
    if input_size is not None:
        check_input_size(key, input_size, False)
    path = weights_file(weights) if weights is not None and is_weights_file(weights) else None
    pretrained = weights is not None and path is None and bool(check_timm_weights(key, weights))
    model = timm_backbones.create(name, num_classes, pretrained=pretrained, dropout=dropout)
    if path is None:
        return model
    state, own = read_state_dict(path), model.state_dict()
    head = timm_backbones.classifier_names(model)
    dropped = [k for k, v in state.items() if k in own and v.shape != own[k].shape
               and any(k.startswith(h + ".") for h in head)]
    state = {k: v for k, v in state.items() if k not in dropped}
    problems = [p for p in _mismatches(state, model) if p.removeprefix("missing ") not in dropped]
    if len(problems) > 1:  # the first line only counts the keys in common
        _does_not_fit(path, [], problems, "", f"timm {name} with {num_classes} classes")
    model.load_state_dict(state, strict=not dropped)
    if dropped:
        log.info("%s: loaded %s without its classifier (%s do not fit %d classes: they start from random init)",
                 name, path, ", ".join(dropped), num_classes)
    else:
        log.info("%s: loaded %s (this model, classifier included)", name, path)
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
            model.load_state_dict(download_state_dict(member))
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
