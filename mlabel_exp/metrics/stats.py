"""Is one group of runs really better than another, or is it seed noise? Used by ``compare``.

Two sources of noise are measured: the training seed (``seed_interval``: a t-interval over runs; ``seed_difference``:
the t-test and interval of a difference of group means over seeds, the verdict's test) and the evaluation images
(``paired_bootstrap``: the same image resample scores every run of both groups, so what the groups share about the
images cancels out; compare uses it only to tell two single runs apart). mAP is ``metrics``' definition: the macro average, over classes with at least one positive,
of step-wise average precision, tied scores sharing one threshold (scikit-learn's ``average_precision_score``).
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import sparse
from scipy import stats as scipy_stats

#: Resamples per comparison: the 2.5% and 97.5% percentiles rest on ~50 resamples each, enough for a verdict at
#: 0.05, and N=4000 images x 14 classes x 10 runs still takes a few seconds.
DEFAULT_RESAMPLES = 2000
#: Resamples scored per call of the statistic: bounds memory (segments x batch float64 per run) on 4000 images.
RESAMPLE_BATCH = 250


# ------------------------------------------------------------------ across seeds

@dataclass(frozen=True)
class SeedSummary:
    """One metric over the seeds of a group; ``std`` and the interval are None when one seed cannot give them;
    ``clipped``: the t-interval reached past the metric's range and was cut at its end."""
    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    clipped: bool = False


#: The range of the metrics compare summarises over seeds (mAP, F1): intervals are cut at its ends.
METRIC_RANGE = (0.0, 1.0)


