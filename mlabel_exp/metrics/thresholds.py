"""Decision thresholds tuned for F1 on validation outputs, and the honest (cross-fitted) metrics at tuned thresholds.

Kept apart from the metrics themselves: the thresholds are fitted to data, so where they are tuned and where they
are scored decides whether a figure is an estimate or an in-sample fit.

Unknown labels (target -1) take no part: each threshold is tuned on the known entries only (the global one on every
known entry, a class's on that class's known entries), and the cross-fitted metrics score known entries only.
"""

from __future__ import annotations

import torch

from mlabel_exp.metrics.scores import binarize, compute

MIN_POSITIVES_PER_CLASS_THRESHOLD = 5  # fewer validation positives: a class keeps the global threshold

def best_f1_threshold(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores >= threshold``, exactly, over every cut between distinct scores.

    Sorting once gives TP and FP for every cut; ties share a cut. The threshold is a float32 probability halfway
    between the lowest score labelled and the highest one not (the cut's margin on both sides, rather than the lowest
    labelled score itself); 0 when every image is labelled (not the lowest score, which can be a meaningless 1e-38 of
    a saturated sigmoid). Kept as floats.as_threshold: exactly what thresholds.json and the predictions write. With no
    positive the F1 is 0 and the threshold 0.5.
    """
    from mlabel_exp.floats import as_threshold

    scores, labels = scores.float().flatten(), labels.double().flatten()  # probabilities are float32
    positives = float(labels.sum())
    if positives == 0:
        return 0.5, 0.0
    order = torch.argsort(scores, descending=True)
    s, y = scores[order], labels[order]
    tp = torch.cumsum(y, 0)
    predicted = torch.arange(1, len(s) + 1, dtype=torch.float64)
    last_of_tie = torch.ones(len(s), dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]       # a cut can only fall after the last of equal scores
    f1 = torch.where(last_of_tie, 2 * tp / (predicted + positives), torch.zeros_like(tp))
    i = int(torch.argmax(f1))
    return as_threshold(cut_between(float(s[i]), float(s[i + 1]) if i + 1 < len(s) else None)), float(f1[i])


def cut_between(lowest_in: float, highest_out: float | None) -> float:
    """The float32 halfway between two float32 scores, strictly above ``highest_out`` and at most ``lowest_in``
    (adjacent float32 have no value between them: then the upper one); 0.0 when nothing is left out."""
    import numpy as np

    if highest_out is None:
        return 0.0
    cut = np.float32((lowest_in + highest_out) / 2)  # exact in float64, then the nearest float32
    return float(cut if cut > highest_out else np.nextafter(np.float32(highest_out), np.float32(np.inf)))


def tune_thresholds(probs: torch.Tensor, targets: torch.Tensor,
                    min_positives: int = MIN_POSITIVES_PER_CLASS_THRESHOLD) -> dict:
    """One global threshold (max micro F1) and per-class thresholds (max F1 of each class), over known entries only.

    A class with fewer than ``min_positives`` validation positives keeps the global threshold:
    its own optimum would be fitted to a handful of images.
    """
    probs, targets = probs.float().cpu(), targets.float().cpu()
    known = targets >= 0  # all of them without unknown labels: the same entries, in the same order, as ever
    global_t, _ = best_f1_threshold(probs[known], targets[known])
    per_class, fallback = [], []
    for c in range(probs.shape[1]):
        k = known[:, c]
        if (targets[k, c] == 1).sum() < min_positives:
            per_class.append(global_t)
            fallback.append(c)
        else:
            per_class.append(best_f1_threshold(probs[k, c], targets[k, c])[0])
    return {"global": global_t, "per_class": per_class, "fallback_to_global": fallback,
            "min_positives": min_positives}


def cross_fitted(probs: torch.Tensor, targets: torch.Tensor, folds: int = 5, seed: int = 0,
                 classes: list[str] | None = None) -> dict[str, float]:
    """Metrics at tuned thresholds, measured honestly on the images they were tuned on: each of ``folds`` folds is
    decided at thresholds tuned on the other folds (cross-fitting), then all decisions are scored together. Tuning
    and scoring on the same images would report the thresholds' fit to their own noise."""
    n = len(probs)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    preds = torch.zeros_like(targets, dtype=torch.int)
    for k in range(min(folds, n)):
        held = order[k::folds]
        rest = torch.ones(n, dtype=torch.bool)
        rest[held] = False
        tuned = tune_thresholds(probs[rest], targets[rest])
        preds[held] = binarize(probs[held].float(), torch.tensor(tuned["per_class"]))
    return compute(probs, targets, classes=classes, preds=preds, quiet=True)
