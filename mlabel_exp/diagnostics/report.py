"""A training run's report.html, built from the files its output folder holds (summary.json, per_class.csv,
thresholds.json, the figures, diagnostics/index.json): so that a later step that adds files to the folder (the
diagnostics, ``python -m mlabel_exp.diagnose``) can build it again with ``write_run_report(out)`` and every part agrees
with the files beside it.

Read at a glance: the headline and where the model fails first, a table of contents, the key figures, one metrics
table; calibration and confusion after; the error galleries and activation maps (a page of photographs per class)
folded, as thumbnails linked to their files."""

from __future__ import annotations

import json
from pathlib import Path

from mlabel_exp.render import page as report

FIGURES = {  # file in the output folder -> (title, caption)
    "curves.png": ("Curves", "Loss (train and validation) and validation mAP per epoch."),
    "per_class_ap.png": ("Per-class AP", "AP of each class on validation at the best epoch; the number beside a class "
                         "is its validation positives (images holding it)."),
    "pr_curves.png": ("Precision-recall", "Precision against recall of each class on validation at the best epoch."),
}
#: The columns of the metrics table: summary.json's parts. Validation's mAP (threshold-free) stands beside the figures
#: at the thresholds tuned out of fold ("tuned"): one column, as the numbers come from the same images and epoch.
PARTS = {"tuned": "the best epoch, thresholds tuned out of fold",
         "test": "the test split (held out), best weights, thresholds tuned on validation",
         "val_tta": "the best weights with flip TTA, F1 at 0.5",
         "test_tta": "the test split with flip TTA, tuned thresholds"}
COLUMN = {"tuned": "validation", "test": "test", "val_tta": "validation TTA", "test_tta": "test TTA"}
#: The ML-GCN names of metrics the table has under their own names: one row each, both names on it.
ALIASES = {"OP": "precision_micro", "OR": "recall_micro", "OF1": "f1_micro", "CP": "precision_macro",
           "CR": "recall_macro"}
NOT_METRICS = ("best_epoch", "epochs", "weights")
#: index.json entries folded, by the start of their file's name: pages of photographs, one per class
FOLDED = {"gallery_": "Error galleries", "activation_maps/": "Activation maps"}
THUMBNAIL_PX = 560
WORST = 3  # classes named in the headline and by diagnose
INTERVALS = "per_class_ap_val.png"  # the diagnostics' per-class AP of validation: a key figure


def headline(summary: dict) -> str:
    val, test = summary.get("val", {}), summary.get("test")
    words = [f"Best val mAP {val['mAP']:.4f} at epoch {val['best_epoch']} of {val['epochs']}"] if "mAP" in val else []
    if test:
        words.append(f"test mAP {test['mAP']:.4f}, F1 micro {test['f1_micro']:.4f} (held out)")
    tuned = summary.get("tuned")
    if tuned:
        words.append(f"tuned F1 macro {tuned['f1_macro']:.4f} (validation, out of fold)")
    return "; ".join(words) + "." if words else ""


def _scores(part: dict) -> dict:
    return {k: v for k, v in part.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS}


def metrics_table(summary: dict):
    """One row per metric (an ML-GCN alias on its twin's row), one column per part the run has (validation, test,
    TTA); None without any."""
    import pandas as pd

    columns = {}
    for part in PARTS:
        scores = _scores(summary.get(part) or {})
        if part == "tuned":  # validation: its mAP where thresholds were not tuned (a run without a tuned part)
            scores = {**_scores(summary.get("val") or {}), **scores}
        if scores:
            columns[COLUMN[part]] = scores
    if not columns:
        return None
    frame = pd.DataFrame(columns)
    twins = {a: b for a, b in ALIASES.items() if a in frame.index and b in frame.index}
    frame = frame.drop(index=list(twins))
    frame.index = [f"{k} ({', '.join(a for a, b in twins.items() if b == k)})" if k in twins.values() else k
                   for k in frame.index]
    return frame.rename_axis("metric").reset_index()


def worst_classes(folder: Path, split: str = "val", k: int = WORST) -> list[tuple[str, float, int]]:
    """The ``k`` classes of lowest AP on ``split`` (class, AP, positives), from diagnostics' per_class_ap_<split>.csv;
    a class without a positive has no AP and is not among them. Empty without the file."""
    import pandas as pd

    path = Path(folder) / f"per_class_ap_{split}.csv"
    if not path.is_file():
        return []
    table = pd.read_csv(path).dropna(subset=["AP"]).sort_values("AP", kind="stable").head(k)
    return [(str(c), float(ap), int(s)) for c, ap, s in zip(table["class"], table["AP"], table["support"])]


