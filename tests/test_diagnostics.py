"""Diagnostics of a run (analysis/diagnostics*.py, stats.per_class_ap_intervals): each number against an independent
computation (numpy by hand, scikit-learn, a brute-force bootstrap), galleries against a brute-force ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlabel_exp.diagnostics import measures as D


def _constructed(n=400, c=3, seed=0):
    """Probabilities off every bin edge of 10 bins (and some exactly 1.0, a saturated sigmoid), labels with unknowns."""
    rng = np.random.default_rng(seed)
    probs = np.round(rng.random((n, c)) * 0.998, 3) + 0.0005  # in (0, 1): torchmetrics takes larger ones as logits
    probs[:5, 0] = 1.0
    targets = (rng.random((n, c)) < probs * 0.8).astype(np.int8)
    targets[rng.random((n, c)) < 0.05] = -1
    return probs, targets


def _hand_ece(p, y, bins):
    """L1 ECE by hand: bins [k/b, (k+1)/b), 1.0 alone in a last bin (torchmetrics' binning), weighted by count."""
    index = np.where(p == 1.0, bins, np.floor(p * bins).astype(int))
    return sum(abs(y[index == k].mean() - p[index == k].mean()) * (index == k).sum() / len(p)
               for k in range(bins + 1) if (index == k).any())


def test_ece_and_brier_match_a_hand_computation():
    probs, targets = _constructed()
    cal = D.calibration(probs, targets, bins=10)
    known = targets >= 0
    for c in range(probs.shape[1]):
        p, y = probs[known[:, c], c], targets[known[:, c], c].astype(float)
        # torchmetrics sums in float64 here: agreement to a few float64 roundings per bin
        assert cal.ece[c] == pytest.approx(_hand_ece(p, y, 10), abs=1e-12)
        assert cal.brier[c] == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    p, y = probs[known], targets[known].astype(float)  # pooled: every known label of every class
    assert cal.ece_pooled == pytest.approx(_hand_ece(p, y, 10), abs=1e-12)
    assert cal.brier_pooled == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    b = cal.pooled_bins  # unmerged (min_count=1), what the diagram draws is what the ECE sums
    drawn = np.sum(np.abs(b.positive - b.confidence) * b.count) / b.count.sum()
    assert drawn == pytest.approx(cal.ece_pooled, abs=1e-12) and b.count.sum() == known.sum()


def test_reliability_bins_hold_the_minimum_count_and_what_their_spans_hold():
    """Merged to 30 labels at least (skewed probabilities, most near 0, as a multi-label model's): every bin holds 30
    or more, the bins tile the probabilities in order, and each bin's count, mean probability and share present are
    those of the labels whose probability lies in its span (1.0 in the last); ECE stays the unmerged one."""
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.beta(0.3, 3, 600), [1.0, 1.0]])
    y = (rng.random(len(p)) < p).astype(np.int8)
    unmerged = D.reliability_bins(p, y, 15)
    assert (unmerged.count < 30).any()  # what the merging is for
    b = D.reliability_bins(p, y, 15, min_count=30)
    assert (b.count >= 30).all() and b.count.sum() == len(p) and len(b.count) < len(unmerged.count)
    assert (b.lower[1:] >= b.upper[:-1]).all() and (b.lower < b.upper).all()
    for k in range(len(b.count)):
        inside = (p >= b.lower[k]) & ((p < b.upper[k]) | ((p == 1.0) & (k == len(b.count) - 1)))
        assert b.count[k] == inside.sum()
        assert b.confidence[k] == pytest.approx(p[inside].mean(), abs=1e-15)
        assert b.positive[k] == y[inside].mean()
    cal = D.calibration(p[:, None], y[:, None], bins=15, min_count=30)
    assert cal.ece_pooled == pytest.approx(_hand_ece(p, y.astype(float), 15), abs=1e-12)
    assert (cal.pooled_bins.count >= 30).all()
    few = D.reliability_bins(p[:10], y[:10], 15, min_count=30)  # fewer labels than the minimum: one bin, all of them
    assert list(few.count) == [10]


