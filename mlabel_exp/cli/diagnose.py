"""An earlier run's diagnostics, without retraining: ``python -m mlabel_exp.diagnose run=<run>``; a run is named by its
id, any unique prefix of it, ``latest``, ``best`` or a sweep parent's id (its winning run). The work is
diagnostics.rerun's; this prints where the files are and the summary metrics."""

from __future__ import annotations

from mlabel_exp.cli.app import command
from mlabel_exp.config import DiagnoseConfig, validate


def _main(cfg) -> None:
    from mlabel_exp.diagnostics.rerun import diagnose

    done = diagnose(validate(cfg, DiagnoseConfig))
    print(f"diagnostics of run {done.run_id} ({', '.join(done.splits)}): {done.folder}")
    print("  " + ", ".join(f"{k} {v:.4f}" for k, v in done.metrics.items()))
    if done.logged:
        print(f"  logged to run {done.run_id} under {done.folder.name}/")


def main() -> None:
    command(_main, "diagnose", DiagnoseConfig, "diagnose_schema")()


if __name__ == "__main__":
    main()
