"""The main job: ``python -m mlabel_exp.run [overrides]`` trains one model per Hydra job (experiment.train), tracked in
MLflow, and prints how it ended: the closing block of a single run, one line per finished job of a ``-m`` sweep."""

from __future__ import annotations

from contextlib import nullcontext

from omegaconf import DictConfig

from mlabel_exp.cli import console
from mlabel_exp.cli.app import command
from mlabel_exp.config import register
from mlabel_exp.experiment import hydra_job as job
from mlabel_exp.runtime import distributed


def _job(cfg: DictConfig) -> float:
    """One Hydra job; returns its objective. In a sweep a failing job is recorded and the sweep goes on
    (console.SweepSummary names it at the end)."""
    from mlabel_exp.experiment.train import train

    in_sweep = job.sweep_dir() is not None
    try:
        with console.quiet_console() if in_sweep else nullcontext() as quiet:  # one line a job; its log: all
            outcome = train(cfg)
            if distributed.is_main():  # the other ranks of a torchrun job stay quiet
                print(console.finished_line(outcome, quiet.count) if quiet else console.closing_block(outcome),
                      flush=True)
        return outcome.objective
    except Exception as e:
        if not in_sweep:
            raise
        job.record_failed_job(e)
        return float("nan")


register()
main = command(_job, "config")

if __name__ == "__main__":
    main()
