"""A training run's report.html, built from the files its output folder holds (summary.json, per_class.csv,
thresholds.json, the figures, diagnostics/index.json): so that a later step that adds files to the folder (the
diagnostics) can build it again with ``write_run_report(out)`` and every part agrees with the files beside it."""

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
PARTS = {"val": "validation, best epoch", "tuned": "validation, thresholds tuned out of fold",
         "test": "test split (held out), best weights, thresholds tuned on validation"}


def headline(summary: dict) -> str:
    val, test = summary.get("val", {}), summary.get("test")
    words = [f"Best val mAP {val['mAP']:.4f} at epoch {val['best_epoch']} of {val['epochs']}"] if "mAP" in val else []
    if test:
        words.append(f"test mAP {test['mAP']:.4f}, F1 micro {test['f1_micro']:.4f} (held out)")
    tuned = summary.get("tuned")
    if tuned:
        words.append(f"tuned F1 macro {tuned['f1_macro']:.4f} (validation, out of fold)")
    return "; ".join(words) + "." if words else ""


def metrics_table(summary: dict):
    """One row per metric, one column per part (val, tuned, test) that the run has."""
    import pandas as pd

    columns = {}
    for part in PARTS:
        scores = {k: v for k, v in (summary.get(part) or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("best_epoch", "epochs")}
        if scores:
            columns[part] = scores
    if not columns:
        return None
    frame = pd.DataFrame(columns)
    return frame.rename_axis("metric").reset_index()


def sections(out: Path, summary: dict) -> list[report.Section]:
    import pandas as pd

    headline_items = []
    table = metrics_table(summary)
    if table is not None:
        what = "; ".join(f"{part}: {PARTS[part]}" for part in table.columns[1:])
        headline_items.append(report.Table(table, f"{what}. The same numbers as summary.json and the run's metrics."))
    pages = [report.Section("Metrics", headline_items)]
    pages.append(report.Section("Figures", [report.Figure(out / name, caption, title)
                                            for name, (title, caption) in FIGURES.items() if (out / name).is_file()]))
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
    diagnostics = report.diagnostics_section(out / "diagnostics")
    if diagnostics is not None:
        pages.append(diagnostics)
    return pages


def write_run_report(out: Path, title: str = "") -> Path:
    """report.html in the output folder ``out``, from the files there."""
    out = Path(out)
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return report.write(out / "report.html", title or f"Run: {out.name}", headline(summary), sections(out, summary),
                        meta=str(out))
