"""mlabel_exp.metrics.stats against independent references: scikit-learn AP on replicated rows, metrics.compute, a brute-force
resampling loop, the textbook t quantile, scipy's t-tests, and a null simulation of the verdict's error rate."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score

from mlabel_exp.metrics.scores import compute
from mlabel_exp.metrics.stats import (paired_bootstrap, seed_difference, seed_interval, seed_test_limit, verdict,
                                      weighted_map)


def sklearn_map(scores, targets):
    """metrics' mAP, from scikit-learn: macro AP over the classes with at least one positive (0 when none has)."""
    aps = [average_precision_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1]) if targets[:, c].any()]
    return float(np.mean(aps)) if aps else 0.0


def make_case(seed, n=300, c=6, decimals=None, empty_class=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.05, 0.4, c)).astype(int)
    p = np.clip(y * 0.3 + rng.random((n, c)) * 0.7, 0, 1)
    if decimals is not None:
        p = np.round(p, decimals)  # many tied scores
    if empty_class is not None:
        y[:, empty_class] = 0
    return p, y


# ------------------------------------------------------------------ mAP

def test_weighted_map_equals_sklearn_on_replicated_rows():
    p, y = make_case(0, decimals=1, empty_class=2)
    y[:, 4] = 0
    y[[5, 17], 4] = 1  # a rare class: the first weighting drops both of its positives
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 4, size=(6, len(y)))  # zeros: images a resample leaves out
    counts[0, [5, 17]] = 0
    ours = weighted_map(p, y, counts)
    for b in range(len(counts)):
        rows = np.repeat(np.arange(len(y)), counts[b])
        assert ours[b] == pytest.approx(sklearn_map(p[rows], y[rows]), rel=1e-12)


@pytest.mark.filterwarnings("ignore:No positive samples")  # the empty class, on purpose
def test_unweighted_map_equals_metrics_compute():
    p, y = make_case(2, decimals=2, empty_class=0)
    p32 = p.astype(np.float32)
    expected = compute(torch.from_numpy(p32), torch.from_numpy(y), quiet=True)["mAP"]
    # torchmetrics sums float32 precisions (each within 2**-24 relative) over <= 300 cuts by pairwise summation:
    # a few float32 ulps of a value <= 1, far below 1e-6
    assert weighted_map(p32.astype(np.float64), y)[0] == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ paired bootstrap

def test_bootstrap_interval_matches_brute_force_resampling():
    p, y = make_case(3, n=200, c=3, decimals=2)
    y[:, 2] = 0
    y[[1, 50, 120], 2] = 1  # ~5% of resamples have no positive of this class: it drops out of their mean
    rng = np.random.default_rng(4)
    noise = lambda sd: np.clip(p + rng.normal(0, sd, p.shape), 0, 1)  # noqa: E731
    group_a, group_b = [noise(0.05), noise(0.05)], [noise(0.2), noise(0.2)]
    confidence, n_ours, n_ref = 0.9, 2000, 300

    def difference(rows, runs_a=(0, 1), runs_b=(0, 1)):
        return (np.mean([sklearn_map(group_a[r][rows], y[rows]) for r in runs_a])
                - np.mean([sklearn_map(group_b[r][rows], y[rows]) for r in runs_b]))

    # the reference draws the images, and each group's seed runs, with replacement: the two-level bootstrap by hand
    ref = np.array([difference(rng.integers(0, len(y), len(y)), rng.integers(0, 2, 2), rng.integers(0, 2, 2))
                    for _ in range(n_ref)])
    result = paired_bootstrap(y, group_a, group_b, n_resamples=n_ours, confidence=confidence, seed=5)

    assert result.difference == pytest.approx(difference(np.arange(len(y))), rel=1e-12)
    assert (result.n_images, result.n_resamples) == (200, n_ours)
    # standard error of a q-percentile of B resamples: sqrt(q(1-q)/B) / density at it (normal with the reference
    # sd); the two estimates are independent. 4 standard errors.
    q = (1 - confidence) / 2
    se = math.sqrt(q * (1 - q)) / norm.pdf(norm.ppf(q)) * ref.std(ddof=1) * math.sqrt(1 / n_ours + 1 / n_ref)
    assert result.ci_low == pytest.approx(np.quantile(ref, q), abs=4 * se)
    assert result.ci_high == pytest.approx(np.quantile(ref, 1 - q), abs=4 * se)


