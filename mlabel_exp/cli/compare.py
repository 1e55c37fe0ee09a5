"""``python -m mlabel_exp.compare [sweep=latest] [filter=...]``: the finished runs of an experiment side by side
(analysis.comparison does the work), the tables printed, the files named."""

from __future__ import annotations

from mlabel_exp.cli.app import command
from mlabel_exp.comparison.compare import CHAMPION, compare, comparisons_experiment
from mlabel_exp.comparison.table import console_table, groups_table
from mlabel_exp.config import CompareConfig, resolve_path, validate
from mlabel_exp.tracking.client import resolve_uri
from mlabel_exp.tracking.run_ids import newest_experiment


def report(result, typed: CompareConfig) -> None:
    """The tables, then the notes that qualify them, the files and the comparison's run."""
    import textwrap


    print(console_table(result.table, wide=typed.wide) + "\n")
    if result.groups is not None and len(result.groups.table) > 1:
        title = f"Groups across {result.groups.over} ({result.groups.evaluated_on}):"
        print(title if typed.wide else textwrap.fill(title, 120, subsequent_indent="  "))
        print(console_table(groups_table(result.groups), wide=typed.wide) + "\n")
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
    if result.registered:
        run_id, version = result.registered
        name, uri = typed.register_best, resolve_uri(typed.tracking.uri)
        print(f"registered: models:/{name}/{version} (alias @{CHAMPION}) from run {run_id}; serve it:\n"
              f"  MLFLOW_TRACKING_URI={uri} mlflow models serve -m models:/{name}@{CHAMPION} "
              "--env-manager local --port 5001")


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
