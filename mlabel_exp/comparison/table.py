"""The comparison table: one row per run (its settings and figures), best val mAP first; as Markdown, and the
groups across seeds as a table for reading."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlabel_exp.fsutil import write_atomic

if TYPE_CHECKING:
    import pandas as pd

    from mlabel_exp.comparison.groups import Groups

REGULARISATION = ("dropout_value", "weight_decay_value")
SETTINGS = ("model", *REGULARISATION, "optimizer", "lr", "trainable")  # what a sweep varies
TEST_COLUMNS = ["test_mAP", "test_f1_micro", "test_f1_macro"]  # shown when a compared run has a test split
COLUMNS = ["run_id", "run_name", *SETTINGS, "seed", "best_epoch", "best_val_mAP", "tuned_f1_micro", "tuned_f1_macro",
           "train_time_s", "epochs"]


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def run_row(run: dict, histories: dict[str, list[tuple[int, float]]]) -> dict:
    from mlabel_exp.comparison.groups import objective

    p, m = run["params"], run["metrics"]
    epochs = histories.get("val/mAP") or histories.get("train/loss") or []
    return {
        "run_id": run["run_id"], "run_name": run["name"], "model": run["tags"].get("model", p.get("model.name")),
        "dropout_value": _float(p.get("dropout_value")), "weight_decay_value": _float(p.get("weight_decay_value")),
        "optimizer": p.get("optimizer.name"), "lr": _float(p.get("optimizer.lr")), "trainable": p.get("model.trainable"),
        "seed": p.get("seed"),
        "best_epoch": m.get("val/best_epoch", m.get("best/epoch")), "best_val_mAP": objective(m),
        "tuned_f1_micro": m.get("tuned/f1_micro", float("nan")), "tuned_f1_macro": m.get("tuned/f1_macro", float("nan")),
        **{c: m.get(c.replace("test_", "test/"), float("nan")) for c in TEST_COLUMNS},
        "train_time_s": sum(v for _, v in histories.get("time/epoch_s", [])), "epochs": len(epochs),
    }


def build_table(rows: list[dict]) -> pd.DataFrame:
    import pandas as pd

    with_test = any(pd.notna(r[c]) for r in rows for c in TEST_COLUMNS)  # a compared run was scored on a test split
    table = pd.DataFrame(rows, columns=COLUMNS[:-2] + TEST_COLUMNS * with_test + COLUMNS[-2:])
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    table["epochs"] = table["epochs"].astype("Int64")
    return table.sort_values("best_val_mAP", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def _cell(column: str, value) -> str:
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if column == "run_id":
        return str(value)[:8]
    if isinstance(value, float):
        if column == "train_time_s":
            return f"{value:.1f}"
        return f"{value:.4g}" if column in ("lr", *REGULARISATION) else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs tabulate, not a dependency); run ids shortened to 8."""
    import pandas as pd

    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    lines = ["| " + " | ".join(table.columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(c, v) for c, v in zip(table.columns, row)) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def labels(table: pd.DataFrame) -> list[str]:
    """Run names for legends, without the words every name shares (what tells runs apart, not what they share),
    with a short run id where a name repeats."""
    words = [str(n).split() for n in table["run_name"].fillna("")]
    common = set.intersection(*(set(w) for w in words)) if len(words) > 1 else set()
    names = [" ".join(w for w in ws if w not in common) or " ".join(ws) for ws in words]
    return [f"{n} ({i[:6]})" if names.count(n) > 1 or not n else n for n, i in zip(names, table["run_id"])]


def group_labels(n: int) -> list[str]:
    """Short labels of ``n`` groups in table order (best first): A, B, ..., Z, AA, AB, ...: what the console and the
    figures call a group, beside a legend that names its settings (``legend``)."""
    labels = []
    for i in range(1, n + 1):
        label = ""
        while i:
            i, r = divmod(i - 1, 26)
            label = chr(ord("A") + r) + label
        labels.append(label)
    return labels


def labelled(found: Groups) -> dict[str, str]:
    """Group name (the settings that differ between the groups) -> its short label."""
    return dict(zip(found.table["group"], group_labels(len(found.table))))


def legend(found: Groups, width: int | None = None) -> list[str]:
    """One line per group (wrapped at ``width``, default the console's): its label, then the settings that tell it
    from the other groups."""
    import textwrap

    return [line for name, label in labelled(found).items()
            for line in textwrap.wrap(f"{label}: {name}", width or CONSOLE_WIDTH, break_on_hyphens=False,
                                      subsequent_indent=" " * (len(label) + 2), break_long_words=False)]


def run_labels(table: pd.DataFrame, found: Groups) -> list[str]:
    """The short label of each run's group, in the order of ``table``'s rows ('' for a run in no group)."""
    label = labelled(found)
    of_run = {run_id: label[g] for g, ids in zip(found.table["group"], found.table["run_ids"])
              for run_id in str(ids).split()}
    return [of_run.get(r, "") for r in table["run_id"]]


def groups_table(found: Groups, short: bool = False) -> pd.DataFrame:
    """The groups for reading: intervals as [low, high]. mean/std/95% CI: best val mAP over seeds; mAP (paired images)
    and the difference: on the images the paired test used (found.evaluated_on). ``short``: each group by its label
    (``legend`` names the settings)."""
    import pandas as pd

    t = found.table

    def interval(low, high):
        return "" if low is None or low != low else f"[{low:.4f}, {high:.4f}]"

    return pd.DataFrame({
        "group": group_labels(len(t)) if short else t["group"], "verdict": t["verdict"], "n": t["n"],
        "mean": t["mean"], "std": t["std"],
        "95% CI": [interval(lo, hi) for lo, hi in zip(t["ci_low"], t["ci_high"])],
        "mAP (paired images)": t["eval_mAP"], "best - this": t["difference"], "95% CI of difference": [interval(lo, hi) for lo, hi in
                                                                 zip(t["diff_ci_low"], t["diff_ci_high"])],
        "p": t["p_value"], "seeds": t["seeds"]})


def write_groups(found: Groups, out_dir: Path) -> None:
    plain = found.table.assign(values=[" ".join(repr(float(v)) for v in vs) for vs in found.table["values"]])
    write_atomic(out_dir / "groups.csv", plain.to_csv(index=False))


# ------------------------------------------------------------------ the console

#: Kept however alike the rows: what a row is and what it scored.
KEEP = ("run_id", "run_name", "group", "verdict", "best_val_mAP", "mean")
#: Left out first (from the left of this list) when a table is wider than the console.
LEAST_NEEDED = ("epochs", "train_time_s", "tuned_f1_macro", "best_epoch", "seeds", "std", "95% CI",
                "mAP (paired images)", "trainable", "lr", "tuned_f1_micro", "test_f1_macro", "test_f1_micro")
CONSOLE_WIDTH = 120
COMFORTABLE_TEXT = 40  # a name column is cut to this before any column is left out
NARROWEST_TEXT = 16  # and no narrower than this


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def console_table(table: pd.DataFrame, width: int = CONSOLE_WIDTH, wide: bool = False) -> str:
    """A table for the terminal: columns equal in every row said once above it, run names without the words every
    run's name shares, then the longest names cut and the least needed columns left out until it fits ``width`` (said
    below it); ``wide``: every column in full. Cells as in the Markdown file, padded to line up."""
    import pandas as pd

    cells = {c: [_cell(c, v) for v in table[c]] for c in table.columns}
    above, below = [], []
    if len(table) > 1 and not wide:
        same = [c for c in cells if c not in KEEP and len(set(cells[c])) == 1]
        above += [f"{c}={cells[c][0]}" for c in same if cells[c][0]]
        cells = {c: v for c, v in cells.items() if c not in same}
        if "run_name" in cells:  # what tells the runs apart (run_id is beside it)
            words = [n.split() for n in cells["run_name"]]
            common = set.intersection(*(set(w) for w in words))
            cells["run_name"] = [" ".join(w for w in ws if w not in common) for ws in words]

    def line_width() -> int:
        return sum(max(len(c), *map(len, v)) + 3 for c, v in cells.items()) + 1

    def cut_names(narrowest: int) -> None:
        for column in ("run_name", "group", "seeds", "verdict"):
            if column in cells and line_width() > width:
                room = max(narrowest, max(map(len, cells[column])) - (line_width() - width))
                cells[column] = [_cut(v, room) for v in cells[column]]

    if not wide:  # names to a readable width, then the least needed columns out, then the names shorter still
        cut_names(COMFORTABLE_TEXT)
        for column in LEAST_NEEDED:
            if column in cells and line_width() > width:
                del cells[column]
                below.append(column)
        cut_names(NARROWEST_TEXT)
    widths = {c: max(len(c), *map(len, v)) for c, v in cells.items()}
    numeric = {c: c in table.columns and pd.api.types.is_numeric_dtype(table[c]) for c in cells}

    def row(values) -> str:
        return "| " + " | ".join(v.rjust(widths[c]) if numeric[c] else v.ljust(widths[c])
                                 for c, v in zip(cells, values)) + " |"

    lines = _wrapped("same in every row: ", above, width) if above else []
    lines += [row(cells), "|" + "|".join("-" * (widths[c] + 1) + (":" if numeric[c] else "-") for c in cells) + "|"]
    lines += [row(values) for values in zip(*cells.values())]
    if below:
        lines += _wrapped("left out to fit the console (wide=true shows them): ", below, width)
    return "\n".join(lines)


def _wrapped(lead: str, words: list[str], width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(lead + ", ".join(words), width, subsequent_indent="  ", break_on_hyphens=False)
