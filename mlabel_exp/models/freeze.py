"""Which parameters train: the head's own parameter group, the trainable presets (all, head, partial, patterns)
and BatchNorm layers that stay frozen in training mode. A timm model's head and partial preset are read from the
model (timm_backbones: get_classifier, feature_info), a registry model's from its entry."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from typing import Any

from torch import nn

from mlabel_exp.config import TRAINABLE_MODES, one_of
from mlabel_exp.errors import ModelError
from mlabel_exp.models import timm_backbones
from mlabel_exp.models.backbones import backbone

log = logging.getLogger(__name__)


def _under(param_name: str, prefixes: Iterable[str]) -> bool:
    return any(param_name == p or param_name.startswith(p + ".") for p in prefixes)


def _presets(model: nn.Module, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(head module prefixes, partial-preset patterns) of model ``name``."""
    if timm_backbones.is_timm(name):
        return tuple(timm_backbones.classifier_names(model)), ()
    b = backbone(name)
    return b.head, b.partial


def head_parameter_names(model: nn.Module, name: str) -> set[str]:
    """Names of the parameters of the new head (for their own learning rate)."""
    prefixes = _presets(model, name)[0]
    return {n for n, _ in model.named_parameters() if _under(n, prefixes)}


def _ancestors(param_name: str) -> list[str]:
    parts = param_name.split(".")[:-1]
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def set_trainable(model: nn.Module, name: str, trainable: Any) -> int:
    """Freeze everything but the chosen part; returns the number of trainable parameters.

    ``trainable``: "all", "head", "partial" (the registry preset plus the head) or a list of fnmatch
    patterns matched against module names (e.g. ["layer4", "Mixed_7*"]), plus the head.
    """
    head, partial = _presets(model, name)
    if isinstance(trainable, str):
        if trainable not in TRAINABLE_MODES:
            raise ModelError(f"model.trainable={trainable!r} is invalid: expected {one_of(TRAINABLE_MODES)}, "
                             "or a list of module-name patterns such as ['layer4']")
        if trainable == "partial" and timm_backbones.is_timm(name):
            partial = tuple(timm_backbones.partial_modules(model))
            log.info("model.trainable=partial: %s trains %s", name, ", ".join(partial))
        patterns = {"all": None, "head": [], "partial": list(partial)}[trainable]
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
            train = _under(pname, head) or any(fnmatch.fnmatchcase(a, p) for a in _ancestors(pname)
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