def test_the_wilson_interval_matches_scipys():
    from scipy.stats import binomtest

    k, n = np.array([0, 1, 2, 5, 17, 29, 30, 300, 999]), np.array([30, 2, 30, 7, 40, 30, 30, 1000, 1000])
    low, high = D.wilson_interval(k, n)
    for i in range(len(k)):
        ci = binomtest(int(k[i]), int(n[i])).proportion_ci(confidence_level=0.95, method="wilson")
        assert (low[i], high[i]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert low[0] == 0.0 and high[6] == 1.0  # exactly the ends where every or no label is present


def test_a_class_gets_a_reliability_panel_only_with_enough_positives_negatives_and_labels():
    """Class 0 has 2 positives, class 1 has 400 positives and 5 negatives, class 2 has enough of both but 50 known
    labels (one bin of 30); class 3 has enough of everything: the figure has the pooled panel and class 3's only, and
    names the others as pooled only."""
    from mlabel_exp.diagnostics import figures as F

    rng = np.random.default_rng(2)
    targets = (rng.random((405, 4)) < 0.3).astype(np.int8)
    targets[:, 0] = 0
    targets[:2, 0] = 1
    targets[:, 1] = 1
    targets[:5, 1] = 0
    targets[50:, 2] = -1
    targets[:25, 2], targets[25:50, 2] = 1, 0
    probs = np.clip(targets * 0.6 + rng.random(targets.shape) * 0.4, 0, 1)
    panels = D.panel_classes(targets, min_positives=20, min_count=30)
    assert panels == [3]
    cal = D.calibration(probs, targets, bins=15, min_count=30)
    classes = ["rare", "everywhere", "few labels", "plenty"]
    fig = F.reliability(cal, classes, panels, (targets == 1).sum(0), (targets >= 0).sum(0), "a rule", "val")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 2 and titles[0].startswith("all classes pooled") and titles[1].startswith("plenty (")
    assert "Pooled only (3): rare, everywhere, few labels." in fig.get_suptitle().replace("\n", " ")
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_a_perfectly_calibrated_constant_has_no_calibration_error():
    targets = np.array([[1], [0], [0], [0]], dtype=np.int8)
    cal = D.calibration(np.full((4, 1), 0.25), targets, bins=10)
    assert cal.ece[0] == pytest.approx(0.0, abs=1e-15) and cal.brier[0] == pytest.approx((0.75**2 + 3 * 0.25**2) / 4)


def test_false_positives_given_a_present_class_on_a_hand_example():
    #            a  b  c                 predicted a b c
    targets = np.array([[1, 0, 0],     # b predicted, absent: a false positive of b with a present
                        [1, 1, 0],     # c predicted, absent: of c with a and with b present
                        [1, 0, -1],    # c unknown: counts for neither numerator nor denominator
                        [0, 0, 1]], dtype=np.int8)
    predicted = np.array([[1, 1, 0],
                          [1, 1, 1],
                          [0, 0, 1],
                          [1, 0, 1]], dtype=bool)
    share, n = D.false_positive_given_present(targets, predicted)
    # a present and b absent: images 0, 2 -> b predicted in image 0: 1/2; a present, c absent: images 0, 1 -> 1/2
    # b present, a absent: none; b present, c absent: image 1 -> 1/1; c present (image 3): a absent, predicted -> 1/1
    expected = np.array([[np.nan, 1 / 2, 1 / 2],
                         [np.nan, np.nan, 1.0],
                         [1.0, 0.0, np.nan]])
    np.testing.assert_array_equal(share, expected)
    np.testing.assert_array_equal(n, [[0, 2, 2], [0, 0, 1], [1, 1, 0]])  # diagonal: i present and absent, none
    np.testing.assert_array_equal(D.cooccurrence_counts(targets), [[3, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_per_class_ap_intervals_match_a_brute_force_bootstrap():
    from sklearn.metrics import average_precision_score

    from mlabel_exp.metrics.stats import per_class_ap_intervals

    rng = np.random.default_rng(1)
    n, c, resamples, batch = 40, 4, 60, 25
    targets = (rng.random((n, c)) < 0.3).astype(np.int8)
    targets[:, 3] = 0
    targets[7, 3] = 1          # one positive: resamples without it leave the class out of its percentiles
    targets[3:6, 1] = -1       # unknown labels take no part
    scores = np.round(rng.random((n, c)), 2)  # ties, as saturated probabilities have them
    got = per_class_ap_intervals(scores, targets, n_resamples=resamples, seed=3, batch=batch)
    draw_rng, draws = np.random.default_rng(3), np.full((c, resamples), np.nan)
    for start in range(0, resamples, batch):  # the same draws: one generator, batch by batch
        drawn = draw_rng.integers(0, n, (min(batch, resamples - start), n))
        for b, rows in enumerate(drawn):
            for k in range(c):
                y, s = targets[rows, k], scores[rows, k]
                if (y == 1).any():
                    draws[k, start + b] = average_precision_score(y[y >= 0], s[y >= 0])
    known = [targets[:, k] >= 0 for k in range(c)]
    full = [average_precision_score(targets[m, k], scores[m, k]) for k, m in enumerate(known)]
    low, high = np.nanpercentile(draws, [2.5, 97.5], axis=1)
    # float64 sums of the same terms in another order: agreement to 1e-12
    np.testing.assert_allclose(got.ap, full, atol=1e-12)
    np.testing.assert_allclose(got.low, low, atol=1e-12)
    np.testing.assert_allclose(got.high, high, atol=1e-12)
    assert np.all(got.low <= got.ap) and np.all(got.ap <= got.high)


def _evaluation(tmp_path, n=14):
    from PIL import Image

    rng = np.random.default_rng(2)
    probs = rng.random((n, 2))
    targets = (rng.random((n, 2)) < 0.5).astype(np.int8)
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"im{i}.png")
        Image.new("RGB", (20, 20), (i * 15, 0, 0)).save(paths[-1])
    return D.Evaluation("val", ["a", "b"], [f"im{i}.png" for i in range(n)], probs, targets,
                        np.array([0.5, 0.4]), paths)


def test_a_gallery_shows_the_top_ranked_errors_and_reads_only_those_images(tmp_path, monkeypatch):
    from mlabel_exp.diagnostics import writer as P
    from mlabel_exp.config import DiagnosticsConfig

    ev = _evaluation(tmp_path)
    read = []
    real_thumbnail = P.thumbnail
    monkeypatch.setattr(P, "thumbnail", lambda path: read.append(path) or real_thumbnail(path))
    settings = DiagnosticsConfig(gallery_classes=1, gallery_size=3)
    entries = P._galleries(ev, tmp_path / "out", settings)
    # brute force: every error of the class with the most, sorted by probability (false positives highest first)
    predicted = ev.probs >= ev.thresholds
    errors = [((predicted[:, k] & (ev.targets[:, k] == 0)) | (~predicted[:, k] & (ev.targets[:, k] == 1))).sum()
              for k in range(2)]
    k = int(np.argmax(errors))
    fp = sorted((i for i in range(14) if predicted[i, k] and ev.targets[i, k] == 0), key=lambda i: -ev.probs[i, k])
    fn = sorted((i for i in range(14) if not predicted[i, k] and ev.targets[i, k] == 1), key=lambda i: ev.probs[i, k])
    assert [e["image"] for e in entries] == [f"gallery_val_{k:02d}_{ev.classes[k]}.png"]
    assert read == [ev.paths[i] for i in fp[:3] + fn[:3]]  # the images shown, nothing else
    shown_fp, shown_fn = D.top_errors(ev.probs, ev.targets, predicted, k, 3)
    assert list(shown_fp) == fp[:3] and list(shown_fn) == fn[:3]
    assert (tmp_path / "out" / entries[0]["image"]).stat().st_size > 0


def test_the_index_merges_entries_by_title(tmp_path):
    D.add_to_index(tmp_path, [{"title": "A", "image": "a.png", "caption": "1"},
                              {"title": "B", "table": "b.csv", "caption": "2"}])
    D.add_to_index(tmp_path, [{"title": "C", "image": "c.png", "caption": "3"},   # another writer's entry
                              {"title": "A", "image": "a2.png", "caption": "4"}])  # replaced in place
    assert json.loads((tmp_path / "index.json").read_text()) == [
        {"title": "A", "image": "a2.png", "caption": "4"}, {"title": "B", "table": "b.csv", "caption": "2"},
        {"title": "C", "image": "c.png", "caption": "3"}]
    with pytest.raises(ValueError):
        D.add_to_index(tmp_path, [{"title": "D", "caption": "no image or table"}])
    D.drop_from_index(tmp_path, {"a2.png"})  # a figure this pass no longer draws
    assert [e["title"] for e in json.loads((tmp_path / "index.json").read_text())] == ["B", "C"]


def test_temperature_scaling_finds_the_cross_entropy_minimum_of_a_grid_search():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, (300, 3))
    targets = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.int8)
    targets[:10, 0] = -1                                      # unknown labels take no part
    probs = 1 / (1 + np.exp(-2 * z))                          # twice as confident as the labels justify
    grid = np.linspace(0.5, 4, 3501)
    known = targets >= 0
    q = 1 / (1 + np.exp(-2 * z[known][None, :] / grid[:, None]))
    y = targets[known].astype(float)
    bce = -(y * np.log(q) + (1 - y) * np.log(1 - q)).mean(1)
    t = D.fit_temperature(probs, targets)
    assert abs(t - grid[np.argmin(bce)]) <= grid[1] - grid[0]  # the grid's resolution
    assert 1.5 < t < 2.7  # softens: the probabilities were sharpened by 2
    np.testing.assert_allclose(D.scaled(probs, t), 1 / (1 + np.exp(-2 * z / t)), rtol=1e-9)


def test_diagnostics_read_unknowns_from_the_file_and_from_the_data_set_only_for_an_older_file(tmp_path):
    """A file that marks unknown labels is read as it is; one an older version wrote (true labels only) takes its
    unknowns from the data set's rows where it has them, never turning a known label unknown the other way round."""
    from mlabel_exp.inference.outputs import write_predictions

    probs = np.array([[0.9, 0.2], [0.4, 0.7], [0.1, 0.6]], dtype=np.float32)
    targets = np.array([[1, -1], [0, 1], [-1, 0]], dtype=np.int8)
    write_predictions(tmp_path, "val", ["a.jpg", "b.jpg", "c.jpg"], probs, ["cat", "dog"], 0.5, targets=targets)
    everything_unknown = lambda name: np.array([-1, -1])  # noqa: E731 - a data set that would say otherwise
    ev = D.read_predictions(tmp_path / "val.json", "val", labels_of=everything_unknown)
    np.testing.assert_array_equal(ev.targets, targets)
    payload = json.loads((tmp_path / "val.json").read_text())
    for record in payload["predictions"].values():
        del record["unknown_labels"]  # as an older version wrote it
    (tmp_path / "old.json").write_text(json.dumps(payload))
    np.testing.assert_array_equal(D.read_predictions(tmp_path / "old.json", "val").targets, [[1, 0], [0, 1], [0, 0]])
    data_set = {"a.jpg": np.array([1, -1]), "c.jpg": np.array([-1, 0])}  # b.jpg: not in the data set here
    ev = D.read_predictions(tmp_path / "old.json", "val", labels_of=data_set.get)
    np.testing.assert_array_equal(ev.targets, targets)


def test_top_confusions_rank_by_the_lower_end_of_the_wilson_interval_not_the_share():
    """4 images at 100% are weaker evidence than 100 at 80%: the lower end of each share's 95% Wilson interval
    (scipy's binomtest) ranks them; a cell without a false positive, the diagonal and an empty cell are never named."""
    from scipy.stats import binomtest

    share = np.array([[np.nan, 1.0, 0.0], [0.8, np.nan, 0.5], [np.nan, 0.1, np.nan]])
    n = np.array([[0, 4, 50], [100, 0, 10], [0, 30, 0]])
    low = {(i, j): binomtest(int(round(share[i, j] * n[i, j])), int(n[i, j])).proportion_ci(method="wilson").low
           for i, j in [(0, 1), (1, 0), (1, 2), (2, 1)]}
    assert D.top_confusions(share, n, k=10) == sorted(low, key=low.get, reverse=True) == [(1, 0), (0, 1), (1, 2), (2, 1)]
    assert D.top_confusions(share, n, k=2) == [(1, 0), (0, 1)]
