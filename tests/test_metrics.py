"""Every metric against scikit-learn (or the direct formula for CF1/OF1), on random data and edge cases."""

import logging
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from mlabel_exp.metrics.scores import EPOCH_METRICS, compute, per_class_table
from mlabel_exp.metrics.thresholds import best_f1_threshold, tune_thresholds


def random_case(seed, n=300, c=6, empty_class=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.05, 0.5, c)).astype(int)
    p = np.clip(y * 0.35 + rng.random((n, c)) * 0.65, 0, 1)
    if empty_class is not None:
        y[:, empty_class] = 0
    return torch.tensor(p, dtype=torch.float32), torch.tensor(y)


def sklearn_reference(p, y, thr):
    p, y = p.numpy(), y.numpy()
    pred = (p >= thr).astype(int)
    has_pos = y.sum(0) > 0
    ap = [skm.average_precision_score(y[:, c], p[:, c]) for c in range(y.shape[1]) if has_pos[c]]
    kw = dict(zero_division=0)
    macro = dict(average="macro", labels=np.flatnonzero(has_pos), **kw)  # the classes mAP is defined on
    cp = skm.precision_score(y, pred, **macro)
    cr = skm.recall_score(y, pred, **macro)
    op = skm.precision_score(y, pred, average="micro", **kw)
    orr = skm.recall_score(y, pred, average="micro", **kw)
    return {
        "mAP": float(np.mean(ap)),
        "f1_micro": skm.f1_score(y, pred, average="micro", **kw),
        "f1_macro": skm.f1_score(y, pred, **macro),
        "precision_micro": op, "precision_macro": cp, "recall_micro": orr, "recall_macro": cr,
        "CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr) if cp + cr else 0.0,
        "OP": op, "OR": orr, "OF1": 2 * op * orr / (op + orr) if op + orr else 0.0,
        "hamming_loss": skm.hamming_loss(y, pred),
        "subset_accuracy": skm.accuracy_score(y, pred),
        "accuracy": float((pred == y).mean()),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_metrics_match_sklearn_on_random_data(seed, threshold):
    p, y = random_case(seed)
    ours, ref = compute(p, y, threshold), sklearn_reference(p, y, threshold)
    assert set(ours) == set(EPOCH_METRICS)
    for k in EPOCH_METRICS:
        assert ours[k] == pytest.approx(ref[k], abs=1e-5), k


def test_cf1_is_not_the_mean_of_per_class_f1():
    p, y = random_case(5)
    ours = compute(p, y)
    assert ours["CF1"] != pytest.approx(ours["f1_macro"], abs=1e-4)


def test_per_class_thresholds_match_sklearn():
    p, y = random_case(3)
    thr = torch.tensor([0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    pred = (p.numpy() >= thr.numpy()).astype(int)
    ours = compute(p, y, thr)
    assert ours["f1_macro"] == pytest.approx(skm.f1_score(y.numpy(), pred, average="macro", zero_division=0), abs=1e-6)
    table = per_class_table(p, y, [f"c{i}" for i in range(6)], thr)
    np.testing.assert_allclose(table["F1"], skm.f1_score(y.numpy(), pred, average=None, zero_division=0), atol=1e-6)
    np.testing.assert_allclose(table["threshold"], thr.numpy(), atol=1e-7)


def test_class_without_positives_warns_and_stays_finite(caplog):
    p, y = random_case(4, empty_class=2)
    with caplog.at_level(logging.WARNING):
        ours = compute(p, y, classes=list("abcdef"))
    assert any("class(es) c" in r.message for r in caplog.records)
    assert all(math.isfinite(v) for v in ours.values())
    assert ours["mAP"] == pytest.approx(sklearn_reference(p, y, 0.5)["mAP"], abs=1e-5)  # mean over defined classes
    assert math.isnan(per_class_table(p, y, list("abcdef"))["AP"][2])  # undefined, not a failure at 0


def test_all_zero_predictions_and_perfect_predictions():
    _, y = random_case(6)
    zero = compute(torch.zeros(y.shape), y)
    assert zero["f1_micro"] == 0 and zero["recall_micro"] == 0 and zero["CF1"] == 0
    assert zero["accuracy"] == pytest.approx(1 - y.float().mean().item())
    perfect = compute(y.float(), y)
    for k in ("mAP", "f1_micro", "f1_macro", "CF1", "OF1", "subset_accuracy", "accuracy"):
        assert perfect[k] == pytest.approx(1.0), k
    assert perfect["hamming_loss"] == 0


def brute_force_best_f1(scores, labels):
    best = (0.0, 0.5)
    for t in sorted(set(scores.tolist())):
        f1 = skm.f1_score(labels, (scores >= t).astype(int), zero_division=0)
        best = max(best, (f1, -t))  # on ties the highest threshold, as the sort in ours finds it first
    return -best[1], best[0]


@pytest.mark.parametrize("seed", range(5))
def test_best_f1_threshold_is_the_exact_optimum(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(80) < 0.3).astype(int)
    scores = np.round(labels * 0.3 + rng.random(80) * 0.7, 2).astype(np.float32)  # rounded: ties included
    t, f1 = best_f1_threshold(torch.tensor(scores), torch.tensor(labels))
    ref_t, ref_f1 = brute_force_best_f1(scores, labels)
    assert f1 == pytest.approx(ref_f1)
    assert np.array_equal(scores >= np.float32(t), scores >= ref_t)  # the same cut
    out = scores[scores < ref_t]  # the cut sits halfway between the lowest score labelled and the highest not
    assert np.float32(t) == (np.float32((float(ref_t) + float(out.max())) / 2) if len(out) else 0.0)


def test_tuned_thresholds_on_a_constructed_case():
    # class 0: positives score 0.30..0.39, negatives 0.0..0.29 -> any threshold in (0.29, 0.30] is perfect;
    # ours is halfway, 0.295 (the float32 nearest to halfway between the float32 scores).
    pos, neg = np.arange(30, 40) / 100, np.arange(0, 30) / 100
    c0 = np.concatenate([pos, neg])
    y0 = np.concatenate([np.ones(10), np.zeros(30)])
    # class 1: only 2 positives -> falls back to the global threshold
    c1 = np.linspace(0, 1, 40)
    y1 = np.zeros(40)
    y1[[5, 30]] = 1
    p = torch.tensor(np.stack([c0, c1], 1), dtype=torch.float32)
    y = torch.tensor(np.stack([y0, y1], 1))
    out = tune_thresholds(p, y, min_positives=5)
    halfway = (float(np.float32(0.30)) + float(np.float32(0.29))) / 2  # of the float32 scores: 0.29500002
    assert np.float32(out["per_class"][0]) == np.float32(halfway) and out["per_class"][0] == pytest.approx(0.295)
    assert out["fallback_to_global"] == [1] and out["per_class"][1] == out["global"]
    assert per_class_table(p, y, ["a", "b"], torch.tensor(out["per_class"]))["F1"][0] == 1.0


def test_a_threshold_is_a_probability_cut_even_at_the_ends_of_float32():
    """Labelling every image is threshold 0, not the lowest score (a saturated sigmoid's 2.7e-38 once); scores one
    float32 ulp apart are cut at the upper one (no float32 lies between them). Thresholds are float32 values."""
    tiny = np.float32(2.7e-38)
    assert best_f1_threshold(torch.tensor([0.9, 0.5, tiny]), torch.tensor([1, 1, 1])) == (0.0, 1.0)
    upper = np.float32(0.5)
    lower = np.nextafter(upper, np.float32(0))
    t, f1 = best_f1_threshold(torch.tensor([0.9, upper, lower, 0.1]), torch.tensor([1, 1, 0, 0]))
    assert f1 == 1.0 and np.float32(t) == upper


def test_macro_averages_leave_out_classes_without_positives_like_map():
    """A perfect predictor on 2 classes, one with no positive: every average says perfect (was macro-F1 0.5)."""
    y = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]])
    p = torch.tensor([[0.9, 0.1], [0.2, 0.1], [0.8, 0.2], [0.1, 0.3]])
    ours = compute(p, y)
    assert ours["mAP"] == ours["f1_macro"] == ours["precision_macro"] == ours["recall_macro"] == ours["CF1"] == 1.0
    ref = sklearn_reference(p, y, 0.5)
    for k in EPOCH_METRICS:
        assert ours[k] == pytest.approx(ref[k], abs=1e-6), k


