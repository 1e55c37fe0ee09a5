"""compare's groups across seeds, on constructed runs whose answer is known (the predictions each run logged are
stand-ins: paired.run_predictions is replaced; the statistics themselves are checked in test_stats.py)."""

import numpy as np
import pandas as pd
import pytest

from mlabel_exp.comparison import groups, paired
from mlabel_exp.inference.outputs import Predictions
from mlabel_exp.metrics import stats

CLASSES = ["bird", "car", "dog", "sea"]


def constructed(monkeypatch, spread: dict[str, float], seeds=(0, 1, 2), n=300, moved: str | None = None,
                frames: dict | None = None, data: str | None = None, label_seed: int = 0):
    """Runs of groups ``model=<name>`` (one per seed) whose val probabilities are the truth plus noise of the given
    spread (the same noise for every group at a seed): a smaller spread is a better model. ``moved``: that run scores
    one other image (unpaired). ``data``: the validation digest the runs logged (none: like a run of an older version),
    ``label_seed`` draws their labels; ``frames``: add the predictions to those of an earlier call."""
    rng = np.random.default_rng(label_seed)
    y = (rng.random((n, len(CLASSES))) < 0.3).astype(int)
    files = [f"im{i}.jpg" for i in range(n)]
    runs, frames = [], {} if frames is None else frames
    for name, sd in spread.items():
        for seed in seeds:
            run_id = f"{name}-{seed}" + (f"-{data}" if data else "")
            while run_id in frames:  # a repeat of the same seed
                run_id += "+"
            noise = np.random.default_rng(seed).normal(0, 1, y.shape)  # model=twin is model=good, seed for seed
            probs = (1 / (1 + np.exp(-(4 * (y - 0.5) + sd * noise)))).astype(np.float32).astype(np.float64)  # a run's
            scored = ["elsewhere.jpg", *files[1:]] if run_id == moved else files
            frames[run_id] = Predictions(CLASSES, scored, probs, probs >= 0.5, y.astype(np.int8), True).sorted()
            runs.append({"run_id": run_id, "params": {"seed": str(seed), "model.name": name, "optimizer.lr": "0.001",
                                                      "trainer.max_steps_per_epoch": "0", "data.num_val": str(n)},
                         "tags": {"overrides": f"seed={seed} model={name} trainer=smoke", "data.skipped_images": "0"},
                         "metrics": {"val/best_mAP": float(stats.weighted_map(probs, y)[0])},
                         "datasets": {"train": "t", "validation": data} if data else {}})
    monkeypatch.setattr(paired, "run_predictions", lambda uri, run_id, split: frames[run_id] if split == "val" else None)
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
    assert found.evaluated_on == "Welch's t-test of the mAP on the 300 validation images every run scored"


def welch(a, b):
    from scipy.stats import ttest_ind

    result = ttest_ind(a, b, equal_var=False)
    return result.pvalue, tuple(result.confidence_interval(0.95))


def test_a_clearly_worse_group_is_worse_and_an_equal_one_is_not_distinguishable(monkeypatch):
    """Welch's t-test over seeds of the mAP on the shared images, as scipy computes it from the same values."""
    runs = constructed(monkeypatch, {"good": 1.0, "twin": 1.0, "bad": 6.0})
    found = groups.compare_groups("unused", runs, n_resamples=500)
    t = found.table.set_index("group")
    best, other = found.table["group"][0], ({"model=good", "model=twin"} - {found.table["group"][0]}).pop()
    assert t.loc[best, "verdict"] == "best" and t.loc["model=bad", "verdict"] == "worse (p<0.05)"
    assert t.loc["model=bad", "difference"] > 0 and t.loc["model=bad", "diff_ci_low"] > 0
    assert t.loc[other, "verdict"] == "not distinguishable from best"
    assert t.loc[other, "diff_ci_low"] < 0 < t.loc[other, "diff_ci_high"]
    on_images = {g: t.loc[g, "values"] for g in t.index}  # the runs' own val mAP: the same images
    p, interval = welch(on_images[best], on_images["model=bad"])
    assert t.loc["model=bad", "p_value"] == pytest.approx(p, rel=1e-6)
    assert (t.loc["model=bad", "diff_ci_low"], t.loc["model=bad", "diff_ci_high"]) == pytest.approx(interval, abs=1e-6)