def seed_interval(values: Sequence[float], confidence: float = 0.95,
                  bounds: tuple[float, float] | None = METRIC_RANGE, test_train_ratio: float = 0.0) -> SeedSummary:
    """Mean and Student-t interval of a metric over seed runs: how far the mean could move with other seeds. The
    interval is cut at ``bounds`` (the metric's range; None: not cut): the true mean lies inside them, so the cut
    interval covers it whenever the t-interval does (the same coverage), and says no impossible value.
    ``test_train_ratio`` > 0: the values are folds of one data set (n_test / n_train images a fold), whose training
    sets overlap: the variance of their mean is inflated as in ``fold_difference`` (Nadeau & Bengio)."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"seed_interval needs a non-empty list of numbers, got shape {x.shape}")
    n, mean = len(x), float(x.mean())
    if n < 2:  # no interval can be given from one seed
        return SeedSummary(n=n, mean=mean, std=None, ci_low=None, ci_high=None)
    std = float(x.std(ddof=1))
    half_width = float(scipy_stats.t.ppf((1 + confidence) / 2, df=n - 1)) * std * math.sqrt(1 / n + test_train_ratio)
    low, high = mean - half_width, mean + half_width
    if bounds is None:
        return SeedSummary(n=n, mean=mean, std=std, ci_low=low, ci_high=high)
    clipped = low < bounds[0] or high > bounds[1]
    return SeedSummary(n=n, mean=mean, std=std, ci_low=max(low, bounds[0]), ci_high=min(high, bounds[1]),
                       clipped=clipped)


def seed_test_limit(a: Sequence[float], b: Sequence[float], names: tuple[str, str] = ("A", "B")) -> str | None:
    """Why a t-test over seeds cannot support a verdict on ``a`` against ``b`` (one value a seed), or None. It needs
    two seeds or more on each side, and seeds that differ on each: a group whose seeds score exactly alike (a
    deterministic setting, or one run logged twice) shows no seed noise, and a t-test would then take its mean as
    exact (p = 0 with a zero-width interval)."""
    for values, name in zip((a, b), names):
        if len(values) < 2:
            return f"{name} has {len(values)} seed: no seed spread to test against"
        if np.ptp(np.asarray(values, dtype=float)) == 0:
            return f"{name}'s {len(values)} seeds score exactly alike: no seed spread to test against"
    return None


@dataclass(frozen=True)
class Difference:
    """Group A's mean minus group B's, with its interval and two-sided p-value from one test (``method``). Arrays
    where ``seed_difference`` was given a batch of comparisons."""
    difference: float | np.ndarray
    ci_low: float | np.ndarray
    ci_high: float | np.ndarray
    p_value: float | np.ndarray
    df: float | np.ndarray
    method: str

    @property
    def excludes_zero(self) -> bool | np.ndarray:
        """The verdict: the interval, not the p-value, decides it, so the two never disagree at the boundary."""
        return (np.asarray(self.ci_low) > 0) | (np.asarray(self.ci_high) < 0)


def seed_difference(a, b, confidence: float = 0.95) -> Difference:
    """Difference of mean (A - B) over seed runs, one value a seed: Welch's t-test and its interval when both groups
    have 2 seeds or more; Student's pooled t when one has a single seed (the other's spread stands for both).

    Its false-positive rate stays at or under the nominal level with 2, 3 or 5 seeds a group (tests/test_groups.py
    simulates it), where a bootstrap over 2-3 seed runs cannot see how far seeds spread. ``a`` and ``b`` may be
    (..., n) arrays: a batch of comparisons at once (the simulation's)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = a.shape[-1], b.shape[-1]
    if na + nb < 3:
        raise ValueError(f"a t-test needs 3 seed runs or more in all (one group with 2), got {na} and {nb}")
    d = a.mean(-1) - b.mean(-1)
    va = a.var(-1, ddof=1) / na if na > 1 else None
    vb = b.var(-1, ddof=1) / nb if nb > 1 else None
    if va is not None and vb is not None:
        method, var = "Welch's t-test", va + vb
        with np.errstate(invalid="ignore", divide="ignore"):
            df = var**2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
        df = np.where(np.isfinite(df), df, na + nb - 2.0)  # both spreads 0: any df; the interval is the point
    else:
        method = "Student's t-test (pooled: one group has one seed)"
        ss = sum(x.var(-1, ddof=0) * x.shape[-1] for x in (a, b))
        df = np.asarray(na + nb - 2.0)
        var = ss / df * (1 / na + 1 / nb)
    return _t_difference(d, np.sqrt(var), df, confidence, method)


def _t_difference(d, se, df, confidence: float, method: str) -> Difference:
    """The Difference of mean difference ``d`` with standard error ``se`` on ``df`` degrees of freedom: its t interval
    and two-sided p (a zero ``se``: p 1 where d is 0, else 0). Scalars in, floats out; arrays stay arrays."""
    half = scipy_stats.t.ppf((1 + confidence) / 2, df) * se
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(se > 0, np.abs(d) / np.where(se > 0, se, 1), np.where(d == 0, 0.0, np.inf))
    p = 2 * scipy_stats.t.sf(t, df)
    scalar = np.ndim(d) == 0
    out = [float(x) if scalar else x for x in (d, d - half, d + half, p, df)]
    return Difference(*out, method=method)


# ------------------------------------------------------------------ across folds

def fold_test_limit(a: Sequence[float], b: Sequence[float]) -> str | None:
    """Why the corrected resampled t-test cannot support a verdict on ``a`` against ``b`` (one value a fold, paired
    by fold), or None: it needs two folds or more, and differences that are not all equal (no spread to test)."""
    if len(a) < 2:
        return f"{len(a)} fold both groups were run on: no spread over folds to test against"
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.ptp(d) == 0:
        return f"the differences on the {len(a)} folds are exactly alike: no spread over folds to test against"
    return None


def fold_difference(a, b, test_train_ratio: float, confidence: float = 0.95) -> Difference:
    """Mean of the paired differences A - B over J folds (one value a fold: its seeds averaged first), with the
    corrected resampled t-test of Nadeau & Bengio (2003): the variance of the mean difference is the differences'
    variance times (1/J + n_test/n_train), not 1/J, because the J models were trained on overlapping images (each
    pair of K-fold training sets shares (K-2)/(K-1) of them), so their differences are correlated; df = J - 1.

    Its false-positive rate stays at or under the nominal level with 5 and 10 folds, and with 5 folds x 2 seeds once
    each fold's seeds are averaged (tests/test_stats.py trains nearest-centroid models on folds of simulated data
    sets to show it); the plain paired t-test over the same folds calls 10%, over folds x seeds 28%. ``a`` and ``b``
    may be (..., J) arrays: a batch of comparisons (the simulation's)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    j = d.shape[-1]
    if j < 2:
        raise ValueError(f"the corrected resampled t-test needs 2 folds or more, got {j}")
    mean = d.mean(-1)
    se = np.sqrt((1 / j + test_train_ratio) * d.var(-1, ddof=1))
    return _t_difference(mean, se, np.full(np.shape(mean), j - 1.0), confidence,
                         "corrected resampled t-test (Nadeau & Bengio)")


# ------------------------------------------------------------------ mAP of resamples

class _RankedRuns:
    """Runs' scores sorted once, so the mAP of any image weighting is one sparse product and a few cumulative sums.

    A resample is a count per image. Per class, the images are cut after each distinct score that a positive holds
    (sklearn's thresholds; thresholds without a positive add no recall and merge into the next cut). Per cut, one
    sparse row sums the weight of every image in it, another the weight of its positives; cumulative sums of those
    give TP and TP+FP at each cut, and AP = sum over cuts of new TP x precision / all TP.
    """

    def __init__(self, runs: Sequence[np.ndarray], targets: np.ndarray):
        known = np.asarray(targets) >= 0  # an unknown label (-1) is left out of its class, as ``metrics`` does
        targets = np.asarray(targets) > 0
        n_images = targets.shape[0]
        self.classes = np.flatnonzero(targets.any(0))  # a class without positives has none in any resample either
        self.n_runs = len(runs)
        rows_all, rows_tp, cols_all, cols_tp, block_lengths = [], [], [], [], []
        n_rows = 0
        for scores in runs:
            scores = np.asarray(scores, dtype=np.float64)
            for c in self.classes:
                rows = np.flatnonzero(known[:, c])
                order = rows[np.argsort(-scores[rows, c], kind="stable")]
                s, y = scores[order, c], targets[order, c]
                threshold_id = np.concatenate(([0], np.cumsum(s[1:] != s[:-1])))
                cut_thresholds = np.unique(threshold_id[y])
                keep = threshold_id <= cut_thresholds[-1]  # images below the last positive never change AP
                cut = np.searchsorted(cut_thresholds, threshold_id[keep])  # the first cut at or below the image
                rows_all.append(n_rows + cut)
                cols_all.append(order[keep])
                rows_tp.append(n_rows + cut[y[keep]])
                cols_tp.append(order[keep][y[keep]])
                block_lengths.append(len(cut_thresholds))
                n_rows += len(cut_thresholds)

        def indicator(rows, cols):
            rows, cols = np.concatenate(rows or [[]]).astype(int), np.concatenate(cols or [[]]).astype(int)
            return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_rows, n_images))

        self.sums = sparse.vstack([indicator(rows_all, cols_all), indicator(rows_tp, cols_tp)], format="csr")
        self.sums32 = self.sums.astype(np.float32)
        self.n_rows = n_rows
        lengths = np.asarray(block_lengths, dtype=np.int64)
        self.block_starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else lengths
        self.block_ends = self.block_starts + lengths - 1

    def _cumsum_within_blocks(self, x: np.ndarray) -> np.ndarray:
        """Cumulative sum restarting at each (run, class) block: each block's first row first takes off the total
        of the block before. Exact, as every value is a whole count."""
        block_totals = np.add.reduceat(x, self.block_starts, axis=0)
        x[self.block_starts[1:]] -= block_totals[:-1]
        return np.cumsum(x, axis=0, out=x)

    def class_ap(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(AP, defined) of every run and class under every weighting: ``counts`` (B x N) -> two (runs x classes x B)
        arrays over ``self.classes``; a class whose positives all weigh 0 is not defined (AP 0 there)."""
        counts = np.atleast_2d(counts)
        shape = (self.n_runs, len(self.classes), counts.shape[0])
        if len(self.classes) == 0:
            return np.zeros(shape), np.zeros(shape, dtype=bool)
        # sums of whole counts are exact in float32 below 2**24, at half the memory traffic of float64
        dtype = np.float32 if counts.sum(1).max() < 2**24 else np.float64
        sums = self.sums32 if dtype == np.float32 else self.sums
        segment = sums @ np.ascontiguousarray(counts.T, dtype=dtype)  # (2 x rows) x B
        weight_tp = segment[self.n_rows:]
        predicted = self._cumsum_within_blocks(segment[:self.n_rows])
        tp = self._cumsum_within_blocks(weight_tp.copy())
        precision = np.divide(tp, predicted, out=np.zeros(tp.shape), where=predicted > 0,  # none predicted: no TP
                              dtype=np.float64)
        precision *= weight_tp
        ap_sum = np.add.reduceat(precision, self.block_starts, axis=0)  # (runs * classes) x B
        positives = tp[self.block_ends]
        defined = positives > 0
        ap = np.where(defined, ap_sum / np.where(defined, positives, 1.0), 0.0)
        return ap.reshape(shape), defined.reshape(shape)

    def map(self, counts: np.ndarray) -> np.ndarray:
        """mAP of every run under every weighting: ``counts`` (B x N) -> (runs x B). A class whose positives all
        weigh 0 is left out of that weighting's mean, as ``metrics`` leaves out a class without positives."""
        ap, defined = self.class_ap(counts)
        return ap.sum(1) / np.maximum(defined.sum(1), 1)  # 0 when no class is defined, as ``metrics.compute``


def weighted_map(scores: np.ndarray, targets: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """mAP of one run with each image counted ``counts[b, i]`` times (B x N; default once): a bootstrap resample
    without copying images. Returns B values (one when ``counts`` is None)."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    _check_shapes(targets, [scores], [])
    counts = np.ones((1, len(targets))) if counts is None else np.atleast_2d(counts)
    if counts.shape[1] != len(targets):
        raise ValueError(f"counts have {counts.shape[1]} images per row, targets {len(targets)}")
    if np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise ValueError("counts must be whole numbers >= 0 (times each image is drawn)")
    return _RankedRuns([scores], targets).map(counts)[0]


# ------------------------------------------------------------------ per-class AP of one run

@dataclass(frozen=True)
class ClassIntervals:
    """Each class's AP on the evaluation images and its percentile bootstrap interval over those images (NaN where a
    class has no positive); ``confidence`` and ``n_resamples`` say how it was drawn."""
    ap: np.ndarray
    low: np.ndarray
    high: np.ndarray
    confidence: float
    n_resamples: int


def resample_counts(rng: np.random.Generator, n_images: int, n_resamples: int) -> np.ndarray:
    """(n_resamples x n_images) times each image is drawn: ``rng.integers(0, n, (B, n))`` rows as counts."""
    drawn = rng.integers(0, n_images, (n_resamples, n_images))
    offsets = (np.arange(n_resamples) * n_images)[:, None]
    return np.bincount((drawn + offsets).ravel(), minlength=n_resamples * n_images).reshape(n_resamples, n_images)


def per_class_ap_intervals(scores: np.ndarray, targets: np.ndarray, *, n_resamples: int = 1000,
                           confidence: float = 0.95, seed: int = 0, batch: int = RESAMPLE_BATCH) -> ClassIntervals:
    """Per-class AP with a percentile bootstrap interval over the evaluation images: which class differences are more
    than the luck of which images were drawn. Resamples are drawn in batches of ``batch`` from one
    ``np.random.default_rng(seed)`` (``resample_counts``); a resample in which a class has no positive is left out of
    that class's percentiles. Unknown labels (-1) take no part."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    _check_shapes(targets, [scores], [])
    n_images, n_classes = targets.shape
    ranked = _RankedRuns([scores], targets)
    draws = np.full((n_classes, n_resamples), np.nan)
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, batch):
        b = min(batch, n_resamples - start)
        ap, defined = ranked.class_ap(resample_counts(rng, n_images, b))
        draws[ranked.classes, start:start + b] = np.where(defined[0], ap[0], np.nan)
    full = np.full(n_classes, np.nan)
    if len(ranked.classes):
        ap, _ = ranked.class_ap(np.ones((1, n_images)))
        full[ranked.classes] = ap[0, :, 0]
    tail = 100 * (1 - confidence) / 2
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():  # a class without positives: all-NaN, its interval NaN as its AP
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=1)
    return ClassIntervals(ap=full, low=low, high=high, confidence=confidence, n_resamples=n_resamples)


