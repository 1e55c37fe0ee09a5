"""What a person sees of a run, a sweep and a search on the console: the closing block of a run, one line per finished
sweep job or search trial (the console of a sweep is quiet but for errors; each job's log file keeps every line), and
the settings table at the end of a sweep or a search."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mlabel_exp.experiment import hydra_job as job
from mlabel_exp.render.shell import module_command
from mlabel_exp.tracking.client import run_url, ui_command

log = logging.getLogger(__name__)

#: A console line of a sweep or a search: longer ones are cut (the job's run.log and the runs hold it all).
LINE = 120
#: Loggers of Hydra and its launchers: their INFO lines (each job's full override list) are the sweep's job lines now.
LAUNCHER_LOGGERS = ("hydra", "hydra_plugins")


def shorten(line: str, width: int = LINE) -> str:
    return line if len(line) <= width else line[:width - 3] + "..."


class WarningCount(logging.Handler):
    """Counts the warnings a quiet console left out (the job's log file has them)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record) -> None:
        if record.levelno < logging.ERROR:
            self.count += 1


_quiet: list[WarningCount] = []  # the counter of the quiet console, while there is one


@contextmanager
def quiet_console():
    """While in it, the console of a sweep job or a search shows errors only (the log file keeps every line) and a
    finished run prints one line (``finished_line``) with the count of warnings the console did not show."""
    root = logging.getLogger()
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]  # not a FileHandler (a subclass)
    levels = [h.level for h in consoles]
    counter = WarningCount()
    for handler in consoles:
        handler.setLevel(logging.ERROR)
    root.addHandler(counter)
    _quiet[:] = [counter]
    try:
        yield counter
    finally:
        _quiet.clear()
        root.removeHandler(counter)
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)


def quiet_warnings() -> int | None:
    """Warnings the quiet console left out so far; None when the console is not quiet (a single run)."""
    return _quiet[0].count if _quiet else None


def finished_label(tags: dict[str, str]) -> str:
    """How a run's one line starts: ``trial N`` in a search, ``job N`` in a sweep."""
    return f"trial {tags['optuna_trial']}" if "optuna_trial" in tags else job_label()


def finished_line(outcome, warnings: int) -> str:
    """One line for a finished sweep job or search trial: its best val mAP (and test mAP), then its name."""
    test = outcome.held_out.get("test", {}).get("mAP")
    figures = f"val mAP {outcome.objective:.4f} (epoch {outcome.best_epoch}/{outcome.epochs})" + (
        f", test mAP {test:.4f}" if test is not None else "")
    told = f"  [{warnings} warning(s) in its log]" if warnings else ""
    return shorten(f"{finished_label(outcome.tags)}: {figures}  {outcome.run_name}", LINE - len(told)) + told


def job_label() -> str:
    hc = job.hydra_config()
    return f"job {hc.job.num}" if hc is not None else "run"


class SweepSummary(Callback):
    """Hydra callback: a sweep's console is one line per finished job, then the settings best first and where to look;
    failed jobs are named at the end, and the sweep exits non-zero if there were any."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        for name in LAUNCHER_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        print(shorten(f"sweep into {config.hydra.sweep.dir}: one line per finished job (its log: <job number>/"
                      f"{config.hydra.job.name}.log)"), flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = job.failed_jobs(config.hydra.sweep.dir)
        if config.tracking.enabled:
            try:
                children, settings, look = job.end_sweep(config, failed)
                print(settings_table(children, settings, f"sweep {config.hydra.sweep.dir}", look), flush=True)
            except Exception as e:  # the jobs' own runs are complete either way
                log.warning("could not close the sweep's parent run: %s", e)
        if failed:
            log.error("%d sweep job(s) failed:\n%s", len(failed),
                      "\n".join(f"  job {f['job']} ({f['overrides']}): {f['error']}" for f in failed))
            raise SystemExit(1)


def settings_table(children: list[dict], settings: list, title: str, look: list[str],
                   compare: str = "") -> str:
    """The end of a sweep or a search: its settings best first (mean best val mAP over seeds, each seed's value), the
    runs that did not finish, the winner, the command that tests it, and where to look: each once."""
    if not children:
        return f"{title}: no run was started"
    unfinished = [c for c in children if c["status"] != "FINISHED"]
    lines = [shorten(f"{title}: {len(children)} run(s), {len(settings)} setting(s), best mean val mAP first")]
    for s in settings[:20]:
        word = "fold" if s.unit.startswith("fold") else "seed"  # a fold sweep's values are its folds
        values = " ".join(f"{v:.4f}" for v in s.values)
        seeds = f"{len(s.seeds)} {word}s: {values}" if len(s.seeds) > 1 else f"1 {word}"
        lines.append(shorten(f"  {s.mean:.4f}  {s.name}  ({seeds})"))
    if len(settings) > 20:
        lines.append(f"  ... and {len(settings) - 20} more (compare lists them all)")
    if unfinished:
        states = [("pruned" if c["tags"].get("pruned") == "true" else c["status"]) for c in unfinished]
        lines.append("  not finished: " + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))))
    if settings:
        more = "" if all(len(s.seeds) > 1 for s in settings[:2]) else " (one seed: repeat it, e.g. -m seed=0,1,2)"
        lines.append(shorten(f"best setting: {settings[0].name}{more}"))
    lines.append(f"is it more than seed noise? {compare or module_command('compare', 'sweep=latest')}")
    return "\n".join([*lines, *look])


def closing_block(outcome) -> str:
    """What a person reads last: the best and held-out figures, where the files are, how to look at the run."""
    stop = " (early stop)" if outcome.stopped_early else ""
    ema = " (the averaged weights)" if outcome.best_weights == "ema" else ""
    lines = [f"best val mAP {outcome.objective:.4f}{ema} at epoch {outcome.best_epoch} of {outcome.epochs}{stop}"]
    where = {"test": "test:     {} (the test split, best weights, thresholds tuned on validation)",
             "tuned": "tuned:    {} (validation, thresholds tuned out of fold)",
             "val_tta": "val TTA:  {} (validation, best weights, flip TTA; F1 at 0.5 as val/*)",
             "test_tta": "test TTA: {} (the test split, best weights, flip TTA, tuned thresholds)"}
    for part, scores in outcome.held_out.items():
        lines.append(where[part].format(", ".join(f"{k} {v:.4f}" for k, v in scores.items())))
    lines.append(f"outputs:  {outcome.out}")
    if (outcome.out / "report.html").is_file():
        lines.append(f"report:   {outcome.out / 'report.html'} (metrics, figures and diagnostics on one page)")
    if outcome.run_id is not None:
        if not outcome.tracking_uri.startswith(("http://", "https://")):
            lines.append(f"look:     {ui_command(outcome.tracking_uri)}")
        lines.append(f"run:      {run_url(outcome.tracking_uri, outcome.experiment_id, outcome.run_id)}")
        lines.append(f"runs:     {run_url(outcome.tracking_uri, outcome.experiment_id)}")
    rule = "-" * 72
    return "\n".join([rule, *lines, rule])