def test_runs_on_two_data_sets_are_never_grouped_or_paired(monkeypatch):
    """Same settings, other labels: the runs on data B (fewer) are their own group, set apart, untested; every value
    of data A's groups is computed against A's own labels (as if B's runs were not there)."""
    frames = {}
    b_runs = constructed(monkeypatch, {"good": 1.0}, seeds=(0, 1), frames=frames, data="B", label_seed=5)
    a_runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, frames=frames, data="A")
    for run in a_runs:
        run["start_time"] = 1  # B is newer: the data most runs share wins all the same
    found = groups.compare_groups("unused", a_runs + b_runs, n_resamples=200)
    t = found.table.set_index("group")
    assert list(t.index) == ["model=good data=A", "model=bad data=A", "model=good data=B"]
    assert t.loc["model=good data=B", "verdict"].startswith("set apart: scored on other images or labels")
    assert pd.isna(t.loc["model=good data=B", "p_value"]) and t.loc["model=good data=B", "n"] == 2
    assert set(t.loc["model=good data=B", "run_ids"].split()) == {r["run_id"] for r in b_runs}
    alone = groups.compare_groups("unused", a_runs, n_resamples=200).table.set_index("group")
    for column in ("eval_mAP", "difference", "diff_ci_low", "diff_ci_high", "p_value"):
        assert t.loc["model=bad data=A", column] == alone.loc["model=bad", column], column
    (note,) = [n for n in found.notes if n.startswith("set apart")]
    assert "2 run(s)" in note and "data=B" in note and "good-0-B" in note


def test_runs_of_an_older_version_on_other_images_are_set_apart_too(monkeypatch):
    """No digest logged: the ids and labels in predictions/val.csv tell the data apart."""
    runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, moved="bad-1")
    found = groups.compare_groups("unused", runs, n_resamples=200)
    t = found.table.set_index("group")
    moved = [g for g in t.index if t.loc[g, "run_ids"] == "bad-1"]
    assert len(moved) == 1
    assert t.loc[moved[0], "verdict"] == ("set apart: scored on other images or labels than the best group (300 "
                                          "validation images each)")
    main = t.loc[[g for g in t.index if g not in moved]]
    assert sorted(main["n"]) == [2, 3] and "validation images every run scored" in found.evaluated_on


def test_repeated_seeds_are_one_observation_each(monkeypatch):
    frames = {}
    runs = constructed(monkeypatch, {"good": 1.0, "bad": 3.0}, seeds=(0, 1), frames=frames)
    runs += constructed(monkeypatch, {"good": 1.0, "bad": 3.0}, seeds=(0, 1), frames=frames)  # seeds 0 0 1 1
    for i, run in enumerate(runs):
        run["metrics"]["val/best_mAP"] += 0.001 * i  # repeats differ a little (no bitwise determinism)
    found = groups.compare_groups("unused", runs, n_resamples=200)
    t = found.table.set_index("group")
    assert t["n"].tolist() == [2, 2] and t.loc["model=bad", "seeds"] == "0 1"
    per_seed = {s: np.mean([r["metrics"]["val/best_mAP"] for r in runs
                            if r["params"]["model.name"] == "bad" and r["params"]["seed"] == s]) for s in ("0", "1")}
    assert t.loc["model=bad", "values"] == pytest.approx([per_seed["0"], per_seed["1"]], rel=1e-12)
    assert t.loc["model=bad", "ci_low"] == pytest.approx(stats.seed_interval(list(per_seed.values())).ci_low)
    assert sum("4 runs of 2 seed(s)" in n and "n counts seeds" in n for n in found.notes) == 2


def test_precision_and_every_differing_setting_name_the_groups(monkeypatch):
    frames = {}
    runs = constructed(monkeypatch, {"a": 1.0, "b": 1.5}, seeds=(0, 1), frames=frames)
    for run in runs:
        p = run["params"]
        p |= {"precision": "float32", "dropout_value": "0.5" if p["model.name"] == "a" else "0.2",
              "model.weights_used": f"/weights/{p['model.name']}.pth", "device": "cpu"}
        if p["model.name"] == "b":
            p["optimizer.momentum"] = "0.9"  # a setting group a does not have: it follows from another one
    twin = [{**r, "run_id": r["run_id"] + "-bf16", "params": {**r["params"], "precision": "bfloat16",
                                                               "device": "cuda"}} for r in runs]
    for run in twin:
        run["metrics"] = dict(run["metrics"])
        frames[run["run_id"]] = frames[run["run_id"][:-len("-bf16")]]
    found = groups.compare_groups("unused", runs + twin, n_resamples=200)
    assert sorted(found.table["group"]) == [
        "model=a dropout_value=0.5 precision=bfloat16", "model=a dropout_value=0.5 precision=float32",
        "model=b dropout_value=0.2 precision=bfloat16", "model=b dropout_value=0.2 precision=float32"]
    assert found.table["n"].tolist() == [2, 2, 2, 2]


