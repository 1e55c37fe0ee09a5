"""Where and why a model fails, from the predictions a run writes: the errors to look at (galleries), calibration
(reliability, ECE, Brier), what is predicted although absent when another class is present, and the index of the
figures (``diagnostics/index.json``) that the run's report reads.

Numbers only here; the figures are in ``diagnostic_figures``, the pass that writes them in ``diagnostics_pass``.
Unknown labels (-1) take no part in any number, as in ``metrics``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlabel_exp.fsutil import write_atomic

INDEX = "index.json"


@dataclass
class Evaluation:
    """One split's predictions: file names, probabilities (N x C, as written), true labels (N x C: 1, 0, -1 unknown),
    the thresholds they were decided at (C) and where each image is (None: not found on this machine)."""
    split: str
    classes: list[str]
    names: list[str]
    probs: np.ndarray
    targets: np.ndarray
    thresholds: np.ndarray
    paths: list[Path | None]

    @property
    def predicted(self) -> np.ndarray:
        """The labels written in the predictions files: written probability >= written threshold."""
        return self.probs >= self.thresholds[None, :]


def read_predictions(path: Path, split: str, image_of=None, labels_of=None) -> Evaluation:
    """An Evaluation from ``predictions/<split>.json`` (read by ``outputs.read_predictions``): its probabilities,
    thresholds and true and unknown labels exactly as written. ``image_of(name)``: the image's path (or None);
    ``labels_of(name)``: its label row in the data set, which marks the unknown labels (-1) of a file an older version
    wrote (true labels only) and is not needed otherwise."""
    from mlabel_exp.inference.outputs import read_predictions as read

    p = read(Path(path).read_text(), "json", str(path))
    names, n = p.files, len(p.files)
    targets = p.targets if p.targets is not None else np.zeros((n, len(p.classes)), dtype=np.int8)
    if not p.marks_unknowns and labels_of is not None:
        for i, name in enumerate(names):
            known = labels_of(name)
            if known is not None:
                targets[i] = np.where(np.asarray(known) < 0, -1, targets[i])  # unknown stays unknown, never negative
    thresholds = p.thresholds if p.thresholds is not None else np.full(len(p.classes), 0.5)
    paths = [image_of(n) if image_of else None for n in names]
    return Evaluation(split, p.classes, names, p.probs, targets, thresholds, paths)


# ------------------------------------------------------------------ calibration

@dataclass
class Calibration:
    """ECE and Brier score per class and pooled (every known label of every class), and the reliability bins:
    per bin, the mean predicted probability, the share of positives and the count (pooled, and per class)."""
    ece: np.ndarray            # C; NaN where a class has no known label
    brier: np.ndarray          # C
    ece_pooled: float
    brier_pooled: float
    bins: int
    pooled_bins: tuple[np.ndarray, np.ndarray, np.ndarray]
    class_bins: list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int):
    """(mean probability, share of positives, count) of each bin [k/bins, (k+1)/bins), a probability of exactly 1 in
    a last bin of its own: torchmetrics' binning, so the diagram draws what its ECE sums."""
    index = np.searchsorted(np.linspace(0, 1, bins + 1), probs, side="right") - 1
    count = np.bincount(index, minlength=bins + 1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=probs, minlength=bins + 1) / count
        positive = np.bincount(index, weights=labels.astype(float), minlength=bins + 1) / count
    return confidence, positive, count


def calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Expected calibration error (L1) of P(label) over binned probabilities: torchmetrics' binary_calibration_error."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    if len(probs) == 0:
        return float("nan")
    return float(binary_calibration_error(torch.as_tensor(probs, dtype=torch.float64),
                                          torch.as_tensor(labels, dtype=torch.int64), n_bins=bins, norm="l1"))


