"""K-fold cross-validation: the folds (a partition of the non-test images, stratified within one image per class,
reproducible), their settings, what a fold run records and resumes, compare's fold groups and their corrected test
(its error rate under the null, on models actually trained on folds of simulated data), and the label check's
ranking against labels made wrong on purpose. The fold sweep itself: tests/test_fold_sweep.py."""

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mlabel_exp.comparison import groups, paired
from mlabel_exp.comparison.report import verdict
from mlabel_exp.config import DataConfig
from mlabel_exp.data.index import DatasetIndex
from mlabel_exp.data.split import fold_split, make_folds, make_split, split_from_config
from mlabel_exp.errors import ConfigError
from mlabel_exp.metrics import stats
from mlabel_exp.metrics.label_issues import find_label_issues, precision_recall_at, rank_by_loss
from tests.conftest import compose_cfg


def _labels(n=1362, c=11, seed=9, unknown=0.0):
    """A dense multi-label matrix on which iterstrat's folds alone miss the ideal count of a class by 4.5 images (6
    folds), with unknown labels (-1) where asked."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.01, 0.5, c)).astype(np.int8)
    y[rng.random(y.shape) < unknown] = -1
    return y


def _check_folds(y, fold_of, k, test_fraction, seed):
    rest = np.flatnonzero(fold_of >= 0)
    test = make_split(y, 0.2, test_fraction, seed=seed).get("test", np.array([], dtype=int))
    assert np.array_equal(np.flatnonzero(fold_of < 0), np.sort(test))  # the plain split's test, outside every fold
    vals = []
    for fold in range(k):
        s = fold_split(fold_of, fold)
        assert not set(s["train"]) & set(s["val"]) and sorted([*s["train"], *s["val"]]) == rest.tolist()
        vals += s["val"].tolist()
    assert sorted(vals) == rest.tolist()  # every non-test image validates exactly once
    positives = (y[rest] == 1).sum(0)
    for fold in range(k):
        held = rest[fold_of[rest] == fold]
        assert np.all(np.abs((y[held] == 1).sum(0) - positives / k) <= 1), fold  # within one image per class
        assert abs(len(held) - len(rest) / k) <= 1


@pytest.mark.parametrize("k, test_fraction", [(6, 0.0), (5, 0.2), (3, 0.1)])
def test_folds_partition_the_non_test_images_stratified_within_one_image_per_class(k, test_fraction):
    y = _labels(unknown=0.02)
    fold_of = make_folds(y, k, test_fraction, seed=4)
    _check_folds(y, fold_of, k, test_fraction, seed=4)
    assert np.array_equal(make_folds(y, k, test_fraction, seed=4), fold_of)  # reproducible
    assert not np.array_equal(make_folds(y, k, test_fraction, seed=5), fold_of)  # and seeded


def test_iterstrat_alone_misses_the_ideal_counts_on_these_labels():
    """The balancing is what brings every class within one image: iterstrat's folds alone do not (so the test above
    can fail)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    y = (_labels() == 1).astype(np.uint8)
    folds = [held for _, held in MultilabelStratifiedKFold(6, shuffle=True, random_state=5).split(y, y)]
    worst = max(np.abs(y[held].sum(0) - y.sum(0) / 6).max() for held in folds)
    assert worst > 1


def test_the_synthetic_sets_folds_are_stratified_too(synthetic_root):
    from mlabel_exp.data.formats.folder import build_index

    y = build_index(synthetic_root).labels
    _check_folds(y, make_folds(y, 5, 0.0, seed=0), 5, 0.0, seed=0)


@pytest.mark.parametrize("overrides, message", [
    (["data.folds=1"], "data.folds=1 is invalid: expected 0 (one validation split, data.val_fraction) or a number of "
                       "folds >= 2, e.g. data.folds=5"),
    (["data.folds=5", "data.fold=5"], "data.fold=5 is invalid: expected a fold of data.folds=5: 0 to 4 "
                                      "(-m data.fold=0,1,2,3,4 runs them all)"),
    (["data.fold=2"], "data.fold=2 is invalid: expected 0 without data.folds; for K-fold cross-validation set "
                      "data.folds=K too, e.g. data.folds=5"),
])
def test_fold_settings_out_of_range_are_one_line(overrides, message):
    from mlabel_exp.config import validate

    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*overrides))
    assert str(e.value) == message