def map_interval(scores: np.ndarray, targets: np.ndarray, *, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0, batch: int = RESAMPLE_BATCH) -> tuple[float, float, float]:
    """(mAP, low, high): one run's mAP with a percentile bootstrap interval over its images, drawn as
    ``per_class_ap_intervals`` draws them (the same seed, the same resamples)."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    _check_shapes(targets, [scores], [])
    ranked, n_images = _RankedRuns([scores], targets), len(targets)
    rng = np.random.default_rng(seed)
    draws = np.concatenate([ranked.map(resample_counts(rng, n_images, min(batch, n_resamples - start)))[0]
                            for start in range(0, n_resamples, batch)])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(ranked.map(np.ones((1, n_images)))[0, 0]), float(low), float(high)


# ------------------------------------------------------------------ paired bootstrap

@dataclass(frozen=True)
class PairedDifference:
    """mean mAP of group A minus group B on the same images, with its bootstrap interval and two-sided p-value."""
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n_images: int
    n_resamples: int


def _check_shapes(targets: np.ndarray, group_a: Sequence[np.ndarray], group_b: Sequence[np.ndarray]) -> None:
    if targets.ndim != 2:
        raise ValueError(f"targets must be N x C, got shape {targets.shape}")
    shapes = [np.shape(p) for p in (*group_a, *group_b)]
    if any(s != targets.shape for s in shapes):
        raise ValueError(f"every run must score the same images and classes as targets {targets.shape}, got run "
                         f"shapes {shapes}: runs evaluated on different images cannot be paired")


def _bootstrap_rng_keyword() -> str:
    """scipy >= 1.15 seeds with ``rng``; older releases (>= 1.11) with ``random_state``."""
    return "rng" if "rng" in inspect.signature(scipy_stats.bootstrap).parameters else "random_state"


def paired_bootstrap(targets: np.ndarray, group_a: Sequence[np.ndarray], group_b: Sequence[np.ndarray], *,
                     n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0,
                     batch: int = RESAMPLE_BATCH, draw_runs: bool = True) -> PairedDifference:
    """Difference of mean mAP (A - B) over runs scored on the same N images, with a percentile bootstrap.

    Each resample draws one set of image indices and scores every run of both groups on it (paired), so the interval
    shows how much the difference depends on which images happened to be in the evaluation set. A group of several
    seed runs also has its runs drawn with replacement in each resample (a two-level bootstrap), so the interval
    holds the seed noise too, but only roughly with 2-3 runs: a bootstrap of so few cannot see how far seeds spread,
    and calls a difference significant too often (``seed_difference`` is the test for that). ``draw_runs=False``
    scores each group's runs as they are (their mean), the images alone resampled: how sure the difference between
    these trained models is, not between their settings.
    """
    targets = np.asarray(targets)
    group_a, group_b = [np.asarray(p) for p in group_a], [np.asarray(p) for p in group_b]
    if not group_a or not group_b:
        raise ValueError(f"each group needs at least one run, got {len(group_a)} and {len(group_b)}")
    _check_shapes(targets, group_a, group_b)
    n_images, n_a, n_b = targets.shape[0], len(group_a), len(group_b)
    ranked = _RankedRuns(group_a + group_b, targets)
    # samples scipy resamples independently: the images (shared by every run: the pairing), and the runs of each
    # group with more than one (scipy needs two or more observations per sample)
    drawn_groups = [n > 1 and draw_runs for n in (n_a, n_b)]
    samples = [np.arange(n_images)] + [np.arange(n) for n, drawn in zip((n_a, n_b), drawn_groups) if drawn]

    def statistic(*drawn: np.ndarray, axis: int = -1) -> np.ndarray:  # scipy passes resamples x n per sample
        drawn = [np.atleast_2d(d) for d in drawn]
        per_run = ranked.map(_counts(drawn[0], n_images))  # runs x B
        rest = iter(drawn[1:])
        weights = [_counts(next(rest), n) / n if was_drawn else np.full((len(drawn[0]), n), 1 / n)
                   for n, was_drawn in zip((n_a, n_b), drawn_groups)]
        return (weights[0].T * per_run[:n_a]).sum(0) - (weights[1].T * per_run[n_a:]).sum(0)

    observed = float(statistic(*[s[None, :] for s in samples])[0])
    result = scipy_stats.bootstrap(
        samples, statistic, n_resamples=n_resamples, batch=batch, vectorized=True, paired=False,
        method="percentile", confidence_level=confidence, **{_bootstrap_rng_keyword(): seed})
    d = result.bootstrap_distribution
    # two-sided p: twice the bootstrap mass on the far side of 0 (+1 smoothing), so p < alpha iff the
    # (1 - alpha) percentile interval excludes 0; identical groups give every d = 0 and p = 1
    p_value = min(1.0, 2 * min((np.sum(d <= 0) + 1) / (len(d) + 1), (np.sum(d >= 0) + 1) / (len(d) + 1)))
    return PairedDifference(difference=observed, ci_low=float(result.confidence_interval.low),
                            ci_high=float(result.confidence_interval.high), p_value=float(p_value),
                            n_images=n_images, n_resamples=n_resamples)


# ------------------------------------------------------------------ per class

def resample_indices(n_images: int, n_resamples: int, seed: int = 0, batch: int = RESAMPLE_BATCH):
    """The image indices of each bootstrap resample, ``batch`` resamples (rows) at a time, drawn from one seeded
    generator: the same seed gives the same resamples, so a brute-force check can score exactly these."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, batch):
        yield rng.integers(0, n_images, size=(min(batch, n_resamples - start), n_images))