def test_cross_fitted_metrics_score_each_fold_at_thresholds_tuned_on_the_others():
    from mlabel_exp.metrics.thresholds import cross_fitted

    p, y = random_case(7, n=200)
    ours = cross_fitted(p, y, folds=4, seed=3)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(3)).numpy()
    pred = np.zeros(y.shape, dtype=int)
    for k in range(4):  # brute force: the folds, the tuning and the decisions written out
        held = order[k::4]
        rest = np.setdiff1d(np.arange(200), held)
        thr = np.array(tune_thresholds(p[rest], y[rest])["per_class"])
        pred[held] = p.numpy()[held] >= thr
    assert ours["f1_micro"] == pytest.approx(skm.f1_score(y.numpy(), pred, average="micro"), abs=1e-6)
    assert ours["f1_macro"] == pytest.approx(skm.f1_score(y.numpy(), pred, average="macro"), abs=1e-6)
    assert ours["mAP"] == pytest.approx(compute(p, y)["mAP"])  # threshold-free: unchanged


def test_tuning_and_scoring_on_the_same_images_is_optimistic_where_cross_fitting_is_not():
    """Pure noise scores carry no information: thresholds tuned on them fit their own noise."""
    from mlabel_exp.metrics.thresholds import cross_fitted

    rng = np.random.default_rng(0)
    y = torch.tensor((rng.random((400, 5)) < 0.2).astype(int))
    p = torch.tensor(rng.random((400, 5)), dtype=torch.float32)
    in_sample = compute(p, y, torch.tensor(tune_thresholds(p, y)["per_class"]))["f1_macro"]
    assert cross_fitted(p, y)["f1_macro"] < in_sample
