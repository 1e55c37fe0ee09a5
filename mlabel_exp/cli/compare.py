"""``python -m mlabel_exp.compare [sweep=latest] [filter=...]``: the finished runs of an experiment side by side
(analysis.comparison does the work), the tables printed (each group by a short label, a legend line naming its
settings), the files named, and where to look: the report, the UI command and the runs table."""

from __future__ import annotations

from mlabel_exp.cli.app import command
from mlabel_exp.comparison.compare import CHAMPION, compare, comparisons_experiment
from mlabel_exp.comparison.table import console_table, groups_table, legend, run_labels
from mlabel_exp.config import CompareConfig, resolve_path, validate
from mlabel_exp.render.shell import environment, script
from mlabel_exp.tracking.client import experiment_id, resolve_uri, run_url, ui_command
from mlabel_exp.tracking.run_ids import newest_experiment


def tables(result, wide: bool) -> None:
    """The runs (with their group's label where there are groups), then the groups: their legend and table."""
    import textwrap

    table, found = result.table, result.groups
    grouped = found is not None and len(found.table) > 1
    if grouped:
        table = table.copy()
        table.insert(1, "group", run_labels(table, found))
    print(console_table(table, wide=wide) + "\n")
    if grouped:
        title = f"Groups across {found.over} ({found.evaluated_on}):"
        print(title if wide else textwrap.fill(title, 120, subsequent_indent="  "))
        print("\n".join(legend(found, 10 ** 6 if wide else None)))
        print(console_table(groups_table(found, short=True), wide=wide) + "\n")


def report(result, typed: CompareConfig) -> None:
    """The tables, then the notes that qualify them, the files, the comparison's run and where to look."""
    import textwrap

    tables(result, typed.wide)
    for note in result.notes:  # after the tables they qualify
        print(f"note: {note}" if typed.wide else textwrap.fill(f"note: {note}", 120, subsequent_indent="  ",
                                                                break_on_hyphens=False))
    for name, path in result.figures.items():
        print(f"{name}: {path}")
    print(f"table: {result.out_dir / 'comparison.csv'}, {result.out_dir / 'comparison.md'}")
    if result.report is not None:
        print(f"report: {result.report}")
    if result.run_id:
        print(f"MLflow run: {result.run_id} (experiment {comparisons_experiment(typed.tracking.experiment)})")
    uri = resolve_uri(typed.tracking.uri)
    if result.registered:
        run_id, version = result.registered
        name = typed.register_best
        print(f"registered: models:/{name}/{version} (alias @{CHAMPION}) from run {run_id}; serve it:\n  "
              + environment({"MLFLOW_TRACKING_URI": uri}, *script("mlflow"), "models", "serve", "-m",
                            f"models:/{name}@{CHAMPION}", "--env-manager", "local", "--port", "5001"))
    if not uri.startswith(("http://", "https://")):
        print(f"look: {ui_command(uri)}")
    print(f"runs: {run_url(uri, experiment_id(uri, typed.tracking.experiment))}")


def _main(cfg) -> None:
    typed: CompareConfig = validate(cfg, CompareConfig)
    typed.tracking.experiment = newest_experiment(typed.tracking.uri, typed.tracking.experiment)
    result = compare(typed.tracking.experiment, tracking_uri=typed.tracking.uri, sweep=typed.sweep,
                     filter_string=typed.filter, out_dir=resolve_path(typed.out) if typed.out else None,
                     log_to_mlflow=typed.log_to_mlflow, register_best_as=typed.register_best, cost=typed.cost)
    report(result, typed)


def main() -> None:
    command(_main, "compare", CompareConfig, "compare_schema")()


if __name__ == "__main__":
    main()
