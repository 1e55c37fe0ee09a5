"""Compare finished runs side by side: the question after a sweep is "which setting won, and where", while the
MLflow UI shows runs one metric at a time. ``compare()`` selects the FINISHED training runs (of one sweep, matching a
filter), builds the table (comparison_table), the figures (the original project's curves of every run, per-class AP
as a heatmap, val mAP against the regularisation settings), the groups across seeds, writes them to a folder and logs
them to a new run tagged ``mlabel.kind=comparison``, which later comparisons leave out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlabel_exp.comparison import cost
from mlabel_exp.comparison import figures as plots
from mlabel_exp.comparison import report as comparison_report
from mlabel_exp.comparison.paired import PredictionFiles
from mlabel_exp.comparison.report import PerClass
from mlabel_exp.comparison.table import (REGULARISATION, SETTINGS, build_table, group_labels, groups_table, labelled,
                                         labels, run_labels, run_row, to_markdown, write_groups)
from mlabel_exp.comparison.table import legend as legend_lines
from mlabel_exp.config import project_root
from mlabel_exp.errors import ConfigError
from mlabel_exp.fsutil import write_atomic
from mlabel_exp.render.figures import save
from mlabel_exp.tracking import query, registry
from mlabel_exp.tracking.client import quiet_logger, resolve_uri
from mlabel_exp.tracking.run_ids import ended_last, sweep_parent_id
from mlabel_exp.tracking.runs import KIND_TAG, file_run

if TYPE_CHECKING:
    import pandas as pd

    from mlabel_exp.comparison.groups import Groups

log = logging.getLogger(__name__)

KIND = "comparison"
CURVES = ("train/loss", "val/loss", "val/mAP")


@dataclass
class Comparison:
    table: pd.DataFrame                  # one row per run, best val mAP first (COLUMNS)
    figures: dict[str, Path]             # file name -> path under out_dir
    out_dir: Path
    run_id: str | None                   # the comparison's own MLflow run (None with log_to_mlflow=False)
    notes: list[str] = field(default_factory=list)  # what was skipped, and why
    groups: Groups | None = None         # runs grouped by settings across seeds, with intervals and verdicts
    registered: tuple[str, int] | None = None  # (run id, model version) registered by register_best_as
    report: Path | None = None           # report.html: the verdict, groups, figures, per class and cost on one page
    cost: pd.DataFrame | None = None     # each group's best run: parameters, checkpoint size, inference speed


# ------------------------------------------------------------------ selecting runs

def describe(experiment: str, uri: str, sweep: str | None, filter_string: str | None) -> str:
    parts = [f"experiment={experiment!r}"]
    parts += [f"sweep={sweep!r}"] if sweep else []
    parts += [f"filter={filter_string!r}"] if filter_string else []
    return f"{', '.join(parts)} at {uri}"


def latest_sweep(runs: list[dict]) -> str | None:
    """The sweep_id of the sweep whose job finished last, as ``run=latest`` is the run that finished last: the sweep
    whose end printed "compare sweep=latest", even where a sweep started later ended before it. A sweep none of whose
    jobs finished counts only where no sweep has a finished job (the one started last: its runs are then listed)."""
    swept = [r for r in runs if r["tags"].get("sweep_id")]
    finished = [r for r in swept if r["status"] == "FINISHED"]
    if finished:
        return ended_last(finished)["tags"]["sweep_id"]
    return max(swept, key=lambda r: r["start_time"])["tags"]["sweep_id"] if swept else None


def select(runs: list[dict], sweep: str | None, where: str) -> tuple[list[dict], str | None, list[str]]:
    """The FINISHED runs (of ``sweep``, a sweep_id or 'latest'), comparison runs left out; the sweep_id; notes."""
    runs = [r for r in runs if KIND_TAG not in r["tags"]]  # training runs only: no comparisons, no sweep parents
    if sweep == "latest":
        sweep = latest_sweep(runs)
        if sweep is None:
            raise ConfigError(f"sweep='latest': no run has a sweep_id tag ({where}); only multirun jobs "
                              "(python -m mlabel_exp.run -m ...) have one: leave sweep= out to compare every run")
        folder = next(r["tags"].get("sweep_dir", sweep) for r in runs if r["tags"].get("sweep_id") == sweep)
        log.info("latest sweep: %s", folder)
    if sweep:
        runs = [r for r in runs if r["tags"].get("sweep_id") == sweep]
    finished = [r for r in runs if r["status"] == "FINISHED"]
    notes = []
    if len(finished) < len(runs):
        statuses = sorted({r["status"] for r in runs if r["status"] != "FINISHED"})
        counts = ", ".join(f"{s}: {sum(r['status'] == s for r in runs)}" for s in statuses)
        notes.append(f"skipped {len(runs) - len(finished)} run(s) that did not finish ({counts})")
    return finished, sweep, notes


def sweep_named(uri: str, experiment: str, sweep: str | None, runs: list[dict], filtered: bool, where: str) -> str | None:
    """The sweep_id ``sweep`` names: itself, 'latest', or the sweep of the parent run whose id starts with it (looked
    for among every run of the experiment where a filter left the parents out)."""
    if not sweep or sweep == "latest" or any(r["tags"].get("sweep_id") == sweep for r in runs):
        return sweep
    return sweep_parent_id(query.list_runs(uri, experiment) if filtered else runs, sweep, where) or sweep


def filter_hint(filter_string: str, runs: list[dict]) -> str:
    """For params.X / tags.X / metrics.X in a filter that no run has: the closest keys the runs do have."""
    import difflib
    import re

    known = {kind: sorted({k for r in runs for k in r[kind]}) for kind in ("params", "tags", "metrics")}
    hints = []
    for kind, key in re.findall(r"\b(params|tags|metrics)\.`?([A-Za-z0-9_./-]+?)`?\s*(?:=|!=|<|>|LIKE|ILIKE)",
                                filter_string):
        if key not in known[kind]:
            close = difflib.get_close_matches(key, known[kind], n=2, cutoff=0.3)
            close += [f"tags.{t}" for t in difflib.get_close_matches(key, known["tags"], n=1, cutoff=0.6)
                      if kind != "tags"]
            hints.append(f"no run has {kind}.{key}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    return "; " + "; ".join(hints) if hints else ""


def no_runs_error(all_runs: list[dict], skipped: list[str], where: str) -> ConfigError:
    sweeps = list(dict.fromkeys(r["tags"]["sweep_id"] for r in all_runs if r["tags"].get("sweep_id")))[:5]
    hint = f"; recent sweep ids: {', '.join(sweeps)}" if sweeps else ""
    why = f" ({skipped[0]})" if skipped else ""
    return ConfigError(f"no finished runs to compare for {where}{why}{hint}. Check experiment=, sweep=, filter= "
                       "and tracking.uri= (the store python -m mlabel_exp.run logged to)")


# ------------------------------------------------------------------ figures

def per_class_ap(uri: str, table: pd.DataFrame, names: list[str], frames=None) -> tuple[PerClass, list[str]]:
    """Runs x classes AP from each run's per_class.csv (runs without it are left out, noted), and the chance floor of
    the images each run actually scored (its predictions/val.csv, ``frames``): per class its positives over its known
    labels there, one row per set of images, the most images first."""
    import io

    import numpy as np
    import pandas as pd

    rows, ids, missing, sets = {}, [], [], {}
    for run_id, name in zip(table["run_id"], names):
        text = query.artifact_text(uri, run_id, "per_class.csv")
        if text is None:
            missing.append(name)
            continue
        rows[name] = pd.read_csv(io.StringIO(text)).set_index("class")["AP"]
        ids.append(run_id)
        scored = frames.get(run_id, "val") if frames is not None else None
        if scored is not None and scored.targets is not None:
            positive, known = (scored.targets == 1).sum(0), (scored.targets >= 0).sum(0)
            sets.setdefault((len(scored.files), tuple(positive), tuple(known)), scored.classes)
    notes = [f"per_class_ap.png: left out {len(missing)} run(s) without per_class.csv ({', '.join(missing)})"] \
        if missing else []
    if not sets:
        return PerClass(pd.DataFrame(rows).T if rows else None, ids), notes
    order = sorted(sets, key=lambda k: -k[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        chance = pd.DataFrame([np.where(np.array(k) > 0, np.array(p) / np.array(k), np.nan) for _, p, k in order],
                              columns=sets[order[0]], index=[f"random ranking ({n} images)" for n, _, _ in order])
    if len({n for n, _, _ in order}) > 1:
        notes.append("per_class_ap.png: the runs were scored on different validation images "
                     f"({', '.join(str(n) for n, _, _ in order)}): a chance row for each")
    positives = pd.Series(order[0][1], index=sets[order[0]])
    return PerClass(pd.DataFrame(rows).T, ids, positives, order[0][0], chance), notes


def swept_axes(table: pd.DataFrame, varying: list[str]) -> tuple[list[str], list[str]]:
    """The regularisation settings a sweep varied (runs equal in every other setting differ in it), and those that
    only follow another setting (each model's default dropout in an architecture sweep: confounded, no axis)."""
    swept, confounded = [], []
    for column in REGULARISATION:
        if column not in varying:
            continue
        others = [c for c in varying if c != column]
        groups = table.groupby(others, dropna=False) if others else [((), table)]
        (swept if any(g[column].nunique(dropna=True) > 1 for _, g in groups) else confounded).append(column)
    return swept, confounded


def make_figures(uri: str, table: pd.DataFrame, histories: dict[str, dict], out_dir: Path,
                 title: str, frames=None, found: Groups | None = None) -> tuple[dict[str, Path], list[str], PerClass]:
    """The runs' curves (coloured by group where ``found`` has several), per-class AP, regularisation."""
    names = labels(table)
    lengths = table["epochs"].dropna()
    if lengths.nunique() > 1:  # a 2-epoch smoke run beside a 28-epoch run says so
        title += f"  (runs differ in length: {int(lengths.min())}-{int(lengths.max())} epochs)"
    grouped = None
    if found is not None and len(found.table) > 1:
        legend = dict(zip(group_labels(len(found.table)), legend_lines(found, 10 ** 6)))
        grouped = dict(zip(names, (legend[g] for g in run_labels(table, found))))
    figures = {"model_comparison.png": save(
        plots.run_curves({n: histories[i] for n, i in zip(names, table["run_id"])}, title, grouped),
        out_dir / "model_comparison.png")}
    per_class, notes = per_class_ap(uri, table, names, frames)
    if per_class.ap is None:
        notes.append("per_class_ap.png skipped: no run has a per_class.csv artifact")
    else:
        figures["per_class_ap.png"] = save(plots.per_class_heatmap(
            per_class.ap, positives=per_class.positives, n_images=per_class.n_images, chance=per_class.chance),
            out_dir / "per_class_ap.png")
    varying = [c for c in SETTINGS if table[c].nunique(dropna=True) > 1]
    swept, confounded = swept_axes(table, varying)
    for column in confounded:
        others = ", ".join(c for c in varying if c != column)
        notes.append(f"regularisation.png: no panel for {column}: it never changes alone, only with {others} (e.g. "
                     "each model's default dropout), so its effect cannot be told apart")
    if not swept:
        notes.append("regularisation.png skipped: no run differs from another in dropout_value or weight_decay_value "
                     "alone")
    else:
        groups = varying + (["epochs"] if table["epochs"].nunique(dropna=True) > 1 else [])
        figures["regularisation.png"] = save(plots.regularisation(table, swept, groups),
                                              out_dir / "regularisation.png")
        constant = [c for c in REGULARISATION if c not in varying]
        if constant:
            notes.append(f"regularisation.png: no panel for {constant[0]} (the same in every run)")
    return figures, notes, per_class


# ------------------------------------------------------------------ the comparison

def default_out_dir() -> Path:
    return project_root() / "outputs" / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")


def comparisons_experiment(experiment: str) -> str:
    return f"{experiment}-comparisons"


def log_comparison(uri: str, experiment: str, table: pd.DataFrame, files: list[Path], sweep: str | None,
                   filter_string: str | None, sweep_name: str | None = None, summary: tuple[str, dict] = ("", {})) -> str:
    """A new run, tagged mlabel.kind=comparison, holding the table and figures, in the experiment's own comparisons
    experiment (``<experiment>-comparisons``): kept out of the training runs' table in the UI. ``summary``: its
    description (Markdown) and metrics."""
    name = f"comparison of {len(table)} runs" + (f" (sweep {sweep_name or sweep})" if sweep else "")
    note, metrics = summary
    tags = {KIND_TAG: KIND, **({"mlabel.compared_sweep": sweep} if sweep else {}),
            **({"mlflow.note.content": note} if note else {})}
    params = {"experiment": experiment, "sweep": sweep or "", "filter": filter_string or "",
              "num_runs": len(table), "run_ids": ",".join(table["run_id"])}
    return file_run(uri, comparisons_experiment(experiment), name, tags, params, files, metrics)


CHAMPION = "champion"  # the alias register_best= sets on the version it registers


def register_best(uri: str, found: Groups, runs: list[dict], name: str) -> tuple[str, int]:
    """Register the model of the best run of the best group as a new version of ``name``, aliased champion."""
    from mlabel_exp.comparison.groups import objective

    members = set(found.table["run_ids"].iloc[0].split())
    best = max((r for r in runs if r["run_id"] in members), key=lambda r: objective(r["metrics"]))
    return best["run_id"], registry.register_model(uri, f"runs:/{best['run_id']}/model", name, CHAMPION)


def cost_figure(uri: str, found: Groups, runs: list[dict], out_dir: Path) -> tuple[pd.DataFrame, dict, list[str]]:
    """Accuracy against cost (analysis.cost) for each group's best run: the table (cost.csv) and cost.png."""
    frame, notes = cost.cost_table(uri, comparison_report.best_runs(found, runs))
    frame = comparison_report.with_accuracy(frame, found)
    write_atomic(out_dir / "cost.csv", frame.to_csv(index=False))
    figures = {"cost.png": save(plots.cost(frame, labels=labelled(found)), out_dir / "cost.png")} if len(frame) else {}
    return frame, figures, notes


def _class_and_cost(uri: str, runs: list[dict], found: Groups, out_dir: Path, title: str, cost: bool,
                    figures: dict, notes: list[str], frames=None) -> tuple[pd.DataFrame | None, pd.DataFrame | None,
                                                                          list[Path]]:
    """Per class, each group against the best with paired intervals (class_differences.csv: the one table the figure
    and report.html show) and the images the two leading groups disagree on; accuracy against cost. Adds to
    ``figures`` and ``notes``; returns (cost table, class differences, files written)."""
    from mlabel_exp.comparison import class_differences

    class_figures, differences, class_notes = class_differences.for_comparison(uri, runs, found, out_dir, title,
                                                                               frames)
    figures |= class_figures
    notes += class_notes
    files = [out_dir / "class_differences.csv"] if differences is not None else []
    costs = None
    if cost:
        costs, cost_figures, cost_notes = cost_figure(uri, found, runs, out_dir)
        figures |= cost_figures
        notes += cost_notes
        files.append(out_dir / "cost.csv")
    return costs, differences, files


def compare(experiment: str = "mlabel-exp", *, tracking_uri: str | None = None, sweep: str | None = None,
            filter_string: str | None = None, out_dir: Path | None = None, log_to_mlflow: bool = True,
            register_best_as: str | None = None, cost: bool = True) -> Comparison:
    """Table and figures of the FINISHED runs of ``experiment`` (of one ``sweep``: see ``sweep_named``;
    matching ``filter_string``, an MLflow filter), written to ``out_dir`` with report.html and logged as a comparison
    run; ``register_best_as``: register the best run's model under that name, aliased champion; ``cost``: measure
    each group's best model (parameters, size, inference speed)."""
    from mlabel_exp.comparison import groups

    uri = resolve_uri(tracking_uri)
    where = describe(experiment, uri, sweep, filter_string)
    all_runs = query.list_runs(uri, experiment, filter_string)
    sweep = sweep_named(uri, experiment, sweep, all_runs, bool(filter_string), where)
    runs, sweep, notes = select(all_runs, sweep, where)
    if not runs:
        error = no_runs_error([r for r in all_runs if r["tags"].get(KIND_TAG) != KIND], notes, where)
        if filter_string:  # a misspelt key finds nothing without a word: name the keys the runs do have
            error = ConfigError(f"{error}{filter_hint(filter_string, query.list_runs(uri, experiment))}")
        raise error
    histories = {r["run_id"]: {k: query.metric_history(uri, r["run_id"], k) for k in (*CURVES, "time/epoch_s")}
                 for r in runs}
    table = build_table([run_row(r, histories[r["run_id"]]) for r in runs])

    out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "comparison.csv", table.to_csv(index=False))
    sweep_name = runs[0]["tags"].get("sweep_dir", sweep) if sweep else None  # its folder, not the mangled id
    title = f"{experiment}" + (f", sweep {sweep_name}" if sweep else "") + f": {len(table)} runs"
    frames = PredictionFiles(uri)  # each run's prediction files, read once for the figures, groups and classes
    found = groups.compare_groups(uri, runs, frames=frames)
    figures, figure_notes, per_class = make_figures(uri, table, histories, out_dir, title, frames, found)
    notes += figure_notes + found.notes
    write_groups(found, out_dir)
    write_atomic(out_dir / "comparison.md", f"# Comparison: {where}\n\n{to_markdown(table)}\n## Groups across "
                 f"{found.over} ({found.evaluated_on})\n\n{to_markdown(groups_table(found))}"
                 + "".join(f"\n- {note}" for note in found.notes))  # which runs were set apart, and why
    if len(found.table) > 1:
        figures["seed_intervals.png"] = save(plots.group_intervals(found.table, f"{title}\n{found.evaluated_on}",
                                                                   labels=group_labels(len(found.table))),
                                              out_dir / "seed_intervals.png")
    costs, differences, files = _class_and_cost(uri, runs, found, out_dir, title, cost, figures, notes, frames)
    files = [out_dir / "comparison.csv", out_dir / "comparison.md", out_dir / "groups.csv", *files]
    report = comparison_report.write(out_dir, f"Comparison: {title}", where, found, groups_table(found), figures,
                                     differences, costs, table, notes)
    run_id = None
    if log_to_mlflow:
        summary = (comparison_report.description(found, where, len(table)), comparison_report.metrics(found, len(table)))
        with quiet_logger():
            run_id = log_comparison(uri, experiment, table, [*files, report, *figures.values()], sweep, filter_string,
                                    sweep_name, summary)
    registered = register_best(uri, found, runs, register_best_as) if register_best_as else None
    return Comparison(table, figures, out_dir, run_id, notes, found, registered, report, costs)
