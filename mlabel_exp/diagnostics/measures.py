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
from mlabel_exp.inference.outputs import read_predictions as read

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
class Bins:
    """Reliability bins, non-empty, in probability order: each bin's span (``lower`` .. ``upper``: the equal-width
    edges it covers), its number of labels, their mean probability, the share of them present and that share's Wilson
    interval (``low`` .. ``high``)."""
    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    positive: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass
class Calibration:
    """ECE and Brier score per class and pooled (every known label of every class), and the reliability bins (pooled,
    and per class) with at least ``min_count`` labels each."""
    ece: np.ndarray            # C; NaN where a class has no known label
    brier: np.ndarray          # C
    ece_pooled: float
    brier_pooled: float
    bins: int
    min_count: int
    pooled_bins: Bins
    class_bins: list[Bins]


def wilson_interval(positives: np.ndarray, count: np.ndarray, confidence: float = 0.95):
    """(low, high) of the Wilson score interval of the share positives / count (closed form, vectorised: what
    scipy.stats.binomtest(...).proportion_ci(method='wilson') gives): honest for small counts and shares near 0 or 1,
    where the normal interval is not."""
    from scipy.stats import norm

    z2 = norm.ppf(0.5 + confidence / 2) ** 2
    n = np.asarray(count, dtype=float)
    share = np.asarray(positives, dtype=float) / n
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = np.sqrt(z2) / (1 + z2 / n) * np.sqrt(share * (1 - share) / n + z2 / (4 * n * n))
    return np.where(share == 0, 0.0, centre - half), np.where(share == 1, 1.0, centre + half)  # exact ends there


def _merge(count: np.ndarray, min_count: int) -> np.ndarray:
    """Group number of each bin: adjacent bins joined, left to right, until a group holds ``min_count`` labels; a
    short remainder at the top joins the group below it."""
    group, held, k = np.zeros(len(count), dtype=int), 0, 0
    for b, n in enumerate(count):
        group[b], held = k, held + n
        if held >= min_count:
            k, held = k + 1, 0
    if 0 < held and k > 0:  # the top group fell short: into the one below
        group[group == k] = k - 1
    return group


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int, min_count: int = 1) -> Bins:
    """Equal-width bins [k/bins, (k+1)/bins), a probability of exactly 1 in a last bin of its own (torchmetrics'
    binning: with ``min_count=1`` the diagram draws what its ECE sums), adjacent ones merged until each holds at least
    ``min_count`` labels (a diagram of bins holding 1 or 2 labels swings between 0 and 1 and says nothing)."""
    edges = np.append(np.linspace(0, 1, bins + 1), 1.0)  # bin k spans edges[k] .. edges[k + 1]; 1.0 alone
    index = np.searchsorted(edges[:-1], probs, side="right") - 1
    count = np.bincount(index, minlength=bins + 1)
    grouped = _merge(count, min_count)
    group, groups = grouped[index], grouped.max() + 1
    n = np.bincount(group, minlength=groups)
    used = np.flatnonzero(n)
    filled = [np.flatnonzero((grouped == g) & (count > 0)) for g in used]  # the bins holding its labels
    positives, n = np.bincount(group, weights=labels.astype(float), minlength=groups)[used], n[used]
    low, high = wilson_interval(positives, n)
    return Bins(np.array([edges[b[0]] for b in filled]), np.array([edges[b[-1] + 1] for b in filled]), n,
                np.bincount(group, weights=probs, minlength=groups)[used] / n, positives / n, low, high)


def calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Expected calibration error (L1) of P(label) over binned probabilities: torchmetrics' binary_calibration_error."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    if len(probs) == 0:
        return float("nan")
    return float(binary_calibration_error(torch.as_tensor(probs, dtype=torch.float64),
                                          torch.as_tensor(labels, dtype=torch.int64), n_bins=bins, norm="l1"))


def calibration(probs: np.ndarray, targets: np.ndarray, bins: int = 15, min_count: int = 1) -> Calibration:
    """ECE (``bins`` equal-width bins) and Brier score of each class over its known labels, and pooled over every
    known label; the reliability bins merged to ``min_count`` labels at least."""
    known = targets >= 0
    ece, brier, class_bins = [], [], []
    for c in range(probs.shape[1]):
        p, y = probs[known[:, c], c], targets[known[:, c], c]
        ece.append(calibration_error(p, y, bins))
        brier.append(float(np.mean((p - y) ** 2)) if len(p) else float("nan"))
        class_bins.append(reliability_bins(p, y, bins, min_count))
    p, y = probs[known], targets[known]
    return Calibration(np.array(ece), np.array(brier), calibration_error(p, y, bins),
                       float(np.mean((p - y) ** 2)) if len(p) else float("nan"), bins, min_count,
                       reliability_bins(p, y, bins, min_count), class_bins)


def panel_classes(targets: np.ndarray, min_positives: int, min_count: int) -> list[int]:
    """The classes whose own reliability diagram can say something: at least ``min_positives`` positives and as many
    negatives among their known labels (a curve needs both ends), and labels for two bins of ``min_count`` at least (one
    bin is a dot, not a curve). The others are in the pooled diagram only."""
    positives, negatives = (targets == 1).sum(0), (targets == 0).sum(0)
    return [c for c in range(targets.shape[1]) if min(positives[c], negatives[c]) >= min_positives
            and positives[c] + negatives[c] >= 2 * min_count]


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


def top_confusions(share: np.ndarray, n: np.ndarray, k: int = 3) -> list[tuple[int, int]]:
    """The ``k`` cells (i, j) of ``false_positive_given_present`` surest to be high, highest first: ranked by the lower
    end of the share's 95% Wilson interval, so that 4 images at 100% do not outrank 100 at 80%; a cell without a
    false positive is none."""
    share = np.nan_to_num(np.asarray(share, dtype=float), nan=0.0)
    hits = np.rint(share * n)
    low = np.where(hits > 0, wilson_interval(hits, np.maximum(n, 1))[0], -1.0)
    order = np.argsort(-low, axis=None, kind="stable")[:k]
    return [divmod(int(c), share.shape[1]) for c in order if low.flat[c] > 0]


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


def most_errors_first(errors) -> list[int]:
    """Class indices ordered by ``errors`` (per class), the most first, ties by class order: the order galleries and
    activation-map pages are chosen in."""
    errors = np.asarray(errors)
    return [int(c) for c in np.lexsort((np.arange(len(errors)), -errors))]


def gallery_classes(targets: np.ndarray, predicted: np.ndarray, n: int) -> list[int]:
    """The classes whose galleries are drawn: every class with an error (``n`` = 0) or the ``n`` with the most, most
    first (ties by class order)."""
    errors = errors_per_class(targets, predicted)
    order = [c for c in most_errors_first(errors) if errors[c] > 0]
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