def test_one_seed_a_group_compares_the_runs_over_the_images_and_says_so(monkeypatch):
    runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, seeds=(0,))
    found = groups.compare_groups("unused", runs, n_resamples=200)
    assert found.table["ci_low"].isna().all() and found.table["n"].tolist() == [1, 1]
    assert found.table["verdict"].tolist() == ["best", "worse run (p<0.05, 1 seed)"]
    assert any("one seed" in note and "not which setting" in note for note in found.notes)
    unpaired = groups.compare_groups("unused", constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, seeds=(0,),
                                                           moved="bad-0"), n_resamples=200)
    assert unpaired.table["verdict"].tolist()[0] == ""  # nothing left to compare with
    assert unpaired.table["verdict"].tolist()[1].startswith("set apart: scored on other images")


def test_groups_are_ranked_on_the_images_the_test_used(monkeypatch):
    """The verdict's direction and the ranking come from the same probabilities: a group whose logged best val mAP is
    higher but which is worse on the shared images is not called best."""
    runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0})
    for run in runs:
        if run["params"]["model.name"] == "bad":
            run["metrics"]["val/best_mAP"] = 0.99  # e.g. chosen on other images than the ones the test pairs on
    found = groups.compare_groups("unused", runs, n_resamples=300)
    assert found.table["group"].tolist() == ["model=good", "model=bad"]
    t = found.table.set_index("group")
    assert t.loc["model=good", "eval_mAP"] > t.loc["model=bad", "eval_mAP"] and t.loc["model=bad", "difference"] > 0


def test_a_sweep_is_won_by_the_best_setting_on_average_not_by_its_luckiest_seed():
    """dropout=light has the single best run (0.70, seed 0) but the lower mean; heavy's seed 1 ran twice (0.64, 0.66:
    one observation, 0.65). What a sweep's parent is closed with (tracking.sweeps.end_sweep_parent)."""
    def run(i, dropout, seed, score):
        return {"run_id": f"r{i}", "name": f"dropout={dropout} seed={seed} smallcnn", "status": "FINISHED",
                "params": {"seed": str(seed), "dropout_value": {"light": "0.2", "heavy": "0.6"}[dropout]},
                "tags": {"overrides": f"dropout={dropout} seed={seed} trainer=smoke"},
                "metrics": {"val/best_mAP": score}, "datasets": {"validation": "v"}}

    runs = [run(0, "light", 0, 0.70), run(1, "light", 1, 0.52), run(2, "heavy", 0, 0.63), run(3, "heavy", 1, 0.64),
            run(4, "heavy", 1, 0.66), run(5, "heavy", 2, float("nan"))]  # no score: a run that failed
    ranked = groups.rank_settings(runs)
    assert [s.name for s in ranked] == ["dropout=heavy", "dropout=light"]
    assert ranked[0].seeds == ["0", "1"] and ranked[0].values == pytest.approx([0.63, 0.65])
    assert ranked[0].mean == pytest.approx(0.64) and ranked[1].mean == pytest.approx(0.61)
    (alone,) = groups.rank_settings(runs[:2])  # one setting: named by what its runs' names share
    assert alone.name == "dropout=light smallcnn"


