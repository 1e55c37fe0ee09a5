"""compare's groups across seeds, on constructed runs whose answer is known (the predictions each run logged are
stand-ins: groups._predictions is replaced; the statistics themselves are checked in test_stats.py)."""

import numpy as np
import pandas as pd
import pytest

from mlabel_exp.analysis import groups
from mlabel_exp.analysis import stats

CLASSES = ["bird", "car", "dog", "sea"]


def constructed(monkeypatch, spread: dict[str, float], seeds=(0, 1, 2), n=300, moved: str | None = None):
    """Runs of groups ``model=<name>`` (one per seed) whose val probabilities are the truth plus noise of the given
    spread (the same noise for every group at a seed): a smaller spread is a better model. ``moved``: that run scores one other image (unpaired)."""
    rng = np.random.default_rng(0)
    y = (rng.random((n, len(CLASSES))) < 0.3).astype(int)
    files = [f"im{i}.jpg" for i in range(n)]
    runs, frames = [], {}
    for name, sd in spread.items():
        for seed in seeds:
            run_id = f"{name}-{seed}"
            noise = np.random.default_rng(seed).normal(0, 1, y.shape)  # model=twin is model=good, seed for seed
            probs = 1 / (1 + np.exp(-(4 * (y - 0.5) + sd * noise)))
            frame = pd.DataFrame(probs, columns=CLASSES, index=pd.Index(files, name="file"))
            frame["true_labels"] = [" ".join(c for c, t in zip(CLASSES, row) if t) for row in y]
            if run_id == moved:
                frame = frame.rename(index={"im0.jpg": "elsewhere.jpg"}).sort_index()
            frames[run_id] = frame
            runs.append({"run_id": run_id, "params": {"seed": str(seed), "model.name": name, "optimizer.lr": "0.001"},
                         "tags": {"overrides": f"seed={seed} model={name} trainer=smoke"},
                         "metrics": {"val/best_mAP": float(stats.weighted_map(probs, y)[0])}})
    monkeypatch.setattr(groups, "_predictions", lambda uri, run_id, split: frames[run_id] if split == "val" else None)
    return runs


def test_groups_are_named_by_what_differs_and_summarised_over_seeds(monkeypatch):
    runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0})
    found = groups.compare_groups("unused", runs, n_resamples=500)
    t = found.table.set_index("group")
    assert list(found.table["group"]) == ["model=good", "model=bad"]  # best first
    assert t.loc["model=good", "seeds"] == "0 1 2" and t.loc["model=good", "n"] == 3
    values = [r["metrics"]["val/best_mAP"] for r in runs if r["params"]["model.name"] == "bad"]
    expected = stats.seed_interval(values)
    assert t.loc["model=bad", "mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert (t.loc["model=bad", "ci_low"], t.loc["model=bad", "ci_high"]) == (expected.ci_low, expected.ci_high)
    assert "paired bootstrap over the 300 validation images" in found.evaluated_on


def test_a_clearly_worse_group_is_worse_and_an_equal_one_is_not_distinguishable(monkeypatch):
    runs = constructed(monkeypatch, {"good": 1.0, "twin": 1.0, "bad": 6.0})
    found = groups.compare_groups("unused", runs, n_resamples=500)
    t = found.table.set_index("group")
    best, other = found.table["group"][0], ({"model=good", "model=twin"} - {found.table["group"][0]}).pop()
    assert t.loc[best, "verdict"] == "best" and t.loc["model=bad", "verdict"] == "worse (p<0.05)"
    assert t.loc["model=bad", "difference"] > 0 and t.loc["model=bad", "diff_ci_low"] > 0
    assert t.loc[other, "verdict"] == "not distinguishable from best"
    assert t.loc[other, "diff_ci_low"] < 0 < t.loc[other, "diff_ci_high"]


def test_runs_on_different_images_fall_back_to_the_across_seed_test(monkeypatch):
    runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, moved="bad-1")
    found = groups.compare_groups("unused", runs, n_resamples=200)
    assert found.evaluated_on.startswith("no paired test: run(s) ")  # no test split; validation images differ
    assert "the runs were scored on different images on the val split" in found.evaluated_on
    assert any("Welch" in note for note in found.notes)
    t = found.table.set_index("group")
    assert pd.isna(t.loc["model=bad", "difference"])
    from scipy.stats import ttest_ind

    scores = {g: [r["metrics"]["val/best_mAP"] for r in runs if r["params"]["model.name"] == g] for g in ("good", "bad")}
    assert t.loc["model=bad", "p_value"] == pytest.approx(ttest_ind(scores["good"], scores["bad"], equal_var=False).pvalue)


def test_one_seed_a_group_gives_no_interval_and_says_so(monkeypatch):
    runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, seeds=(0,))
    found = groups.compare_groups("unused", runs, n_resamples=200)
    assert found.table["ci_low"].isna().all() and found.table["n"].tolist() == [1, 1]
    assert any("one seed" in note and "image noise only" in note for note in found.notes)
    unpaired = groups.compare_groups("unused", constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, seeds=(0,),
                                                           moved="bad-0"), n_resamples=200)
    assert unpaired.table["verdict"].tolist() == ["best", "not tested (one seed, no shared images)"]


def test_groups_are_ranked_on_the_images_the_paired_test_used(monkeypatch):
    """The verdict's direction and the ranking come from the same probabilities: a group whose logged best val mAP is
    higher but which is worse on the paired images is not called best."""
    runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0})
    for run in runs:
        if run["params"]["model.name"] == "bad":
            run["metrics"]["val/best_mAP"] = 0.99  # e.g. chosen on other images than the ones the test pairs on
    found = groups.compare_groups("unused", runs, n_resamples=300)
    assert found.table["group"].tolist() == ["model=good", "model=bad"]
    t = found.table.set_index("group")
    assert t.loc["model=good", "eval_mAP"] > t.loc["model=bad", "eval_mAP"] and t.loc["model=bad", "difference"] > 0
