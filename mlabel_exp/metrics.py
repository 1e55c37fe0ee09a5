"""Validation metrics for multi-label outputs, on torchmetrics; the one place metric names are defined.

Metrics are computed once per epoch from every validation probability and target (never averaged
per batch). A class with no positive in validation has no defined AP: it is left out of mAP with a
warning, and reported as 0 in per-class tables, so nothing NaN reaches the logs.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
from torchmetrics.functional.classification import (
    multilabel_accuracy,
    multilabel_average_precision,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_recall,
)

log = logging.getLogger(__name__)

#: Metric names as logged (``val/`` prefix added by the engine). mAP is the objective.
OBJECTIVE = "mAP"
EPOCH_METRICS = ("mAP", "f1_micro", "f1_macro", "precision_micro", "recall_micro", "accuracy")


def per_class_ap(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AP of each class; NaN where the class has no positive (AP is undefined there)."""
    targets = targets.int()
    with warnings.catch_warnings():  # torchmetrics warns per class without positives; compute() says it once
        warnings.filterwarnings("ignore", message=".*No positive samples.*")
        ap = multilabel_average_precision(probs, targets, num_labels=probs.shape[1], average="none")
    return torch.where(targets.sum(0) > 0, ap, torch.full_like(ap, float("nan")))


def compute(probs: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5,
            classes: list[str] | None = None) -> dict[str, float]:
    """Epoch metrics from N x C probabilities and 0/1 targets."""
    probs, targets = probs.float().cpu(), targets.int().cpu()
    c = probs.shape[1]
    ap = per_class_ap(probs, targets)
    defined = ~torch.isnan(ap)
    if not bool(defined.all()):
        names = [classes[i] if classes else str(i) for i in torch.nonzero(~defined).flatten().tolist()]
        log.warning("no positive validation image for class(es) %s: left out of mAP", ", ".join(names))
    kw = dict(num_labels=c, threshold=threshold)
    out = {
        "mAP": float(ap[defined].mean()) if bool(defined.any()) else 0.0,
        "f1_micro": float(multilabel_f1_score(probs, targets, average="micro", **kw)),
        "f1_macro": float(multilabel_f1_score(probs, targets, average="macro", **kw)),
        "precision_micro": float(multilabel_precision(probs, targets, average="micro", **kw)),
        "recall_micro": float(multilabel_recall(probs, targets, average="micro", **kw)),
        # label-wise accuracy: share of correct (image, class) decisions; the original project's number
        "accuracy": float(multilabel_accuracy(probs, targets, average="micro", **kw)),
    }
    return {k: (0.0 if math.isnan(v) else v) for k, v in out.items()}


def per_class_table(probs: torch.Tensor, targets: torch.Tensor, classes: list[str], threshold: float = 0.5):
    """pandas DataFrame: class, support, AP, F1, precision, recall at ``threshold``."""
    import pandas as pd

    probs, targets = probs.float().cpu(), targets.int().cpu()
    kw = dict(num_labels=len(classes), threshold=threshold, average="none")
    ap = per_class_ap(probs, targets)
    return pd.DataFrame({
        "class": classes,
        "support": targets.sum(0).tolist(),
        "AP": torch.nan_to_num(ap, nan=0.0).tolist(),
        "F1": multilabel_f1_score(probs, targets, **kw).tolist(),
        "precision": multilabel_precision(probs, targets, **kw).tolist(),
        "recall": multilabel_recall(probs, targets, **kw).tolist(),
    })