def test_identical_models_are_not_distinguishable():
    p, y = make_case(6, n=150, c=4)
    result = paired_bootstrap(y, [p], [p.copy()], n_resamples=200)
    assert (result.difference, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert verdict(False, result.p_value) == "not distinguishable from best"
    # two groups of the same two seed runs: the runs drawn differ per group, so the interval is wide, around 0
    runs = [p, np.clip(p + rng_noise(p, 9), 0, 1)]
    result = paired_bootstrap(y, runs, [r.copy() for r in runs], n_resamples=500)
    assert result.difference == pytest.approx(0.0, abs=1e-12)
    assert result.ci_low < 0 < result.ci_high and result.p_value > 0.5


def rng_noise(p, seed):
    return np.random.default_rng(seed).normal(0, 0.2, p.shape)


def test_a_difference_made_by_one_lucky_seed_is_not_significant():
    """Group A: one strong seed run and two like group B's. Scored on images alone, A's mean is better on almost every
    image resample; drawing A's seed runs too, a third of the resamples hold no strong run."""
    rng = np.random.default_rng(11)
    y = (rng.random((400, 5)) < 0.3).astype(int)
    mid = lambda: y + rng.normal(0, 1.2, y.shape)  # noqa: E731
    a, b = [y + rng.normal(0, 0.3, y.shape), mid(), mid()], [mid(), mid(), mid()]
    result = paired_bootstrap(y, a, b, n_resamples=1000)
    assert result.difference > 0.05
    assert result.ci_low < 0.01 and result.p_value > 0.05


def test_clearly_better_model_is_detected():
    rng = np.random.default_rng(7)
    y = (rng.random((400, 5)) < 0.3).astype(int)
    strong = [y + rng.normal(0, 0.5, y.shape) for _ in range(2)]
    weak = [y + rng.normal(0, 1.5, y.shape) for _ in range(2)]
    result = paired_bootstrap(y, weak, strong, n_resamples=500)
    assert result.difference < 0 and result.ci_high < 0
    assert result.p_value < 0.05
    assert verdict(False, result.p_value) == "worse (p<0.05)"
    assert verdict(True, None) == "best" and verdict(False, None, cannot_tell="why") == "cannot tell (why)"


def test_mismatched_shapes_are_refused():
    p, y = make_case(8, n=50, c=3)
    with pytest.raises(ValueError, match=r"\(50, 3\).*\(49, 3\)"):
        paired_bootstrap(y, [p], [p[:49]])


# ------------------------------------------------------------------ across seeds

def test_seed_interval():
    one = seed_interval([0.8])
    assert (one.n, one.mean, one.std, one.ci_low, one.ci_high) == (1, 0.8, None, None, None)

    three = seed_interval([0.80, 0.82, 0.84])
    assert three.mean == pytest.approx(0.82) and three.std == pytest.approx(0.02)
    standard_error = 0.02 / math.sqrt(3)
    assert (three.ci_high - three.mean) / standard_error == pytest.approx(4.3027, abs=1e-4)  # t_{0.975, 2 df}
    assert (three.mean - three.ci_low) / standard_error == pytest.approx(4.3027, abs=1e-4)
    assert not three.clipped


def test_a_seed_interval_is_cut_at_the_metrics_range():
    """The audit's t-interval [-0.0849, 0.7384] of two mAPs: cut at 0 (the mean is the same; the cut interval covers
    the true mean whenever the uncut one does, as that lies in [0, 1])."""
    two = [0.29, 0.355]
    uncut = seed_interval(two, bounds=None)
    assert uncut.ci_low == pytest.approx(0.3225 - 12.7062 * 0.0325, abs=1e-4) and uncut.ci_low < 0
    cut = seed_interval(two)
    assert (cut.ci_low, cut.ci_high, cut.mean, cut.clipped) == (0.0, uncut.ci_high, uncut.mean, True)
    high = seed_interval([0.97, 0.999, 0.9])
    assert high.ci_high == 1.0 and high.clipped and high.ci_low == seed_interval([0.97, 0.999, 0.9], bounds=None).ci_low


def test_a_t_test_needs_two_seeds_that_differ_on_each_side():
    assert seed_test_limit([0.6, 0.62], [0.5, 0.51]) is None
    assert seed_test_limit([0.6], [0.5, 0.51], ("best", "other")) == "best has 1 seed: no seed spread to test against"
    assert seed_test_limit([0.6, 0.62], [0.6439, 0.6439], ("best", "other")) == \
        "other's 2 seeds score exactly alike: no seed spread to test against"


# ------------------------------------------------------------------ the verdict's test

def test_the_verdicts_false_positive_rate_holds_for_2_3_and_5_seeds():
    """Both groups from one distribution (a null simulation, vectorised): the best group (higher mean) is called better
    than the other at most 7% of the time at alpha 0.05 (nominal 5%; 20000 draws: standard error 0.15 points), with 2,
    3 or 5 seeds each, and with one seed against three (Student's pooled t). The two-level bootstrap this replaced
    called 13-20% with 2-3 seeds. The verdict comes from the interval, the p-value from the same t: they agree."""
    rng = np.random.default_rng(2026)
    for n_best, n_other in ((2, 2), (3, 3), (5, 5), (1, 3), (3, 1)):
        a, b = rng.normal(0.6, 0.02, (20000, n_best)), rng.normal(0.6, 0.02, (20000, n_other))
        if n_best == n_other:  # compare ranks first: the test runs on best - other
            swap = (a.mean(1) < b.mean(1))[:, None]
            a, b = np.where(swap, b, a), np.where(swap, a, b)
        d = seed_difference(a, b)
        rate = float(np.mean(d.excludes_zero))
        assert rate <= 0.07, (n_best, n_other, rate)
        clear_of_boundary = np.abs(d.p_value - 0.05) > 1e-9
        assert np.array_equal(d.excludes_zero[clear_of_boundary], (d.p_value < 0.05)[clear_of_boundary])
    # and it does find a real difference: 2 seed standard deviations with 5 seeds, most of the time
    shifted = seed_difference(rng.normal(0.64, 0.02, (20000, 5)), rng.normal(0.6, 0.02, (20000, 5)))
    assert np.mean(shifted.excludes_zero) > 0.6


def test_seed_difference_is_scipys_welch_and_pooled_t_test():
    from scipy.stats import ttest_ind

    a, b = [0.61, 0.64, 0.60], [0.55, 0.58, 0.57, 0.52]
    for other, equal_var in ((b, False), ([0.55], True)):
        ours, theirs = seed_difference(a, other), ttest_ind(a, other, equal_var=equal_var)
        assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9) and ours.df == pytest.approx(theirs.df)
        assert (ours.ci_low, ours.ci_high) == pytest.approx(tuple(theirs.confidence_interval(0.95)), rel=1e-9)
    with pytest.raises(ValueError, match="3 seed runs or more"):
        seed_difference([0.6], [0.5])