@dataclass(frozen=True)
class ClassDifferences:
    """Per group and class (G x C): seed-mean AP minus the reference group's, with a percentile bootstrap interval.
    NaN where the class has no known positive; ``low``/``high`` also NaN in a class too rare to resample.
    ``reference_ap`` (C): the reference group's seed-mean AP itself, on the same images."""
    difference: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_images: int
    n_resamples: int
    reference_ap: np.ndarray | None = None


def class_ap_differences(targets: np.ndarray, groups: Sequence[Sequence[np.ndarray]], reference: int = 0, *,
                         n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0,
                         batch: int = RESAMPLE_BATCH) -> ClassDifferences:
    """Per class, each group's AP (the mean over its seed runs) minus group ``reference``'s, on the same N images,
    with a paired percentile bootstrap over the images (``resample_indices``): one resample scores every run of
    every group, so what the groups share about the images cancels. Only images are drawn; the seed noise of a
    group shows in its across-seed interval. A resample without a positive of a class leaves that class out of it
    (its AP is undefined), as ``metrics`` leaves out a class without positives; the interval is over the others."""
    targets = np.asarray(targets)
    groups = [[np.asarray(p) for p in g] for g in groups]
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("class_ap_differences needs at least one group and one run in each group")
    _check_shapes(targets, [p for g in groups for p in g], [])
    n_images, n_classes = targets.shape
    ranked = _RankedRuns([p for g in groups for p in g], targets)
    # runs -> groups: the seed mean as one (G x runs) product
    sizes = [len(g) for g in groups]
    mean_of = np.zeros((len(groups), sum(sizes)))
    for i, start in enumerate(np.cumsum([0, *sizes[:-1]])):
        mean_of[i, start:start + sizes[i]] = 1 / sizes[i]

    def differences(counts: np.ndarray) -> np.ndarray:  # B x N -> G x classes-with-positives x B (NaN: undefined)
        ap, defined = ranked.class_ap(counts)
        group_ap = np.einsum("gr,rcb->gcb", mean_of, ap)
        return np.where(defined[0], group_ap - group_ap[reference], np.nan)  # defined alike in every run

    observed = differences(np.ones((1, n_images)))[..., 0]
    ap, defined = ranked.class_ap(np.ones((1, n_images)))
    reference_ap = np.full(n_classes, np.nan)
    reference_ap[ranked.classes] = np.einsum("r,rc->c", mean_of[reference], ap[..., 0])
    resampled = np.concatenate([differences(_counts(idx, n_images))
                                for idx in resample_indices(n_images, n_resamples, seed, batch)], axis=2)
    alpha = (1 - confidence) / 2
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice: a class no resample can score
        low, high = np.nanquantile(resampled, [alpha, 1 - alpha], axis=2)
    full = np.full((len(groups), n_classes), np.nan)
    out = [full.copy() for _ in range(3)]
    for array, values in zip(out, (observed, low, high)):
        array[:, ranked.classes] = values
    return ClassDifferences(*out, n_images=n_images, n_resamples=n_resamples, reference_ap=reference_ap)


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """Times each of ``n`` items is drawn in each resample (row) of ``indices``."""
    offsets = (np.arange(len(indices)) * n)[:, None]
    return np.bincount((indices + offsets).ravel(), minlength=len(indices) * n).reshape(len(indices), n)