def _index(n=60, seed=1):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 4)) < 0.3).astype(np.int8)
    return DatasetIndex("/data", ["a", "b", "c", "d"], np.arange(1, n + 1), [f"im{i}.jpg" for i in range(1, n + 1)],
                        labels)


def test_a_split_file_is_only_read_for_its_own_fold(tmp_path):
    """A fold sweep cannot share one split file; a resumed fold run reads its own (the one that names its fold)."""
    from mlabel_exp.data.split import save_split

    index = _index()
    cfg = DataConfig(folds=3, fold=1, cache_dir=str(tmp_path / "cache"), split_file=str(tmp_path / "split.json"))
    with pytest.raises(ConfigError, match=r"data.split_file=.*split.json does not exist, and data.folds=3 data.fold=1 "
                                          r"asks for a fold: leave data.split_file out"):
        split_from_config(index, cfg)
    own = split_from_config(index, DataConfig(folds=3, fold=1, cache_dir=str(tmp_path / "cache")))
    save_split(tmp_path / "split.json", index, own, seed=0, folds=3, fold=1)
    assert all(np.array_equal(own[k], v) for k, v in split_from_config(index, cfg, exact=True).items())
    save_split(tmp_path / "split.json", index, own, seed=0, folds=3, fold=2)
    with pytest.raises(ConfigError, match="holds fold 2 of 3"):
        split_from_config(index, cfg)


def test_a_fold_run_records_its_fold_and_the_images_of_each_fold_differ():
    from mlabel_exp.config import validate
    from mlabel_exp.experiment.record import dataset_digests, fold_set_digest, run_params

    facts = {"device": "cpu"}
    fold = compose_cfg("data.folds=5", "data.fold=3")
    params = run_params(fold, validate(fold), facts)
    assert params["data.folds"] == 5 and params["data.fold"] == 3 and "data.val_fraction" not in params
    plain = run_params(compose_cfg(), validate(compose_cfg()), facts)
    assert "data.folds" not in plain and "data.fold" not in plain and "data.val_fraction" in plain  # as before
    index, content = _index(), np.zeros((60, 8), dtype=np.uint8)
    fold_of = make_folds(index.labels, 3, 0.0, seed=0)
    splits = [fold_split(fold_of, f) for f in range(3)]
    digests = [dataset_digests(index, s, content) for s in splits]
    assert len({d["validation"] for d in digests}) == 3 and len({d["train"] for d in digests}) == 3
    assert len({fold_set_digest(index, s, content) for s in splits}) == 1  # what compare groups the folds by


def test_a_resume_refuses_another_fold_naming_the_runs(tmp_path):
    from omegaconf import OmegaConf

    from mlabel_exp.config import Config
    from mlabel_exp.experiment.resume import check_overrides

    run = OmegaConf.merge(OmegaConf.structured(Config), compose_cfg("data.folds=5", "data.fold=1"))
    with pytest.raises(ConfigError, match=r"data.fold=2 \(the run has 1\)"):
        check_overrides(["data.fold=2"], compose_cfg("data.folds=5", "data.fold=2"), run, None, tmp_path)
    assert check_overrides(["data.fold=1"], compose_cfg("data.folds=5", "data.fold=1"), run, None, tmp_path) == []


# ------------------------------------------------------------------ the corrected resampled t-test

def test_the_corrected_test_is_the_paired_t_test_with_its_variance_inflated():
    a, b = np.array([0.61, 0.64, 0.60, 0.66, 0.63]), np.array([0.58, 0.60, 0.61, 0.60, 0.57])
    plain = scipy_stats.ttest_rel(a, b)
    assert stats.fold_difference(a, b, 0.0).p_value == pytest.approx(plain.pvalue, rel=1e-9)
    d = stats.fold_difference(a, b, 0.25)  # 5 folds: n_test / n_train = 1/4
    t = plain.statistic / np.sqrt(1 + 5 * 0.25)  # the variance times (1/J + r) instead of 1/J
    assert d.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), 4), rel=1e-9)
    half = scipy_stats.t.ppf(0.975, 4) * np.std(a - b, ddof=1) * np.sqrt(1 / 5 + 0.25)
    assert (d.ci_low, d.ci_high) == pytest.approx((np.mean(a - b) - half, np.mean(a - b) + half), rel=1e-12)
    assert stats.fold_test_limit([0.6], [0.5]) and stats.fold_test_limit([0.6, 0.7], [0.5, 0.6])  # no spread


