"""What a comparison says in one page (report.html) and in its MLflow run (description and metrics): the verdict in a
sentence, the groups, every figure compare made (whatever its name), per-class AP differences from the best group,
and accuracy against cost."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlabel_exp.comparison.table import group_labels
from mlabel_exp.render import page as report

if TYPE_CHECKING:
    import pandas as pd

    from mlabel_exp.comparison.groups import Groups


@dataclass
class PerClass:
    """compare's per-class AP of each run, as read from the runs' per_class.csv."""
    ap: pd.DataFrame | None              # runs (labelled as in the figures) x classes: each run's AP on validation
    run_ids: list[str]                   # the run of each row of ``ap``
    positives: pd.Series | None = None   # known positives of each class among the images of chance's first row
    n_images: int | None = None          # those images
    #: per set of validation images the runs scored (most images first): each class's prevalence there (positives
    #: over known labels), the AP of a random ranking
    chance: pd.DataFrame | None = None

#: Captions of the figures compare makes; a figure not named here is shown under its file name.
CAPTIONS = {
    "seed_intervals.png": "Each group's mean best val mAP over its seed runs (diamond), its 95% t-interval (bar, cut "
                          "at 0 and 1) and "
                          "each seed run (circle), with the verdict against the best group. One seed gives no "
                          "interval: the axis then spans 0-1, so that a gap without a measure of noise does not look "
                          "large.",
    "model_comparison.png": "Train loss, validation loss and validation mAP per epoch, one line per run.",
    "per_class_ap.png": "AP of each class (column) for each run (row) on validation at its best epoch; the column "
                        "label counts the class's validation positives, the last row its prevalence among the images "
                        "the runs scored (a row for each set where they differ): the AP a random ranking scores, the "
                        "floor to read each AP against.",
    "regularisation.png": "Best val mAP against each regularisation setting the sweep varied: mean over seeds "
                          "(diamond) with its 95% t-interval, seed runs as circles. A setting that only follows "
                          "another (each model's default dropout) has no panel: its effect is confounded.",
    "cost.png": "Accuracy against cost: mean best val mAP of each group (95% interval where 2+ seeds) against the "
                "inference time per image of its best run, measured on this machine with the run's own predictor.",
}


def verdict(found: Groups) -> str:
    """One sentence: which group is best and whether the others are told apart from it."""
    t = found.table
    if t.empty:
        return "No group to compare."
    best = t.iloc[0]
    n = f"over {int(best['n'])} folds" if found.over == "folds" else f"n={int(best['n'])}"
    lead = f"{best['group']} has the best mean best val mAP ({best['mean']:.4f}, {n})"
    if len(t) == 1:
        return f"One group ({int(best['n'])} run(s)): mean best val mAP {best['mean']:.4f}; nothing to compare it with."
    words = t.iloc[1:]["verdict"].astype(str)
    counts = {what: int(words.str.startswith(start).sum()) for start, what in (
        ("worse", "worse at p<0.05"), ("not distinguishable", "not distinguishable from it"),
        ("cannot tell", "with no verdict (one seed or no seed spread, and no shared images)"),
        ("set apart", "set apart (scored on other images)"))}
    if counts["worse at p<0.05"] == len(words):
        return f"{lead}; every other group is worse at p<0.05."
    if counts["not distinguishable from it"] == len(words):
        return (f"{lead}, but no other group is distinguishable from it ({len(words)} within the noise): the choice "
                "can rest on cost.")
    parts = [f"{n} {what}" for what, n in counts.items() if n]
    return f"{lead}; of the {len(words)} other groups, " + ", ".join(parts) + "."


def group_of_run(found: Groups) -> dict[str, str]:
    return {run_id: g for g, ids in zip(found.table["group"], found.table["run_ids"]) for run_id in str(ids).split()}


def class_table(differences: pd.DataFrame) -> pd.DataFrame:
    """class_differences.csv for reading: a row per class (its known positives and the best group's AP), a column per
    other group: its difference from the best, the interval and the verdict in one cell."""
    import pandas as pd

    first = differences.drop_duplicates("class").set_index("class")
    frame = pd.DataFrame({"class": first.index, "positives": first["positives"].to_numpy(),
                          f"AP: {first['versus'].iloc[0]} (best)": first["versus_AP"].to_numpy()})
    for group, rows in differences.groupby("group", sort=False):
        rows = rows.set_index("class").loc[frame["class"]]
        frame[f"{group} - best"] = [f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}] {v}" if d == d else v
                                    for d, lo, hi, v in zip(rows["difference"], rows["low"], rows["high"],
                                                            rows["verdict"])]
    return frame


def best_runs(found: Groups, runs: list[dict]) -> dict[str, dict]:
    """Each group's run with the best val mAP (the model a person would pick from it)."""
    from mlabel_exp.comparison.groups import objective

    by_id = {r["run_id"]: r for r in runs}
    picked = {}
    for group, ids in zip(found.table["group"], found.table["run_ids"]):
        members = [by_id[i] for i in str(ids).split() if i in by_id]
        if members:
            scores = [objective(r["metrics"]) for r in members]
            picked[group] = members[max(range(len(members)), key=lambda i: scores[i] if scores[i] == scores[i]
                                        else float("-inf"))]
    return picked


def with_accuracy(cost: pd.DataFrame, found: Groups) -> pd.DataFrame:
    """The cost table with each group's mean best val mAP and its interval (for cost.png and the page)."""
    accuracy = found.table.set_index("group")[["mean", "ci_low", "ci_high", "n"]]
    return cost.join(accuracy, on="group")


def cost_for_reading(cost: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({
        "group": cost["group"], "model": cost["model"], "mean best val mAP": cost["mean"], "n": cost["n"],
        "ms / image": cost["ms_per_image"], "images / s": cost["images_per_s"],
        "trainable params": cost["trainable_params"].map("{:,}".format),
        "total params": cost["total_params"].map("{:,}".format),
        "checkpoint MB": cost["checkpoint_bytes"] / 1e6, "device": cost["device"], "precision": cost["precision"],
        "batch": cost["batch_size"], "inputs": cost["inputs"], "run": cost["run_id"].str[:8]})


#: Figures of photographs: folded, as a thumbnail linked to the file
PHOTOS = ("disagreements.png",)
KEY_FIGURES = ("seed_intervals.png", "cost.png")
THUMBNAIL_PX = 560


def _figures(figures: dict[str, Path]) -> tuple[list[report.Item], list[report.Item], list[report.Item]]:
    """The key figures (seed intervals, cost), the other charts, and the pages of photographs (folded thumbnails)."""
    key = [report.Figure(figures[n], CAPTIONS.get(n, n), n) for n in KEY_FIGURES if n in figures]
    more = [report.Figure(p, CAPTIONS.get(n, n), n) for n, p in figures.items() if n not in KEY_FIGURES + PHOTOS]
    photos = [report.Fold(n, [report.Figure(figures[n], CAPTIONS.get(n, n), thumbnail=THUMBNAIL_PX)])
              for n in PHOTOS if n in figures]
    return key, more, photos


def sections(found: Groups, groups_frame: pd.DataFrame, figures: dict[str, Path], differences, cost, table,
             notes: list[str]) -> list[report.Section]:
    """The page's sections: the groups (labelled as on the console), key figures (seed intervals, cost), per class,
    cost, the other figures, the photographs and the runs folded, notes."""
    key, more, photos = _figures(figures)
    labelled = groups_frame.copy()
    labelled.insert(0, "label", group_labels(len(labelled)))
    pages = [report.Section(f"Groups across {found.over}", [report.Table(labelled, found.evaluated_on)]),
             report.Section("Key figures", key)]
    if differences is not None:
        pages.append(report.Section("Per-class AP: each group against the best", [report.Table(
            class_table(differences), f"Seed-mean AP of each group on the {differences.attrs['n_images']} "
            f"{differences.attrs['split']} images every compared run scored, minus the best group's, with a 95% "
            "paired bootstrap interval over those images and the verdict (wins or loses only where the interval "
            "excludes 0 and the class has enough positives): class_differences.csv, as class_differences.png draws "
            "it.")]))
    if cost is not None and len(cost):
        pages.append(report.Section("Accuracy against cost", [report.Table(
            cost_for_reading(cost), "Each group's best run: parameters (trainable with its model.trainable preset), "
            "the size of best.pt, and inference speed through the run's own predictor (its preprocessing, autocast "
            "precision and device where this machine has it) on one batch of its validation images after a warm-up, "
            "for about 1.5 s: a ranking on this machine, not a benchmark.")]))
    pages.append(report.Section("More figures", more))
    pages.append(report.Section("Images the leading groups disagree on (folded)", photos))
    runs = report.Table(table.assign(run_id=table["run_id"].str[:8]), "comparison.csv, best val mAP first.")
    pages.append(report.Section(f"Runs ({len(table)}, folded)", [report.Fold(f"the {len(table)} runs", [runs])]))
    pages.append(report.Section("Notes", list(notes)))
    return pages


def description(found: Groups, where: str, n_runs: int) -> str:
    """The comparison run's description (mlflow.note.content, Markdown): what was compared, the verdict, the groups
    by the names its metrics use (group_1 is the best)."""
    lines = [f"Compared **{n_runs} runs** ({where}) in **{len(found.table)} group(s)**.", "",
             f"**Verdict:** {verdict(found)}", "", f"Groups ({found.evaluated_on}):", "",
             "| metrics | group | n | mean best val mAP | verdict |", "|---|---|---:|---:|---|"]
    for i, row in enumerate(found.table.itertuples(index=False), start=1):
        lines.append(f"| group_{i} | {str(row.group).replace('|', '/')} | {row.n} | {row.mean:.4f} | {row.verdict} |")
    lines += ["", "The page with the figures, per-class differences and cost: the artifact report.html."]
    return "\n".join(lines)


def metrics(found: Groups, n_runs: int) -> dict[str, float]:
    """Single numbers for the comparison run: runs, groups, and per group (group_1: the best) its n, mean best val
    mAP and interval, and the p-value against the best where a test was made."""
    values = {"runs": float(n_runs), "groups": float(len(found.table))}
    for i, row in enumerate(found.table.itertuples(index=False), start=1):
        numbers = {"n": row.n, "mean_best_val_mAP": row.mean, "ci_low": row.ci_low, "ci_high": row.ci_high,
                   "p_value": row.p_value}
        values |= {f"group_{i}/{k}": float(v) for k, v in numbers.items() if v is not None and v == v}
    return values


def write(out_dir: Path, title: str, where: str, found: Groups, groups_frame, figures, differences, cost, table,
          notes) -> Path:
    return report.write(out_dir / "report.html", title, verdict(found),
                        sections(found, groups_frame, figures, differences, cost, table, notes), meta=where)
