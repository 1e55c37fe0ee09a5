"""Compare finished runs side by side: ``python -m mlabel_exp.compare [--sweep latest] [--filter ...]``.

Why: the MLflow UI shows runs one metric at a time, while the question after a sweep is "which
setting won, and where": one table sorted by best val mAP and three figures (the original project's
curves of every run, per-class AP as a heatmap, val mAP against the regularisation settings).
Runs are read through tracking.query (the tracking package is the only mlflow importer); the results go to
``outputs/compare/<time>`` and to a new run tagged ``mlabel.kind=comparison``, which later
comparisons leave out. ``compare()`` is the plain function; ``main`` is its command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlabel_exp.tracking import query, registry
from mlabel_exp.tracking.client import quiet_logger, resolve_uri
from mlabel_exp.tracking.runs import KIND_TAG, file_run
from mlabel_exp.config import ConfigError, project_root

if TYPE_CHECKING:
    import pandas as pd

    from mlabel_exp.analysis.groups import Groups

log = logging.getLogger(__name__)

KIND = "comparison"
CURVES = ("train/loss", "val/loss", "val/mAP")
REGULARISATION = ("dropout_value", "weight_decay_value")
SETTINGS = ("model", *REGULARISATION, "optimizer", "lr", "trainable")  # what a sweep varies
TEST_COLUMNS = ["test_mAP", "test_f1_micro", "test_f1_macro"]  # shown when a compared run has a test split
COLUMNS = ["run_id", "run_name", *SETTINGS, "seed", "best_epoch", "best_val_mAP", "tuned_f1_micro", "tuned_f1_macro",
           "train_time_s", "epochs"]


@dataclass
class Comparison:
    table: pd.DataFrame                  # one row per run, best val mAP first (COLUMNS)
    figures: dict[str, Path]             # file name -> path under out_dir
    out_dir: Path
    run_id: str | None                   # the comparison's own MLflow run (None with log_to_mlflow=False)
    notes: list[str] = field(default_factory=list)  # what was skipped, and why
    groups: Groups | None = None         # runs grouped by settings across seeds, with intervals and verdicts
    registered: tuple[str, int] | None = None  # (run id, model version) registered by register_best_as


# ------------------------------------------------------------------ selecting runs

def describe(experiment: str, uri: str, sweep: str | None, filter_string: str | None) -> str:
    parts = [f"experiment={experiment!r}"]
    parts += [f"sweep={sweep!r}"] if sweep else []
    parts += [f"filter={filter_string!r}"] if filter_string else []
    return f"{', '.join(parts)} at {uri}"


def latest_sweep(runs: list[dict]) -> str | None:
    """The sweep_id of the most recent run that has one."""
    swept = [r for r in runs if r["tags"].get("sweep_id")]
    return max(swept, key=lambda r: r["start_time"])["tags"]["sweep_id"] if swept else None


def select(runs: list[dict], sweep: str | None, where: str) -> tuple[list[dict], str | None, list[str]]:
    """The FINISHED runs (of ``sweep``, a sweep_id or 'latest'), comparison runs left out; the sweep_id; notes."""
    runs = [r for r in runs if KIND_TAG not in r["tags"]]  # training runs only: no comparisons, no sweep parents
    if sweep == "latest":
        sweep = latest_sweep(runs)
        if sweep is None:
            raise ConfigError(f"sweep='latest': no run has a sweep_id tag ({where}); only multirun jobs "
                              "(python -m mlabel_exp.run -m ...) have one: leave --sweep out to compare every run")
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
    return ConfigError(f"no finished runs to compare for {where}{why}{hint}. Check --experiment, --sweep, --filter "
                       "and --tracking-uri (the store python -m mlabel_exp.run logged to)")


# ------------------------------------------------------------------ the table

def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def run_row(run: dict, histories: dict[str, list[tuple[int, float]]]) -> dict:
    from mlabel_exp.analysis.groups import objective

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


# ------------------------------------------------------------------ figures

def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def per_class_ap(uri: str, table: pd.DataFrame, names: list[str]) -> tuple[pd.DataFrame | None, list[str]]:
    """Runs x classes AP from each run's per_class.csv; runs without the file are left out (noted)."""
    import io

    import pandas as pd

    rows, missing = {}, []
    for run_id, name in zip(table["run_id"], names):
        text = query.artifact_text(uri, run_id, "per_class.csv")
        if text is None:
            missing.append(name)
            continue
        per_class = pd.read_csv(io.StringIO(text))
        rows[name] = per_class.set_index("class")["AP"]
    notes = [f"per_class_ap.png: left out {len(missing)} run(s) without per_class.csv ({', '.join(missing)})"] \
        if missing else []
    return (pd.DataFrame(rows).T if rows else None), notes