def _fold_scores(n_sets, k, seeds, rng, shift=0.0, n=100, d=20):
    """AUC on each fold of nearest-centroid models trained on the other folds of ``n_sets`` simulated data sets (n
    images, d features, balanced classes, fold-stratified): setting A sees the first half of the features, B the other
    half, equally informative (``shift`` > 0 makes A's more so). A seed trains on a random 70% of its training folds.
    Scores of one data set's folds are correlated as real ones are: their training sets overlap. (2, n_sets, k, s)"""
    y = (np.arange(n) // k) % 2 == 1  # each fold holds n/k images, half of each class
    fold = np.arange(n) % k
    signal = np.r_[np.full(d // 2, 0.35 + shift), np.full(d // 2, 0.35)]
    x = rng.normal(size=(n_sets, n, d)) + y[None, :, None] * signal
    out = np.zeros((2, n_sets, k, seeds))
    for f in range(k):
        test = fold == f
        for s in range(seeds):
            for a, features in enumerate((slice(0, d // 2), slice(d // 2, d))):
                seen = (fold != f)[None] & (rng.random((n_sets, n)) < 0.7)
                xs = x[..., features]
                c1 = (xs * (seen & y)[..., None]).sum(1) / (seen & y).sum(1, keepdims=True)
                c0 = (xs * (seen & ~y)[..., None]).sum(1) / (seen & ~y).sum(1, keepdims=True)
                score = ((xs[:, test] - c0[:, None]) ** 2).sum(-1) - ((xs[:, test] - c1[:, None]) ** 2).sum(-1)
                ranks = scipy_stats.rankdata(score, axis=1)
                n1 = y[test].sum()
                out[a, :, f, s] = ((ranks * y[test]).sum(1) - n1 * (n1 + 1) / 2) / (n1 * (test.sum() - n1))
    return out


@pytest.mark.parametrize("seeds", [1, 2])
def test_the_fold_tests_false_positive_rate_holds_for_5_folds_and_5_folds_x_2_seeds(seeds):
    """Two settings equal in expectation, trained on 5 folds of 2000 simulated data sets: the corrected test over
    folds (a fold's seeds averaged, as compare does) calls a difference at most 7% of the time at 5% (standard error
    0.5 points); the plain paired t-test over the same folds calls more (the simulation has the correlation the
    correction is for). And it finds a clear difference (A's features shifted 0.85 between the classes, B's 0.35) most
    of the time: with 5 folds of 20 images the correction costs power."""
    rng = np.random.default_rng(37 + seeds)
    a, b = _fold_scores(2000, 5, seeds, rng).mean(-1)
    ratio = 1 / 4  # 80 training and 20 test images a fold
    rate = np.mean(stats.fold_difference(a, b, ratio).excludes_zero)
    assert rate <= 0.07, rate
    assert np.mean(stats.fold_difference(a, b, 0.0).excludes_zero) > 0.08
    better, other = _fold_scores(400, 5, seeds, rng, shift=0.5).mean(-1)
    assert np.mean(stats.fold_difference(better, other, ratio).excludes_zero) > 0.5


# ------------------------------------------------------------------ compare's fold groups

def _fold_runs(scores: dict[str, list[list[float]]], fold_set="abc:5:0"):
    """Fold runs as the store returns them: scores[group][seed][fold] is a run's best val mAP."""
    runs = []
    for name, per_seed in scores.items():
        for seed, values in enumerate(per_seed):
            for fold, value in enumerate(values):
                runs.append({"run_id": f"{name}-{seed}-{fold}", "name": f"data.fold={fold} model={name}",
                             "params": {"seed": str(seed), "model.name": name, "data.folds": str(len(values)),
                                        "data.fold": str(fold), "data.num_train": str(80 + fold % 2),
                                        "data.num_val": str(20 - fold % 2), "trainer.max_steps_per_epoch": "0"},
                             "tags": {"overrides": f"data.fold={fold} seed={seed} model={name}",
                                      "data.fold_set": fold_set, "data.skipped_images": "0"},
                             "metrics": {"val/best_mAP": value}, "datasets": {"validation": f"v{fold}"}})
    return runs


def test_fold_runs_of_a_setting_are_one_group_tested_over_folds(monkeypatch):
    """Each fold validates on other images (other digests), yet a setting's folds are one group of 5 observations,
    paired fold by fold with the other setting's and tested with the corrected test; the verdict says folds."""
    monkeypatch.setattr(paired, "run_predictions", lambda uri, run_id, split: None)
    good = [0.70, 0.72, 0.69, 0.74, 0.71]
    bad = [v - d for v, d in zip(good, (0.10, 0.12, 0.09, 0.11, 0.10))]
    twin = [v + d for v, d in zip(good, (0.01, -0.02, 0.015, -0.01, 0.0))]
    found = groups.compare_groups("unused", _fold_runs({"good": [good], "bad": [bad], "twin": [twin]}),
                                  n_resamples=200)
    t = found.table.set_index("group")
    assert sorted(t.index) == ["model=bad", "model=good", "model=twin"] and set(t["n"]) == {5}
    assert t.loc["model=bad", "verdict"] == "worse over 5 folds (p<0.05)" and t.loc["model=bad", "unit"] == "fold"
    best = found.table["group"][0]
    ratio = np.mean([(20 - f % 2) / (80 + f % 2) for f in range(5)])
    expected = stats.fold_difference(t.loc[best, "values"], bad, ratio)
    assert t.loc["model=bad", "p_value"] == pytest.approx(expected.p_value, rel=1e-12)
    other = ({"model=good", "model=twin"} - {best}).pop()
    assert t.loc[other, "verdict"] == "not distinguishable from best over 5 folds"
    assert t.loc["model=good", "seeds"] == "folds 0 1 2 3 4"
    assert "Nadeau & Bengio" in found.evaluated_on and "paired by fold" in found.evaluated_on
    assert found.over == "folds" and f"({t.loc[best, 'mean']:.4f}, over 5 folds)" in verdict(found)
    interval, plain = stats.seed_interval(good, test_train_ratio=ratio), stats.seed_interval(good)
    assert (t.loc["model=good", "ci_low"], t.loc["model=good", "ci_high"]) == pytest.approx(
        (interval.ci_low, interval.ci_high))
    widths = [s.ci_high - s.ci_low for s in (interval, plain)]  # the corrected one wider by sqrt(1 + J r)
    assert widths[0] / widths[1] == pytest.approx(np.sqrt(1 + 5 * ratio), rel=1e-9)


def test_the_seeds_of_a_fold_are_averaged_into_one_observation(monkeypatch):
    monkeypatch.setattr(paired, "run_predictions", lambda uri, run_id, split: None)
    good = [[0.70, 0.72, 0.69, 0.74, 0.71], [0.71, 0.70, 0.70, 0.73, 0.72]]
    bad = [[v - d + 0.01 * s for v, d in zip(good[s], (0.10, 0.12, 0.09, 0.11, 0.10))] for s in range(2)]
    runs = _fold_runs({"good": good, "bad": bad})
    found = groups.compare_groups("unused", runs, n_resamples=200)
    t = found.table.set_index("group")
    assert t.loc["model=good", "values"] == pytest.approx(np.mean(good, axis=0).tolist())
    assert t.loc["model=good", "n"] == 5 and t.loc["model=good", "seeds"] == "folds 0 1 2 3 4 x seeds 0 1"
    assert t.loc["model=bad", "verdict"] == "worse over 5 folds x 2 seeds (p<0.05)"
    assert any("10 runs over 5 fold(s)" in n and "n counts folds" in n for n in found.notes)
    (winner, _) = groups.rank_settings(runs)
    assert winner.name == "model=good" and winner.unit == "fold (2 seeds each)" and len(winner.values) == 5


def test_fold_runs_of_another_fold_set_or_scored_in_part_are_set_apart(monkeypatch):
    monkeypatch.setattr(paired, "run_predictions", lambda uri, run_id, split: None)
    runs = _fold_runs({"good": [[0.7, 0.72, 0.69]], "bad": [[0.6, 0.61, 0.6]]})
    other = _fold_runs({"moved": [[0.7, 0.72, 0.69]]}, fold_set="xyz:3:1")
    found = groups.compare_groups("unused", runs + other, n_resamples=200)
    t = found.table.set_index("group")
    assert t.loc[[g for g in t.index if "moved" in g][0], "verdict"].startswith("set apart")


# ------------------------------------------------------------------ likely label errors

def _oof_case(n=2000, seed=0):
    """Constructed out-of-fold probabilities of the true labels (8 classes, 40% to 1% prevalence, each its own
    difficulty) and the labels given, with 10% of positives dropped and 1% of negatives added (the injected
    errors)."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02, 0.01])
    truth = (rng.random((n, len(prevalence))) < prevalence).astype(np.int8)
    dropped = (truth == 1) & (rng.random(truth.shape) < 0.1)
    added = (truth == 0) & (rng.random(truth.shape) < 0.01)
    given = np.where(dropped, 0, np.where(added, 1, truth)).astype(np.int8)
    logit = rng.uniform(1, 3, len(prevalence)) * (2 * truth - 1) + rng.normal(0, 1.2, truth.shape)
    errors = {(int(r), int(c)) for r, c in zip(*np.nonzero(dropped | added))}
    return 1 / (1 + np.exp(-logit)), given, errors


def test_the_out_of_fold_label_check_beats_the_loss_of_a_single_validation_split():
    """What the single split can rank are its 20% validation images (the rest have no honest score): at N = the
    number of injected errors the out-of-fold check finds several times as many."""
    probs, given, errors = _oof_case()
    issues = find_label_issues(probs, given)
    val = np.random.default_rng(1).permutation(len(given))[: len(given) // 5]
    single = np.full_like(given, -1)
    single[val] = given[val]
    n = len(errors)
    ours, _ = precision_recall_at(issues.row, issues.cls, errors, n)
    baseline, _ = precision_recall_at(*rank_by_loss(probs, single), errors, n)
    assert ours > 2 * baseline and ours > 0.5, (ours, baseline)


def test_confident_learning_flags_by_each_classs_own_threshold_and_ranks_the_surest_first():
    probs = np.array([[0.9, 0.2], [0.8, 0.1], [0.3, 0.6], [0.85, 0.05], [0.1, 0.7]])
    given = np.array([[1, 0], [1, 0], [1, 1], [0, -1], [0, 1]])
    issues = find_label_issues(probs, given)
    t_present, t_absent = issues.t_present, issues.t_absent
    assert t_present == pytest.approx([(0.9 + 0.8 + 0.3) / 3, (0.6 + 0.7) / 2])
    assert t_absent == pytest.approx([(0.15 + 0.9) / 2, (0.8 + 0.9) / 2])
    # image 3 shows class 0 (0.85 >= 0.667) but is not given it; image 2 is given class 0 at 0.3 (0.7 >= 0.525)
    assert list(zip(issues.row, issues.cls, issues.given)) == [(3, 0, 0), (2, 0, 1)]  # 1 - 0.85 < 0.3
    assert issues.confidence == pytest.approx([0.15, 0.3])


def test_labels_made_wrong_on_purpose_are_written_and_listed(synthetic_root, tmp_path):
    from mlabel_exp.data.formats.folder import build_index
    from mlabel_exp.data.synthetic import write_label_errors

    errors = write_label_errors(synthetic_root, tmp_path / "noisy", drop=0.2, add=0.02, seed=3)
    clean, noisy = build_index(synthetic_root), build_index(tmp_path / "noisy")
    assert clean.files == noisy.files and clean.classes == noisy.classes
    changed = {(int(clean.ids[r]), clean.classes[c], int(noisy.labels[r, c]))
               for r, c in zip(*np.nonzero(clean.labels != noisy.labels))}
    assert changed == set(errors) and len(errors) > 20
    listed = (tmp_path / "noisy" / "injected_errors.csv").read_text().splitlines()
    assert listed[0] == "image,class,given" and len(listed) == len(errors) + 1
    dropped = sum(g == 0 for _, _, g in errors) / (clean.labels == 1).sum()
    assert 0.12 < dropped < 0.28  # about drop=0.2 of the positives


def test_the_ranking_step_takes_well_under_a_second_on_10000_images():
    import time

    rng = np.random.default_rng(0)
    given = (rng.random((10_000, 14)) < 0.1).astype(np.int8)
    probs = np.clip(given * 0.8 + rng.random(given.shape) * 0.3, 0, 1)
    start = time.perf_counter()
    find_label_issues(probs, given)
    assert time.perf_counter() - start < 1.0


def test_the_out_of_fold_file_keeps_its_fold_column_apart_from_the_classes(tmp_path):
    from mlabel_exp.inference.outputs import read_predictions, write_predictions

    probs, targets = np.array([[0.25, 0.5], [0.125, 0.75]]), np.array([[0, 1], [-1, 1]])
    csv, js = write_predictions(tmp_path, "oof", ["b.jpg", "a.jpg"], probs, ["x", "fold "], 0.5, targets,
                                extra={"fold": [1, 0]})
    for path, fmt in ((csv, "csv"), (js, "json")):
        back = read_predictions(path.read_text(), fmt, extra=("fold",)).sorted()
        assert back.classes == ["x", "fold "] and back.files == ["a.jpg", "b.jpg"]
        assert [int(v) for v in back.extra["fold"]] == [0, 1] and np.array_equal(back.probs, probs[::-1])
    assert json.loads(js.read_text())["predictions"]["a.jpg"]["fold"] == 0
    with pytest.raises(Exception, match="has the name of the column 'fold'"):
        write_predictions(tmp_path, "oof", ["a.jpg"], probs[:1], ["fold", "x"], extra={"fold": [0]})


@pytest.mark.parametrize("fmt", ["folder", "csv", "onehot"])
def test_the_line_to_change_is_named_in_each_layout(synthetic_root, tmp_path, fmt):
    """A flagged label's fix names the file and line a person edits: the folder layout's annotations/<class>.txt line
    holding the image number (or a line to add), the CSV row of the image and its labels cell or class column."""
    import shutil

    from mlabel_exp.data.formats import index_from_config
    from mlabel_exp.data.formats.fixes import label_fixer
    from mlabel_exp.data.synthetic import write_format

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    write_format(root, fmt)
    cfg = DataConfig(name="folder" if fmt == "folder" else "csv", root=str(root))
    index = index_from_config(cfg)
    fix = label_fixer(cfg, index)
    row, cls = next((r, index.classes[c]) for r, c in zip(*np.nonzero(index.labels == 1)))
    absent = index.classes[int(np.flatnonzero(index.labels[row] == 0)[0])]
    present, missing = fix(row, cls, 1), fix(row, absent, 0)
    number, stem = int(index.ids[row]), index.files[row].rsplit(".", 1)[0]
    if fmt == "folder":
        path, line = present.split(":")[:2]
        assert path == str(root / "annotations" / f"{cls}.txt") and f"delete the line {number}" in present
        assert open(path).read().splitlines()[int(line) - 1] == str(number)
        assert missing.startswith(f"{root / 'annotations' / absent}.txt: add a line {number}")
        return
    path, line = present.split(" ")[0].rsplit(":", 1)
    cells = open(path).read().splitlines()[int(line) - 1].split(",")
    assert path == str(root / "labels.csv") and cells[0] in (stem, index.files[row])
    if fmt == "csv":  # the labels cell: a name to remove, another to add
        assert cls in cells[1].split() and f"in column 'tags', remove '{cls}'" in present
        assert absent not in cells[1].split() and f"in column 'tags', add '{absent}'" in missing
    else:  # the class's column: 1 -> 0, 0 -> 1
        header = open(path).read().splitlines()[0].split(",")
        assert cells[header.index(cls)] == "1" and present.endswith(f"column '{cls}': 1 -> 0")
        assert cells[header.index(absent)] == "0" and missing.endswith(f"column '{absent}': 0 -> 1")
