"""``python -m mlabel_exp.search [search.n_trials=N] [any run override]``: an Optuna study over run settings
(experiment.search), one console line per trial, then the settings best first and where to look."""

from __future__ import annotations

from omegaconf import DictConfig

from mlabel_exp.cli import console
from mlabel_exp.cli.app import command
from mlabel_exp.config import SearchJobConfig
from mlabel_exp.render.shell import module_command, override
from mlabel_exp.experiment.search import end_search, search


def search_and_report(cfg: DictConfig):
    """The search as the command runs it, its console lines included; returns the optuna Study."""
    def pruned(trial: int, epoch: int, value: float, overrides: str) -> None:
        print(console.shorten(f"trial {trial}: pruned after epoch {epoch} (val mAP {value:.4f})  {overrides}"),
              flush=True)

    with console.quiet_console() as quiet:  # one line per trial; the search's log file keeps every line
        study, sweep_id = search(cfg, lambda outcome: print(console.finished_line(outcome, quiet.count), flush=True),
                                 pruned)
    summary, ended = end_search(cfg, study, sweep_id)
    if ended is None:
        print(console.shorten(summary), flush=True)
        return study
    children, settings, look = ended
    print(console.settings_table(children, settings, f"study {study.study_name!r} ({summary.split(';')[0]})", look,
                                 module_command("compare", override("sweep", sweep_id))), flush=True)
    return study


def main() -> None:
    command(search_and_report, "search", SearchJobConfig)()


if __name__ == "__main__":
    main()