def make_figures(uri: str, table: pd.DataFrame, histories: dict[str, dict], out_dir: Path,
                 title: str) -> tuple[dict[str, Path], list[str]]:
    from mlabel_exp.analysis import figures as plots

    names = labels(table)
    lengths = table["epochs"].dropna()
    if lengths.nunique() > 1:  # a 2-epoch smoke run beside a 28-epoch run says so
        title += f"  (runs differ in length: {int(lengths.min())}-{int(lengths.max())} epochs)"
    figures = {"model_comparison.png": _save(
        plots.run_curves({n: histories[i] for n, i in zip(names, table["run_id"])}, title),
        out_dir / "model_comparison.png")}
    ap, notes = per_class_ap(uri, table, names)
    if ap is None:
        notes.append("per_class_ap.png skipped: no run has a per_class.csv artifact")
    else:
        figures["per_class_ap.png"] = _save(plots.per_class_heatmap(ap), out_dir / "per_class_ap.png")
    varying = [c for c in SETTINGS if table[c].nunique(dropna=True) > 1]
    swept = [c for c in REGULARISATION if c in varying]
    constant = [c for c in REGULARISATION if c not in varying]
    if not swept:
        notes.append("regularisation.png skipped: dropout_value and weight_decay_value are the same in every run")
    else:
        groups = varying + (["epochs"] if table["epochs"].nunique(dropna=True) > 1 else [])
        figures["regularisation.png"] = _save(plots.regularisation(table, swept, groups),
                                              out_dir / "regularisation.png")
        if constant:
            notes.append(f"regularisation.png: no panel for {constant[0]} (the same in every run)")
    return figures, notes


# ------------------------------------------------------------------ groups across seeds

def groups_table(found: Groups) -> pd.DataFrame:
    """The groups for reading: intervals as [low, high]. mean/std/95% CI: best val mAP over seeds; mAP (paired images)
    and the difference: on the images the paired test used (found.evaluated_on)."""
    import pandas as pd

    t = found.table

    def interval(low, high):
        return "" if low is None or low != low else f"[{low:.4f}, {high:.4f}]"

    return pd.DataFrame({
        "group": t["group"], "verdict": t["verdict"], "n": t["n"], "mean": t["mean"], "std": t["std"],
        "95% CI": [interval(lo, hi) for lo, hi in zip(t["ci_low"], t["ci_high"])],
        "mAP (paired images)": t["eval_mAP"], "best - this": t["difference"], "95% CI of difference": [interval(lo, hi) for lo, hi in
                                                                 zip(t["diff_ci_low"], t["diff_ci_high"])],
        "p": t["p_value"], "seeds": t["seeds"]})


def _write_groups(found: Groups, out_dir: Path) -> None:
    from mlabel_exp.fsutil import write_atomic

    plain = found.table.assign(values=[" ".join(repr(float(v)) for v in vs) for vs in found.table["values"]])
    write_atomic(out_dir / "groups.csv", plain.to_csv(index=False))


# ------------------------------------------------------------------ the comparison

def default_out_dir() -> Path:
    return project_root() / "outputs" / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")


def comparisons_experiment(experiment: str) -> str:
    return f"{experiment}-comparisons"


def log_comparison(uri: str, experiment: str, table: pd.DataFrame, files: list[Path], sweep: str | None,
                   filter_string: str | None, sweep_name: str | None = None) -> str:
    """A new run, tagged mlabel.kind=comparison, holding the table and figures, in the experiment's own comparisons
    experiment (``<experiment>-comparisons``): kept out of the training runs' table in the UI."""
    name = f"comparison of {len(table)} runs" + (f" (sweep {sweep_name or sweep})" if sweep else "")
    tags = {KIND_TAG: KIND, **({"mlabel.compared_sweep": sweep} if sweep else {})}
    params = {"experiment": experiment, "sweep": sweep or "", "filter": filter_string or "",
              "num_runs": len(table), "run_ids": ",".join(table["run_id"])}
    return file_run(uri, comparisons_experiment(experiment), name, tags, params, files)


CHAMPION = "champion"  # the alias --register-best sets on the version it registers


def register_best(uri: str, found: Groups, runs: list[dict], name: str) -> tuple[str, int]:
    """Register the model of the best run of the best group as a new version of ``name``, aliased champion."""
    from mlabel_exp.analysis.groups import objective

    members = set(found.table["run_ids"].iloc[0].split())
    best = max((r for r in runs if r["run_id"] in members), key=lambda r: objective(r["metrics"]))
    return best["run_id"], registry.register_model(uri, f"runs:/{best['run_id']}/model", name, CHAMPION)