def test_the_console_table_fits_120_characters_and_says_once_what_every_row_shares():
    from mlabel_exp.comparison.table import LEAST_NEEDED, console_table

    shared = "smallcnn trainer=smoke data.synthetic.num_images=80 data.synthetic.image_size=32 data.cache_dir=/x/y"
    table = pd.DataFrame({
        "run_id": [f"{i:032x}" for i in range(3)], "run_name": [f"dropout={d} {shared}" for d in ("0.2", "0.4", "0.6")],
        "model": ["smallcnn"] * 3, "dropout_value": [0.2, 0.4, 0.6], "optimizer": ["adamw"] * 3,
        "best_val_mAP": [0.61, 0.6, 0.55], **{c: [0.123456, 0.2, 0.3] for c in
                                              ("tuned_f1_micro", "tuned_f1_macro", "test_mAP", "test_f1_micro",
                                               "test_f1_macro", "train_time_s")}, "epochs": [2, 3, 4]})
    text = console_table(table)
    lines = text.splitlines()
    assert all(len(line) <= 120 for line in lines), text
    assert lines[0] == "same in every row: model=smallcnn, optimizer=adamw"
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header[:4] == ["run_id", "run_name", "dropout_value", "best_val_mAP"]
    assert lines[3].split("|")[2].strip() == "dropout=0.2"  # the words every run's name shares left out
    left_out = lines[-1].split(": ", 1)[1].split(", ")
    assert lines[-1].startswith("left out to fit the console (wide=true shows them)")
    assert set(left_out) <= set(LEAST_NEEDED) and set(left_out) | set(header) | {"model", "optimizer"} == set(table)
    wide = console_table(table, wide=True).splitlines()
    assert [c.strip() for c in wide[0].strip("|").split("|")] == list(table.columns)
    assert f"dropout=0.6 {shared}" in wide[4] and len(wide) == 2 + 3


def test_the_console_calls_each_group_by_a_label_and_a_legend_line_names_the_settings_that_differ():
    """compare's groups differ in many settings: each is a short label in the tables, the legend gives its settings in
    full (wrapped, never cut), and a run's row names its group's label."""
    from mlabel_exp.comparison.table import console_table, group_labels, groups_table, legend, run_labels

    names = ["dropout_value=0.5 trainer=smoke model.weights=/models/resnet18-f37072fd.pth optimizer.lr=0.001 "
             "weight_decay_value=0.0001 data.synthetic.num_images=80 precision=bfloat16",
             "dropout_value=0.1 trainer=default model.weights=imagenet optimizer.lr=0.01", "model=vgg16"]
    table = pd.DataFrame({c: [float("nan")] * 3 for c in groups.COLUMNS} | {
        "group": names, "verdict": ["best", "worse (p<0.05)", "not distinguishable from best"], "n": [3, 3, 2],
        "mean": [0.7, 0.6, 0.65], "seeds": ["0 1 2", "0 1 2", "0 1"], "run_ids": ["r0 r1 r2", "r3 r4 r5", "r6 r7"]})
    found = groups.Groups(table, "constructed", [])
    rows = console_table(groups_table(found, short=True)).splitlines()
    assert [row.split("|")[1].strip() for row in rows[2:]] == ["A", "B", "C"] and all(len(r) <= 120 for r in rows)
    lines = legend(found)
    assert all(len(line) <= 120 for line in lines) and lines[0].startswith("A: dropout_value=0.5 trainer=smoke")
    told = " ".join(lines).split()
    assert [told.index(label) for label in ("A:", "B:", "C:")] == sorted(told.index(label) for label in ("A:", "B:", "C:"))
    assert " ".join(told) == " ".join(f"{label}: {name}" for label, name in zip("ABC", names))  # each setting, in full
    assert run_labels(pd.DataFrame({"run_id": ["r6", "r0", "r4", "other"]}), found) == ["C", "A", "B", ""]
    assert group_labels(28)[:2] + group_labels(28)[-3:] == ["A", "B", "Z", "AA", "AB"]


# ------------------------------------------------------------------ what the data can support

def _tie(runs: list[dict], frames: dict, name: str) -> None:
    """Seed 1 of model=<name> scores exactly as its seed 0 (a deterministic setting, one run logged twice)."""
    by_id = {r["run_id"]: r for r in runs}
    frames[f"{name}-1"] = frames[f"{name}-0"]
    by_id[f"{name}-1"]["metrics"] = dict(by_id[f"{name}-0"]["metrics"])


def test_seeds_that_tie_exactly_get_no_t_test(monkeypatch):
    """Both groups' two seeds tie exactly (the audit's "worse (p<0.05)", p=0.0000, interval [0.6439, 0.6439]): no
    t-test. Over the images every run scored, the runs are compared as runs; without such images: cannot tell."""
    frames = {}
    runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, seeds=(0, 1), frames=frames)
    for name in ("good", "bad"):
        _tie(runs, frames, name)
    found = groups.compare_groups("unused", runs, n_resamples=300)
    t = found.table.set_index("group")
    assert t.loc["model=bad", "test"] == "paired bootstrap over images (no seed spread to test: the runs, not the settings)"
    assert t.loc["model=bad", "verdict"] == "worse run (p<0.05, runs over images)"
    assert t.loc["model=bad", "diff_ci_low"] < t.loc["model=bad", "diff_ci_high"]  # the images' noise, not zero width
    assert any(n.startswith("model=good, model=bad: the seeds score exactly alike") for n in found.notes)
    monkeypatch.setattr(paired, "run_predictions", lambda uri, run_id, split: None)  # no prediction files: no images
    t = groups.compare_groups("unused", runs, n_resamples=300).table.set_index("group")
    assert t.loc["model=bad", "verdict"] == ("cannot tell (the best group's 2 seeds score exactly alike: no seed "
                                             "spread to test against; and no images every run scored)")
    assert pd.isna(t.loc["model=bad", "p_value"]) and pd.isna(t.loc["model=bad", "diff_ci_low"])