# ------------------------------------------------------------------ verdicts

def verdict(best: bool, p_value: float | None, alpha: float = 0.05, interval: tuple[float, float] | None = None,
            runs_only: str | bool = "", cannot_tell: str = "", over: str = "") -> str:
    """The word for a group next to the best one (ranked on the data the test used): worse only when the test says
    so at ``alpha``; with the test's (1 - alpha) ``interval`` of best - this, the interval decides (they agree but
    for rounding at the boundary, where the interval shown must not contradict the word). ``runs_only``: the runs
    were compared over the images, not the settings over seeds (why: "1 seed", ...): the runs are worse, the setting
    is not tested. No test (``p_value`` None): "cannot tell (``cannot_tell``)". ``over``: what the test ran over
    where it is not seeds ("5 folds"), said in the word."""
    if best:
        return "best"
    if p_value is None:
        return f"cannot tell ({cannot_tell or 'no test'})"
    worse = (interval[0] > 0 or interval[1] < 0) if interval is not None else p_value < alpha
    if worse and runs_only:
        return f"worse run (p<{alpha:g}, {'1 seed' if runs_only is True else runs_only})"
    where = f" over {over}" if over else ""
    if worse:
        return f"worse{where} (p<{alpha:g})"
    return f"not distinguishable from best{where}"
