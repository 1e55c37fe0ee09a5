"""The label check (``python -m mlabel_exp.labels run=<fold sweep>``): the (image, class) pairs whose given label is
most likely wrong, from a fold sweep's out-of-fold probabilities (comparison.folds: every image scored by the model
that did not train on it), flagged and ranked by confident learning (metrics.label_issues). Writes label_issues.csv
(rank order, with the line to change in the data set's own annotation files: data.formats.fixes) and
label_issues.html (each class's surest ones as thumbnails with the given and the suggested label), and logs both on
the sweep's parent run. It lives here, across runs: it reads a sweep's runs back from the store."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlabel_exp.comparison.compare import latest_sweep
from mlabel_exp.comparison.folds import OutOfFold, out_of_fold
from mlabel_exp.config import LabelsConfig, project_root, resolve_path
from mlabel_exp.data.formats.fixes import label_fixer
from mlabel_exp.data.images import load_image
from mlabel_exp.diagnostics.rerun import run_data
from mlabel_exp.errors import ConfigError
from mlabel_exp.fsutil import write_atomic
from mlabel_exp.metrics import stats
from mlabel_exp.metrics.label_issues import LabelIssues, find_label_issues
from mlabel_exp.render import page
from mlabel_exp.render.figures import clip, figure, save
from mlabel_exp.tracking import query
from mlabel_exp.tracking.client import resolve_uri
from mlabel_exp.tracking.run_ids import match_prefix, sweep_parent_id
from mlabel_exp.tracking.runs import KIND_TAG, log_files

log = logging.getLogger(__name__)

FOLDER = "labels"  # on the sweep's parent run
WORDS = {1: "present", 0: "absent"}


@dataclass
class LabelCheck:
    parent: str | None       # the sweep's parent run
    table: pd.DataFrame      # the flagged pairs in rank order (label_issues.csv)
    csv: Path
    page: Path
    summary: str             # one sentence: how many, of what
    logged: bool


def sweep_runs(uri: str, experiment: str, ref: str) -> tuple[str | None, list[dict]]:
    """(the sweep's parent run id, its training runs) for ``run=``: a parent's id or prefix, latest (the sweep whose
    job finished last), a sweep_id, or one of the sweep's runs."""
    runs = query.list_runs(uri, experiment)
    training = [r for r in runs if KIND_TAG not in r["tags"]]
    where = f"experiment {experiment!r} at {uri}"
    if ref == "latest":
        sweep = latest_sweep(training)
        if sweep is None:
            raise ConfigError(f"run=latest: no sweep in {where}; run the folds as one: python -m mlabel_exp.run -m "
                              "data.folds=5 data.fold=0,1,2,3,4")
    elif any(r["tags"].get("sweep_id") == ref for r in runs):
        sweep = ref
    else:
        sweep = sweep_parent_id(runs, ref, where) or match_prefix(training, ref, "run", where)["tags"].get("sweep_id")
        if not sweep:
            raise ConfigError(f"run={ref}: that run is not part of a sweep; give a fold sweep's parent run (the "
                              "sweep of python -m mlabel_exp.run -m data.folds=5 data.fold=0,1,2,3,4)")
    parents = [r["run_id"] for r in runs if r["tags"].get(KIND_TAG) == "sweep" and r["tags"].get("sweep_id") == sweep]
    return (parents[0] if parents else None), [r for r in training if r["tags"].get("sweep_id") == sweep]


def check_labels(cfg: LabelsConfig) -> LabelCheck:
    """Flag, rank, write and log (see the module)."""
    uri = resolve_uri(cfg.tracking.uri)
    parent, children = sweep_runs(uri, cfg.tracking.experiment, cfg.run)
    oof = out_of_fold(uri, children)
    issues = find_label_issues(oof.probs, oof.targets)
    data = run_data(uri, oof.run_ids[0])  # (data settings, index), None where the data set is not here
    table = issue_table(oof, issues, _fixer(data))
    out = resolve_path(cfg.out) if cfg.out else project_root() / "outputs" / "labels" / time.strftime(
        "%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    csv = write_atomic(out / "label_issues.csv", table.to_csv(index=False))
    missing = int((table["given"] == WORDS[0]).sum())
    known = int((oof.targets >= 0).sum())
    seeds = f", {oof.seeds} seeds a fold averaged" if oof.seeds > 1 else ""
    summary = (f"{len(table)} of {known} known labels flagged on {len(oof.files)} images ({oof.folds} folds{seeds}, "
               f"out-of-fold mAP {stats.weighted_map(oof.probs, oof.targets)[0]:.3f}): {missing} missing (the models "
               f"see the class), {len(table) - missing} given but absent to the models")
    html = gallery(out, oof, table, cfg.per_class, summary, data[1].image_dir if data else None)
    if cfg.log_to_run and parent:
        log_files(uri, parent, [csv, html], FOLDER)
    return LabelCheck(parent, table, csv, html, summary, bool(cfg.log_to_run and parent))


def _fixer(data):
    """fix(file, class, given) in the data set's own files, or a placeholder where its data is not here."""
    if data is None:
        return lambda file, cls, given: "(the data set is not on this machine: see the run's config.yaml)"
    data_cfg, index = data
    fix, row_of = label_fixer(data_cfg, index), {f: r for r, f in enumerate(index.files)}
    return lambda file, cls, given: fix(row_of[file], cls, given) if file in row_of else f"({file} is not in the data)"


def issue_table(oof: OutOfFold, issues: LabelIssues, fix) -> pd.DataFrame:
    """One row per flagged pair, surest error first: the image, class, given and suggested label, its out-of-fold
    probability, the class's threshold it crossed, the fold that scored it, and the change to make."""
    classes = np.asarray(oof.classes, dtype=object)
    files = [oof.files[r] for r in issues.row]
    crossed = np.where(issues.given == 1, 1 - issues.t_absent[issues.cls], issues.t_present[issues.cls])
    return pd.DataFrame({
        "rank": np.arange(1, len(issues) + 1), "file": files, "class": classes[issues.cls],
        "given": [WORDS[int(g)] for g in issues.given], "suggested": [WORDS[1 - int(g)] for g in issues.given],
        "probability": issues.prob, "threshold": crossed, "fold": oof.fold[issues.row],
        "fix": [fix(f, c, int(g)) for f, c, g in zip(files, classes[issues.cls], issues.given)]})


def gallery(out: Path, oof: OutOfFold, table: pd.DataFrame, per_class: int, summary: str,
            image_dir: Path | None) -> Path:
    """label_issues.html: per class (the class of the surest error first) a figure of its surest ``per_class`` pairs
    and their rows."""
    sections = []
    ordered = sorted(table.groupby("class", sort=False), key=lambda kv: int(kv[1]["rank"].min()))
    for i, (cls, rows) in enumerate(ordered):
        top = rows.head(per_class)
        png = save(_thumbnails(top, image_dir, cls), out / "label_issues" / f"{i:02d}_{_slug(cls)}.png", photos=True)
        shown = top[["rank", "file", "given", "suggested", "probability", "fold", "fix"]]
        sections.append(page.Section(f"{cls}: {len(rows)} flagged", [page.Figure(
            png, f"The {len(top)} surest of {len(rows)}: the label given, the one suggested, the out-of-fold "
            "probability of the class."), page.Table(shown, digits=3)]))
    if not sections:
        sections.append(page.Section("Nothing flagged", ["No given label disagrees with the out-of-fold "
                                                         "probabilities by confident learning's thresholds."]))
    sections.append(page.Section("How", [
        f"Every image was scored by the model of the fold that held it out ({oof.folds} folds). A label is flagged "
        "where its class's probability crosses the class's own threshold: the mean probability over the images given "
        "the label (for a missing label), or the mean over those not given it (for a wrong one); ranked by the "
        "probability of the label given, lowest first. label_issues.csv holds every flagged pair and the line to "
        "change; a flagged label is a candidate to look at, not a verdict."]))
    return page.write(out / "label_issues.html", "Labels most likely wrong", summary, sections,
                      meta=f"setting: {oof.setting}")


def _thumbnails(rows: pd.DataFrame, image_dir: Path | None, cls: str):
    """The pairs as thumbnails, four a row, each titled with its file, given -> suggested and the probability."""
    cols = min(4, len(rows))
    n_rows = -(-len(rows) // cols)
    height = 3.3 * n_rows + 0.5  # each row: a thumbnail under its three-line title; 0.5 in: the heading
    fig, axes = figure(n_rows, cols, figsize=(3.0 * cols, height), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 1.1 / height, wspace=0.1, hspace=0.55 / 2.8)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows.to_dict("records")):
        pixels = _thumbnail(image_dir / row["file"] if image_dir is not None else None)
        if pixels is None:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", fontsize=9, transform=ax.transAxes)
        else:
            ax.imshow(pixels)
        ax.set_title(f"#{row['rank']} {clip(row['file'], 30, keep='tail')}\ngiven {row['given']}, suggested "
                     f"{row['suggested']}\np({clip(cls, 18)}) = {row['probability']:.3f}", fontsize=8.5)
    fig.suptitle(f"{cls}: the labels most likely wrong", fontsize=10, y=1 - 0.1 / height, va="top")
    return fig


def _thumbnail(path: Path | None, size: int = 160):
    from PIL import Image

    if path is None or not path.is_file():
        return None
    try:
        image = load_image(path)
    except Exception:  # noqa: BLE001 - an unreadable image costs its thumbnail, not the page
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:60] or "class"