def test_the_verdict_follows_the_interval_shown_at_the_boundary():
    """Shifted so that the interval's low end sits at 0: a hair above it is worse, at or below it is not, whatever
    the p-value's last digit says."""
    a, b = np.array([0.60, 0.62, 0.61]), np.array([0.55, 0.57, 0.58])
    d = seed_difference(a, b)
    boundary = d.difference - d.ci_low  # the half width: a difference of exactly this puts ci_low at 0
    for shift in (-1e-9, 0.0, 1e-9):
        moved = seed_difference(a - d.difference + boundary + shift, b)
        word = verdict(False, moved.p_value, 0.05, (moved.ci_low, moved.ci_high))
        assert word.startswith("worse") == (moved.ci_low > 0), shift
        assert moved.p_value == pytest.approx(0.05, abs=1e-6)
    assert verdict(False, 0.049, 0.05, (-0.01, 0.02)) == "not distinguishable from best"  # the interval decides


def test_single_runs_compared_over_images_do_not_draw_runs():
    """draw_runs=False: every resample scores each run as it is, so the interval is the image noise of the mean
    difference, the same as one run against one run when the groups hold copies of a run."""
    p, y = make_case(21, n=200, c=4)
    q = np.clip(p + rng_noise(p, 3), 0, 1)
    one = paired_bootstrap(y, [p], [q], n_resamples=300, seed=4)
    copies = paired_bootstrap(y, [p, p], [q, q], n_resamples=300, seed=4, draw_runs=False)
    assert (copies.difference, copies.ci_low, copies.ci_high, copies.p_value) == pytest.approx(
        (one.difference, one.ci_low, one.ci_high, one.p_value), abs=1e-12)