def test_one_seed_against_one_or_several_gets_no_t_test(monkeypatch):
    """One seed has no spread: against three seeds the runs are compared over the images (no pooled t-test that
    borrows the other group's spread); one against one without shared images cannot be told apart."""
    frames = {}
    runs = constructed(monkeypatch, {"good": 1.0}, seeds=(0, 1, 2), frames=frames)
    runs += constructed(monkeypatch, {"bad": 6.0}, seeds=(0,), frames=frames)
    t = groups.compare_groups("unused", runs, n_resamples=300).table.set_index("group")
    assert t.loc["model=bad", "test"].startswith("paired bootstrap over images")
    assert t.loc["model=bad", "verdict"] == "worse run (p<0.05, runs over images)"
    single = constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, seeds=(0,))
    monkeypatch.setattr(paired, "run_predictions", lambda uri, run_id, split: None)
    t = groups.compare_groups("unused", single, n_resamples=300).table.set_index("group")
    assert t.loc["model=bad", "verdict"] == ("cannot tell (the best group has 1 seed: no seed spread to test against; "
                                             "and no images every run scored)")


def test_a_groups_interval_stays_inside_0_and_1_and_says_it_was_cut(monkeypatch):
    from scipy import stats as scipy_stats

    runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, seeds=(0, 1))
    for run, value in zip([r for r in runs if r["params"]["model.name"] == "bad"], (0.02, 0.12)):
        run["metrics"]["val/best_mAP"] = value  # two seeds far apart: the t-interval (12.7 standard errors) below 0
    found = groups.compare_groups("unused", runs, n_resamples=200)
    row = found.table.set_index("group").loc["model=bad"]
    low, high = scipy_stats.t.interval(0.95, 1, loc=0.07, scale=scipy_stats.sem([0.02, 0.12]))
    assert low < 0 < high < 1 and (row["ci_low"], row["ci_high"]) == pytest.approx((0.0, high), abs=1e-12)
    assert any(n.startswith("model=bad: its 95% t-interval over 2 seeds reached past 0 or 1 and is cut")
               for n in found.notes)


def test_runs_scored_on_a_few_batches_are_set_apart_from_runs_scored_on_the_whole_split(monkeypatch):
    """Five smoke runs (trainer.max_steps_per_epoch=2) scored on 8 of the 300 validation images, the data set's
    digest the same as the others': set apart (the runs on the most images are compared, however many the smoke runs
    are). A run with a step limit whose file holds the whole split is compared as it is."""
    frames = {}
    runs = constructed(monkeypatch, {"good": 1.0, "bad": 6.0}, frames=frames, data="V")
    smoke = constructed(monkeypatch, {"smoke": 1.0}, seeds=(0, 1, 2, 3, 4), frames=frames, data="V")
    capped = constructed(monkeypatch, {"capped": 1.0}, seeds=(0, 1), frames=frames, data="V")
    for run in smoke + capped:
        run["params"]["trainer.max_steps_per_epoch"] = "2"
    for run in smoke:
        p = frames[run["run_id"]]
        frames[run["run_id"]] = Predictions(p.classes, p.files[:8], p.probs[:8], p.labels[:8], p.targets[:8], True)
    found = groups.compare_groups("unused", runs + smoke + capped, n_resamples=200)
    t = found.table.set_index("group")
    (apart,) = [g for g in t.index if t.loc[g, "verdict"].startswith("set apart")]
    assert set(t.loc[apart, "run_ids"].split()) == {r["run_id"] for r in smoke}
    assert t.loc[apart, "verdict"] == "set apart: scored on 8 validation images; the best group on 300"
    assert "300 validation images every run scored" in found.evaluated_on
    assert not any(t.loc[g, "verdict"].startswith("set apart") for g in t.index if "capped" in g)
