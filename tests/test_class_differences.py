"""compare's per-class view: AP differences from the best group with paired bootstrap intervals, checked against a
brute-force bootstrap (a loop over the same resamples scored by scikit-learn), and the images two groups disagree on."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlabel_exp.metrics import stats
from mlabel_exp.comparison.class_differences import class_differences, disagreements


def _ap(y: np.ndarray, s: np.ndarray) -> float:
    """scikit-learn's AP over the known labels (-1 left out); NaN without a positive."""
    known = y >= 0
    return average_precision_score(y[known] > 0, s[known]) if (y[known] > 0).any() else np.nan


def test_per_class_intervals_are_the_brute_force_paired_bootstrap_of_seed_mean_ap():
    rng = np.random.default_rng(1)
    n, n_classes, n_resamples = 60, 4, 30
    targets = (rng.random((n, n_classes)) < 0.3).astype(int)
    targets[rng.random((n, n_classes)) < 0.1] = -1  # unknown labels: left out of their class
    targets[:, 3], targets[5, 3] = 0, 1  # one positive: many resamples have none (AP undefined there)
    # rounded scores: ties, which AP scores as one threshold
    groups = {"best": [np.round(rng.random((n, n_classes)), 2) for _ in range(2)],
              "one seed": [np.round(rng.random((n, n_classes)), 2)],
              "three seeds": [np.round(rng.random((n, n_classes)), 2) for _ in range(3)]}
    classes = ["a", "b", "c", "rare"]
    table = class_differences(targets, groups, classes, n_resamples=n_resamples, seed=4)
    assert list(table["group"].unique()) == ["one seed", "three seeds"] and set(table["versus"]) == {"best"}
    assert list(table["class"]) == classes * 2

    indices = np.concatenate(list(stats.resample_indices(n, n_resamples, seed=4)))

    def seed_mean_ap(runs, rows, c):
        return np.mean([_ap(targets[rows, c], p[rows, c]) for p in runs])

    for row in table.itertuples():
        c = classes.index(row[1])
        runs = groups[row.group]
        observed = seed_mean_ap(runs, np.arange(n), c) - seed_mean_ap(groups["best"], np.arange(n), c)
        resampled = np.array([seed_mean_ap(runs, i, c) - seed_mean_ap(groups["best"], i, c) for i in indices])
        low, high = np.nanquantile(resampled, [0.025, 0.975])
        # the same AP by a cumulative sum instead of sklearn's: a few float64 roundings per image
        assert row.difference == pytest.approx(observed, abs=n * 1e-15)
        assert (row.low, row.high) == pytest.approx((low, high), abs=n * 1e-15)


def test_a_class_without_a_known_positive_has_no_difference():
    targets = np.array([[1, 0], [0, -1], [1, 0], [0, 0]])
    probs = [np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.2]])]
    result = stats.class_ap_differences(targets, [probs, [p[::-1] for p in probs]], n_resamples=20)
    assert np.isnan(result.difference[:, 1]).all() and np.isnan(result.low[:, 1]).all()
    assert result.difference[0, 0] == 0 and result.difference[1, 0] == pytest.approx(
        _ap(targets[:, 0], probs[0][::-1, 0]) - _ap(targets[:, 0], probs[0][:, 0]))


def test_disagreements_are_the_images_with_the_largest_gap_on_some_class():
    rng = np.random.default_rng(2)
    a, b = rng.random((50, 5)).astype(np.float32), rng.random((50, 5)).astype(np.float32)
    picked = disagreements(a, b, k=7)
    gaps = [(max(abs(float(a[i, c]) - float(b[i, c])) for c in range(5)), i) for i in range(50)]
    expected = [i for _, i in sorted(gaps, key=lambda g: -g[0])[:7]]
    assert [i for i, _ in picked] == expected
    for i, c in picked:  # each at its class of largest gap
        assert abs(a[i, c] - b[i, c]) == max(abs(a[i] - b[i]))


def test_a_class_with_too_few_positives_is_neither_won_nor_lost():
    """The audit's case: one positive among the images, ranked last by one group and first by the best: every
    resample holding it says "worse" (the interval lies below 0), yet one image is no evidence. Below MIN_POSITIVES
    known positives no verdict is given; a class with enough positives still gets one."""
    from mlabel_exp.comparison.class_differences import MIN_POSITIVES

    n = 40
    targets = np.zeros((n, 2), dtype=int)
    targets[0, 0] = 1                  # one positive
    targets[:20, 1] = 1                # twenty
    targets[30:, 1] = -1               # and some unknown labels, which count for nothing
    best = np.where(targets == 1, 0.9, 0.1)
    worse = np.where(targets == 1, 0.05, np.linspace(0.2, 0.8, n)[:, None])  # every positive ranked last
    table = class_differences(targets, {"best": [best], "other": [worse]}, ["rare", "common"], n_resamples=200)
    rare, common = table.set_index("class").loc["rare"], table.set_index("class").loc["common"]
    assert rare["high"] < 0 and rare["positives"] == 1 < MIN_POSITIVES == 5
    assert rare["verdict"] == "cannot tell (1 positive, fewer than 5)"
    assert common["high"] < 0 and common["positives"] == 20 and common["verdict"] == "loses"
