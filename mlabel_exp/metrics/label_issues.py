"""Which given labels are probably wrong, from out-of-fold probabilities: confident learning's per-class thresholds
(Northcutt, Jiang & Chuang, JAIR 2021), each class a binary problem as cleanlab's multi-label issue finding treats it.

For class c, t_c = the mean probability of c over the images labelled c (how sure the models are of c where it is
given), and u_c = the mean probability of "not c" over the images labelled not-c. A missing label: an image labelled
not-c whose probability of c reaches t_c (and is not as surely not-c: 1 - p below u_c, or p > 1 - p). A wrong label:
an image labelled c whose probability of not-c reaches u_c (likewise). The pairs flagged are ranked by their
self-confidence, the probability of the label given (lowest first: the surest errors first). Unknown labels (-1) are
neither given nor flagged. cleanlab (AGPL-3.0) is not used: the method is these few lines of numpy, and an AGPL
dependency would bind whoever ships this package (an optional extra would still make the feature's default AGPL).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelIssues:
    """The flagged (image, class) pairs in rank order (surest error first), and every class's thresholds."""
    row: np.ndarray          # image (row of the probabilities)
    cls: np.ndarray          # class (column)
    given: np.ndarray        # the label given: 1 (the models find it absent) or 0 (the models see it)
    prob: np.ndarray         # the probability of the class
    confidence: np.ndarray   # self-confidence: the probability of the label given (p, or 1 - p)
    t_present: np.ndarray    # per class: mean p over images labelled with it (NaN: none)
    t_absent: np.ndarray     # per class: mean 1 - p over images labelled without it (NaN: none)

    def __len__(self) -> int:
        return len(self.row)


def class_thresholds(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t_present, t_absent) per class: the mean probability of the given label over the images given each."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    with np.errstate(invalid="ignore", divide="ignore"):
        present = np.where(targets == 1, probs, 0).sum(0) / (targets == 1).sum(0)
        absent = np.where(targets == 0, 1 - probs, 0).sum(0) / (targets == 0).sum(0)
    return present, absent


def find_label_issues(probs: np.ndarray, targets: np.ndarray) -> LabelIssues:
    """The pairs whose given label confident learning flags (see the module), surest error first; ties in
    self-confidence by image, then class."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    if probs.shape != targets.shape or probs.ndim != 2:
        raise ValueError(f"probabilities {probs.shape} and labels {targets.shape} must be the same N x C")
    t_present, t_absent = class_thresholds(probs, targets)
    sure_present = probs >= t_present  # NaN thresholds (no image given the label) flag nothing
    sure_absent = 1 - probs >= t_absent
    missing = (targets == 0) & sure_present & (~sure_absent | (probs > 1 - probs))
    wrong = (targets == 1) & sure_absent & (~sure_present | (1 - probs > probs))
    row, cls = np.nonzero(missing | wrong)
    given = targets[row, cls].astype(np.int8)
    prob = probs[row, cls]
    confidence = np.where(given == 1, prob, 1 - prob)
    order = np.lexsort((cls, row, confidence))
    return LabelIssues(row[order], cls[order], given[order], prob[order], confidence[order], t_present, t_absent)


def rank_by_loss(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every known (image, class) pair as (rows, classes), highest binary cross-entropy of its given label first:
    the plain baseline (no threshold, nothing left out)."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    row, cls = np.nonzero(targets >= 0)
    confidence = np.where(targets[row, cls] == 1, probs[row, cls], 1 - probs[row, cls])
    order = np.lexsort((cls, row, confidence))  # the loss -log(confidence) falls as the confidence rises
    return row[order], cls[order]


def precision_recall_at(rows: np.ndarray, classes: np.ndarray, errors: set[tuple[int, int]],
                        n: int) -> tuple[float, float]:
    """Of the first ``n`` ranked pairs (fewer where fewer are ranked): the share that are ``errors`` (precision, over
    ``n``: an unfilled place counts as a miss) and the share of ``errors`` among them (recall)."""
    hits = sum((int(r), int(c)) in errors for r, c in zip(rows[:n], classes[:n]))
    return hits / n if n else float("nan"), hits / len(errors) if errors else float("nan")
