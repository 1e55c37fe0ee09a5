"""The given labels most likely wrong, from a fold sweep's out-of-fold probabilities: ``python -m mlabel_exp.labels
run=<sweep>``. The work is comparison.labels'; this prints the surest few, where the files are and what to do."""

from __future__ import annotations

from mlabel_exp.cli.app import command
from mlabel_exp.config import LabelsConfig, validate
from mlabel_exp.tracking.run_ids import newest_experiment

SHOWN = 10  # rows of the table printed


def _main(cfg) -> None:
    from mlabel_exp.comparison.labels import check_labels

    typed: LabelsConfig = validate(cfg, LabelsConfig)
    typed.tracking.experiment = newest_experiment(typed.tracking.uri, typed.tracking.experiment)
    done = check_labels(typed)
    print(done.summary)
    for row in done.table.head(SHOWN).to_dict("records"):
        print(f"  {row['rank']:>4}  {row['file']}  {row['class']}: given {row['given']}, suggested {row['suggested']} "
              f"(p {row['probability']:.3f}, fold {row['fold']})\n        {row['fix']}")
    if len(done.table) > SHOWN:
        print(f"  ... {len(done.table) - SHOWN} more in the table")
    print(f"table: {done.csv}\npage:  {done.page}")
    if done.logged:
        print(f"logged to the sweep's parent run {done.parent} under labels/")


def main() -> None:
    command(_main, "labels", LabelsConfig, "labels_schema")()


if __name__ == "__main__":
    main()