def compare(experiment: str = "mlabel-exp", *, tracking_uri: str | None = None, sweep: str | None = None,
            filter_string: str | None = None, out_dir: Path | None = None, log_to_mlflow: bool = True,
            register_best_as: str | None = None) -> Comparison:
    """Table and figures of the FINISHED runs of ``experiment`` (of one ``sweep``: a sweep_id or 'latest';
    matching ``filter_string``, an MLflow filter), written to ``out_dir`` and logged as a comparison run;
    ``register_best_as``: register the best run's model under that name, aliased champion."""
    from mlabel_exp.analysis import groups
    from mlabel_exp.analysis import figures as plots
    from mlabel_exp.fsutil import write_atomic

    uri = resolve_uri(tracking_uri)
    where = describe(experiment, uri, sweep, filter_string)
    all_runs = query.list_runs(uri, experiment, filter_string)
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
    figures, figure_notes = make_figures(uri, table, histories, out_dir, title)
    notes += figure_notes
    found = groups.compare_groups(uri, runs)
    notes += found.notes
    _write_groups(found, out_dir)
    write_atomic(out_dir / "comparison.md", f"# Comparison: {where}\n\n{to_markdown(table)}\n## Groups across seeds "
                 f"({found.evaluated_on})\n\n{to_markdown(groups_table(found))}")
    if len(found.table) > 1:
        figures["seed_intervals.png"] = _save(plots.group_intervals(found.table, f"{title}\n{found.evaluated_on}"),
                                              out_dir / "seed_intervals.png")
    run_id = None
    if log_to_mlflow:
        files = [out_dir / "comparison.csv", out_dir / "comparison.md", out_dir / "groups.csv", *figures.values()]
        with quiet_logger():
            run_id = log_comparison(uri, experiment, table, files, sweep, filter_string, sweep_name)
    registered = register_best(uri, found, runs, register_best_as) if register_best_as else None
    return Comparison(table, figures, out_dir, run_id, notes, found, registered)


# ------------------------------------------------------------------ command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mlabel_exp.compare",
        description="Compare the finished runs of an experiment: a table sorted by best val mAP (comparison.csv, "
                    "comparison.md), model_comparison.png, per_class_ap.png and regularisation.png, logged to a new "
                    "MLflow run tagged mlabel.kind=comparison.")
    p.add_argument("--experiment", default="mlabel-exp", help="MLflow experiment (tracking.experiment; default %(default)s)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (tracking.uri; default sqlite:///<project root>/mlruns/mlflow.db)")
    p.add_argument("--sweep", default=None, help="only this sweep_id, or 'latest' (the sweep of the most recent swept run)")
    p.add_argument("--filter", dest="filter_string", metavar="FILTER", default=None,
                   help="MLflow filter string, e.g. \"params.model.name = 'resnet18'\"")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <project root>/outputs/compare/<time>)")
    p.add_argument("--no-log", action="store_true", help="do not log the comparison to MLflow")
    p.add_argument("--register-best", metavar="NAME", default=None,
                   help="register the model of the best run (of the best group) as a new version of NAME, with the "
                        f"alias {CHAMPION}: serve it with mlflow models serve -m models:/NAME@{CHAMPION}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = compare(args.experiment, tracking_uri=args.tracking_uri, sweep=args.sweep,
                         filter_string=args.filter_string, out_dir=args.out, log_to_mlflow=not args.no_log,
                         register_best_as=args.register_best)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(to_markdown(result.table))
    if result.groups is not None and len(result.groups.table) > 1:
        print(f"Groups across seeds ({result.groups.evaluated_on}):")
        print(to_markdown(groups_table(result.groups)))
    for note in result.notes:  # after the tables they qualify
        print(f"note: {note}")
    for name, path in result.figures.items():
        print(f"{name}: {path}")
    print(f"table: {result.out_dir / 'comparison.csv'}, {result.out_dir / 'comparison.md'}")
    if result.run_id:
        print(f"MLflow run: {result.run_id} (experiment {comparisons_experiment(args.experiment)})")
    if result.registered:
        run_id, version = result.registered
        uri = resolve_uri(args.tracking_uri)
        print(f"registered: models:/{args.register_best}/{version} (alias @{CHAMPION}) from run {run_id}; serve it:\n"
              f"  MLFLOW_TRACKING_URI={uri} mlflow models serve -m models:/{args.register_best}@{CHAMPION} "
              "--env-manager local --port 5001")
    return 0


if __name__ == "__main__":
    sys.exit(main())
