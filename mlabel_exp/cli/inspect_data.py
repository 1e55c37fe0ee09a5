"""Data audit: ``python -m mlabel_exp.inspect [data=folder data.root=PATH] [out=DIR]``: the audit (experiment.inspect)
printed, then where its report and figures are, its MLflow run and the next command to run."""

from __future__ import annotations

from mlabel_exp.cli.app import command
from mlabel_exp.config import InspectConfig, validate


def _main(cfg) -> None:
    from mlabel_exp.experiment.inspect import inspect

    done = inspect(validate(cfg, InspectConfig))
    print(done.text)
    print("\nFigures and report:", *(f"  {p}" for p in done.files), sep="\n")
    if done.run_id:
        print(f"MLflow run: {done.run_id} (experiment {done.experiment!r}, tagged mlabel.kind=audit)")
    print(f"\nNext: {done.next_command}")


def main() -> None:
    command(_main, "inspect", InspectConfig)()


if __name__ == "__main__":
    main()