def calibration(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> Calibration:
    """ECE and Brier score of each class over its known labels, and pooled over every known label."""
    known = targets >= 0
    ece, brier, class_bins = [], [], []
    for c in range(probs.shape[1]):
        p, y = probs[known[:, c], c], targets[known[:, c], c]
        ece.append(calibration_error(p, y, bins))
        brier.append(float(np.mean((p - y) ** 2)) if len(p) else float("nan"))
        class_bins.append(reliability_bins(p, y, bins))
    p, y = probs[known], targets[known]
    return Calibration(np.array(ece), np.array(brier), calibration_error(p, y, bins),
                       float(np.mean((p - y) ** 2)) if len(p) else float("nan"), bins, reliability_bins(p, y, bins),
                       class_bins)


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimising the binary cross-entropy of sigmoid(logit(p) / T) over the known labels
    (temperature scaling, one T for every class): T > 1 softens an over-confident model, T < 1 sharpens an
    under-confident one. Probabilities are clipped to [1e-7, 1 - 1e-7] first (a saturated float32 sigmoid is 0 or 1)."""
    from scipy.optimize import minimize_scalar

    known = targets >= 0
    z, y = _logit(probs[known]), targets[known].astype(float)

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, s) - y * s))  # BCE of sigmoid(s), stable for large |s|

    return float(np.exp(minimize_scalar(loss, bounds=(-4, 4), method="bounded",
                                        options={"xatol": 1e-8}).x))


def _logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities at ``temperature``: sigmoid(logit(p) / T)."""
    return 1 / (1 + np.exp(-_logit(probs) / temperature))


# ------------------------------------------------------------------ confusion

def false_positive_given_present(targets: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M[i, j] = P(j predicted | i present, j absent): of the images holding class i and known not to hold j, the
    share where j is predicted; and the number of such images (the denominator). NaN on the diagonal and where no
    image qualifies. Label correlation cannot raise it: j is truly absent in every image counted."""
    present = (targets == 1).astype(np.int64)
    absent = (targets == 0).astype(np.int64)
    false_pos = (absent & predicted.astype(np.int64))
    n = present.T @ absent                     # images with i present and j absent
    hits = present.T @ false_pos               # ... where j is predicted
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
    np.fill_diagonal(share, np.nan)
    return share, n


def cooccurrence_counts(targets: np.ndarray) -> np.ndarray:
    """C x C images holding both classes (known positives), the diagonal each class's positives."""
    present = (targets == 1).astype(np.int64)
    return present.T @ present


# ------------------------------------------------------------------ galleries

def top_errors(probs: np.ndarray, targets: np.ndarray, predicted: np.ndarray, c: int, k: int):
    """Rows of the ``k`` most confident false positives of class ``c`` (predicted, known absent; highest probability
    first) and of its ``k`` most confident false negatives (not predicted, present; lowest probability first). Ties
    are broken by row, so the choice is reproducible."""
    p = probs[:, c]
    fp = np.flatnonzero(predicted[:, c] & (targets[:, c] == 0))
    fn = np.flatnonzero(~predicted[:, c] & (targets[:, c] == 1))
    fp = fp[np.lexsort((fp, -p[fp]))][:k]
    fn = fn[np.lexsort((fn, p[fn]))][:k]
    return fp, fn


def errors_per_class(targets: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """False positives plus false negatives of each class (known labels only)."""
    return ((predicted & (targets == 0)) | (~predicted & (targets == 1))).sum(0)


def gallery_classes(targets: np.ndarray, predicted: np.ndarray, n: int) -> list[int]:
    """The classes whose galleries are drawn: every class with an error (``n`` = 0) or the ``n`` with the most, most
    first (ties by class order)."""
    errors = errors_per_class(targets, predicted)
    order = [c for c in np.lexsort((np.arange(len(errors)), -errors)) if errors[c] > 0]
    return order if n == 0 else order[:n]


# ------------------------------------------------------------------ the index the report reads

def add_to_index(folder: Path, entries: list[dict]) -> Path:
    """Merge ``entries`` into ``folder/index.json``: a JSON list, in reading order, of {"title", "image" (a file in
    ``folder``), "caption"} or {"title", "table" (a CSV in ``folder``), "caption"}. An entry whose title is already
    there replaces it in place; new ones are appended. Every writer of diagnostics (this pass, activation maps) uses
    it, so none drops another's entries."""
    path = Path(folder) / INDEX
    index = json.loads(path.read_text()) if path.exists() else []
    position = {e["title"]: i for i, e in enumerate(index)}
    for entry in entries:
        if not {"title", "caption"} <= set(entry) or len({"image", "table"} & set(entry)) != 1:
            raise ValueError(f"an index entry needs title, caption and one of image or table: {entry}")
        if entry["title"] in position:
            index[position[entry["title"]]] = entry
        else:
            position[entry["title"]] = len(index)
            index.append(entry)
    return write_atomic(path, json.dumps(index, indent=1))


def drop_from_index(folder: Path, images: set[str]) -> None:
    """Take the entries showing ``images`` out of ``folder/index.json`` (figures an earlier pass drew that this one
    does not: a gallery of a class with no error now)."""
    path = Path(folder) / INDEX
    if path.exists():
        index = json.loads(path.read_text())
        write_atomic(path, json.dumps([e for e in index if e.get("image") not in images], indent=1))