def weakest(worst: list[tuple[str, float, int]], split: str = "val") -> str:
    return (f"Weakest classes ({split} AP, positives): " + ", ".join(f"{c} {ap:.3f} ({n})" for c, ap, n in worst)
            if worst else "")


def _entries(folder: Path) -> list[tuple[dict, Path | None]]:
    index = folder / "index.json"
    if not index.is_file():
        return []
    out = []
    for entry in json.loads(index.read_text()):
        name = entry.get("image") or entry.get("table")
        out.append((entry, folder / str(name) if name else None))
    return out


def _item(entry: dict, file: Path | None, thumbnail: int = 0) -> report.Item:
    """An index.json entry as an item of the page; one whose file is missing is named as such, not a broken page."""
    import pandas as pd

    title, caption = str(entry.get("title", "")), str(entry.get("caption", ""))
    if file is None or not file.is_file():
        return f"{title}: {entry.get('image') or entry.get('table')} is missing"
    if "image" in entry:
        return report.Figure(file, caption, title, thumbnail)
    return report.Table(pd.read_csv(file), caption, title)


def diagnostics_sections(folder: Path, leave_out: frozenset = frozenset()) -> list[report.Section]:
    """The sections of ``folder``/index.json (written by the diagnostics: a JSON list of {"title", "image": a file
    under ``folder``, "caption"} or {"title", "table": a CSV file, "caption"}, in reading order): "Diagnostics", then
    the pages of photographs folded, one line per class (FOLDED); the images ``leave_out`` names are not shown (the
    page has them elsewhere). Empty sections without the file."""
    main, folded = report.Section("Diagnostics"), {start: [] for start in FOLDED}
    for entry, file in _entries(Path(folder)):
        if entry.get("image") in leave_out:
            continue
        start = next((s for s in FOLDED if str(entry.get("image", "")).startswith(s)), None)
        if start is None:
            main.items.append(_item(entry, file))
        else:
            item = _item(entry, file, THUMBNAIL_PX)
            if isinstance(item, report.Figure):
                item.title = ""  # the fold's line says it
            folded[start].append(report.Fold(str(entry.get("title", "")), [item]))
    return [main] + [report.Section(f"{FOLDED[s]} ({len(items)}, folded)", items) for s, items in folded.items()]


def sections(out: Path, summary: dict) -> list[report.Section]:
    """Key figures (curves, per-class AP: with intervals where the diagnostics drew them), metrics, per class and
    thresholds, more figures, the diagnostics."""
    import pandas as pd

    folder = out / "diagnostics"
    figures = {name: report.Figure(out / name, caption, title)
               for name, (title, caption) in FIGURES.items() if (out / name).is_file()}
    key = [figures.pop("curves.png", None), figures.pop("per_class_ap.png", None)]
    listed = {e.get("image"): (e, f) for e, f in _entries(folder)}
    moved = frozenset({INTERVALS} if INTERVALS in listed and listed[INTERVALS][1].is_file() else ())
    if moved:  # the same AP as per_class_ap.png, with its interval and chance level
        key[1] = _item(*listed[INTERVALS])
    pages = [report.Section("Key figures", [f for f in key if f is not None])]
    table = metrics_table(summary)
    if table is not None:
        what = "; ".join(f"{COLUMN[p]}: {w}" for p, w in PARTS.items() if COLUMN[p] in table.columns)
        pages.append(report.Section("Metrics", [report.Table(table, f"{what}. The same numbers as summary.json and "
                                                                   "the run's metrics.")]))
    items = []
    if (out / "per_class.csv").is_file():
        items.append(report.Table(pd.read_csv(out / "per_class.csv"), "per_class.csv: support = validation "
                                  "positives; F1, precision and recall at the tuned threshold are in-sample."))
    if (out / "thresholds.json").is_file():
        thresholds = json.loads((out / "thresholds.json").read_text())
        items.append(f"Thresholds (thresholds.json, tuned on validation at the best epoch): one global threshold "
                     f"{thresholds.get('global')}, and one per class (the threshold column above), which the "
                     "predictions' labels are decided at.")
    pages.append(report.Section("Per class and thresholds", items))
    pages.append(report.Section("More figures", list(figures.values())))
    pages += diagnostics_sections(folder, moved)
    return pages


def write_run_report(out: Path, title: str = "") -> Path:
    """report.html in the output folder ``out``, from the files there."""
    out = Path(out)
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    worst = weakest(worst_classes(out / "diagnostics"))
    verdict = " ".join(w for w in (headline(summary), f"{worst}." if worst else "") if w)
    return report.write(out / "report.html", title or f"Run: {out.name}", verdict, sections(out, summary),
                        meta=str(out))
