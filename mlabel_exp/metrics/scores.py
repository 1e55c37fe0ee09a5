"""Validation metrics for multi-label outputs, on torchmetrics; the one place metric names are defined.

Metrics are computed once per epoch from every validation probability and target (never averaged
per batch). A class with no positive in validation has no defined AP, recall or F1: it is left out of mAP and of every
macro average (precision, recall, F1, CP/CR/CF1) with a warning, so all averages cover the same classes. Label-wise accuracy
is kept for comparison with the original project, but predicting "nothing" already scores ~93% on
the real data: mAP and the F1 family are the numbers to read.

Unknown labels (target -1) are left out of every metric: AP, F1, precision and recall of a class count only its known
entries, the micro averages, Hamming loss and accuracy only known entries, and an image matches exactly when all its
known labels are right (torchmetrics' ``ignore_index=-1``). Without a -1 the figures are computed as they always were.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
from torchmetrics.functional.classification import (
    multilabel_accuracy,
    multilabel_average_precision,
    multilabel_exact_match,
    multilabel_f1_score,
    multilabel_hamming_distance,
    multilabel_precision,
    multilabel_recall,
)

log = logging.getLogger(__name__)
# torchmetrics warns once per class without positives, from every curve and AP it computes; ``compute`` says it once
# per run in its own words (and the run records the classes), so torchmetrics' repetition is noise. The one place.
warnings.filterwarnings("ignore", message=".*No positive samples (found )?in target.*")

#: The objective (val/mAP) and every metric ``compute`` returns, in log order.
OBJECTIVE = "mAP"
EPOCH_METRICS = (
    "mAP",
    "f1_micro", "f1_macro", "precision_micro", "precision_macro", "recall_micro", "recall_macro",
    "CP", "CR", "CF1", "OP", "OR", "OF1",         # the ML-GCN / ASL protocol
    "hamming_loss", "subset_accuracy", "accuracy",  # accuracy: label-wise (the original project's)
)
#: Logged as <split>/<name>; the others as <split>/more/<name>, a chart section of their own after the key curves
#: (MLflow's UI orders a run's chart sections by name and the charts in each by name).
KEY_METRICS = ("mAP", "f1_micro", "f1_macro")


def logged_name(split: str, metric: str) -> str:
    return f"{split}/{metric}" if metric in KEY_METRICS else f"{split}/more/{metric}"



UNKNOWN = -1  # the target of an unknown label


def ignored(targets: torch.Tensor) -> int | None:
    """torchmetrics' ``ignore_index``: -1 where some target is unknown; None otherwise (the computation of old)."""
    return UNKNOWN if bool((targets < 0).any()) else None


def positives(targets: torch.Tensor) -> torch.Tensor:
    """Known positives per class (an unknown -1 is not one)."""
    return (targets == 1).sum(0)


def per_class_ap(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AP of each class over its known entries; NaN where the class has no (known) positive (AP is undefined there)."""
    targets = targets.int()
    ap = multilabel_average_precision(probs, targets, num_labels=probs.shape[1], average="none",
                                      ignore_index=ignored(targets))
    return torch.where(positives(targets) > 0, ap, torch.full_like(ap, float("nan")))


def binarize(probs: torch.Tensor, thresholds: float | torch.Tensor = 0.5) -> torch.Tensor:
    """0/1 predictions; ``thresholds`` is one number or one per class."""
    t = torch.as_tensor(thresholds, dtype=probs.dtype)
    return (probs >= t).int()


def compute(probs: torch.Tensor, targets: torch.Tensor, thresholds: float | torch.Tensor = 0.5,
            classes: list[str] | None = None, preds: torch.Tensor | None = None, quiet: bool = False) -> dict[str, float]:
    """Every metric of EPOCH_METRICS from N x C probabilities and 0/1 targets (-1: unknown, left out); the decisions are
    ``probs >= thresholds``, or ``preds`` when given (decisions made elsewhere, e.g. out of fold). ``quiet``: the classes
    without positives were named already (every epoch validates the same images)."""
    probs, targets = probs.float().cpu(), targets.int().cpu()
    c = probs.shape[1]
    ap = per_class_ap(probs, targets)
    defined = ~torch.isnan(ap)
    if not bool(defined.all()) and not quiet:
        names = [classes[i] if classes else str(i) for i in torch.nonzero(~defined).flatten().tolist()]
        log.warning("no positive validation image for class(es) %s: left out of mAP", ", ".join(names))
    preds = binarize(probs, thresholds) if preds is None else preds.int().cpu()  # int: torchmetrics takes decisions
    kw = dict(num_labels=c, ignore_index=ignored(targets))
    out = {"mAP": float(ap[defined].mean()) if bool(defined.any()) else 0.0}
    for name, fn in (("f1", multilabel_f1_score), ("precision", multilabel_precision), ("recall", multilabel_recall)):
        out[f"{name}_micro"] = float(fn(preds, targets, average="micro", **kw))
        # macro figures average over the classes mAP averages over: a class without positives has no recall/F1
        per_class = fn(preds, targets, average="none", **kw)
        out[f"{name}_macro"] = float(per_class[defined].mean()) if bool(defined.any()) else 0.0
    cp, cr = out["precision_macro"], out["recall_macro"]
    out.update({
        "CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr) if cp + cr > 0 else 0.0,
        "OP": out["precision_micro"], "OR": out["recall_micro"], "OF1": out["f1_micro"],
        "hamming_loss": float(multilabel_hamming_distance(preds, targets, average="micro", **kw)),
        "subset_accuracy": float(multilabel_exact_match(preds, targets, **kw)),
        "accuracy": float(multilabel_accuracy(preds, targets, average="micro", **kw)),
    })
    return {k: (0.0 if math.isnan(out[k]) else out[k]) for k in EPOCH_METRICS}


def per_class_table(probs: torch.Tensor, targets: torch.Tensor, classes: list[str],
                    thresholds: float | torch.Tensor = 0.5):
    """pandas DataFrame: class, support (known positives), AP, threshold, F1, precision, recall; each over the class's
    known entries."""
    import pandas as pd

    probs, targets = probs.float().cpu(), targets.int().cpu()
    preds = binarize(probs, thresholds)
    kw = dict(num_labels=len(classes), average="none", ignore_index=ignored(targets))
    return pd.DataFrame({
        "class": classes,
        "support": positives(targets).tolist(),
        "AP": per_class_ap(probs, targets).tolist(),  # NaN (empty in the CSV) where a class has no positive
        "threshold": torch.as_tensor(thresholds, dtype=torch.float32).expand(len(classes)).tolist(),
        "F1": multilabel_f1_score(preds, targets, **kw).tolist(),
        "precision": multilabel_precision(preds, targets, **kw).tolist(),
        "recall": multilabel_recall(preds, targets, **kw).tolist(),
    })
