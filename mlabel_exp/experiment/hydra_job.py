"""The Hydra job a run lives in: its runtime facts (overrides, group choices, sweep folder, job folder), the run's
name and sweep tags, and the end of a sweep (failed jobs named, exit status non-zero)."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mlabel_exp.config import Config, project_root, resolve_path, resolved_tracking

from mlabel_exp.errors import UserError
from mlabel_exp.tracking.sweeps import end_sweep_parent, sweep_id_of, swept
from mlabel_exp.training.stop import scheduler_job

log = logging.getLogger(__name__)

FAILED_JOBS_FILE = "failed_jobs.jsonl"


def hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def task_overrides() -> list[str]:
    """What the user typed on the command line (``key=value`` overrides); none without Hydra."""
    hc = hydra_config()
    return list(hc.overrides.task) if hc is not None else []


def group_choices() -> dict[str, str | None] | None:
    """This job's config-group choices (model: resnet18, trainer: smoke, ...), Hydra's own groups left out; None
    without Hydra. Kept in the checkpoint: a resume compares group overrides with them."""
    from omegaconf import OmegaConf

    hc = hydra_config()
    if hc is None:
        return None
    return {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if not k.startswith("hydra/")}


def sweep_dir() -> Path | None:
    """The folder of the ``-m`` sweep this job belongs to; None outside a sweep."""
    from hydra.types import RunMode

    hc = hydra_config()
    return Path(hc.sweep.dir) if hc is not None and hc.mode == RunMode.MULTIRUN else None


def output_dir_of_job() -> Path:
    """Hydra's job folder, or a fresh outputs/<time> folder when called without Hydra."""
    hc = hydra_config()
    if hc is not None:
        return Path(hc.runtime.output_dir)
    return project_root() / "outputs" / time.strftime("%Y-%m-%d/%H-%M-%S")


def output_dir(cfg: Config) -> Path:
    """trainer.output_dir, else the job's folder."""
    return resolve_path(cfg.trainer.output_dir) if cfg.trainer.output_dir else output_dir_of_job()


#: Overrides left out of run names (they stay in the ``overrides`` tag): where things run and are written, not what is
#: trained; so is any value holding a path.
NOT_IN_RUN_NAMES = ("model=", "tracking.", "hydra", "trainer.device=", "trainer.output_dir=", "trainer.progress=",
                    "trainer.num_threads=", "data.cache_dir=", "data.num_workers=", "resume=")


def run_identity(cfg: Config, group: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """Run name and the tags that place a run in its sweep (or the given ``group``). In a sweep the name starts with
    the values this job takes of what the sweep varies (``dropout=heavy``): the part that tells runs apart; then the
    model and what else was set, without settings of where it ran (NOT_IN_RUN_NAMES) or paths."""
    hc = hydra_config()
    overrides = task_overrides()
    group = dict(group or {})
    overrides += [o for o in group.pop("overrides", "").split() if o]
    varied = {o.split("=", 1)[0] for o in swept(sweep_dir())}
    first = [o for o in overrides if o.split("=", 1)[0] in varied]
    shown = [o for o in overrides if o not in first and not o.startswith(NOT_IN_RUN_NAMES) and "/" not in o]
    model = [] if "model" in varied else [cfg.model.name]
    name = cfg.tracking.run_name or " ".join([*first, *model, *shown])
    tags = {"model": cfg.model.name, "overrides": " ".join(overrides) or "(none)"}
    if scheduler_job():  # kept by a requeued job: what tells its preempted run from another job's (resume.py)
        tags["scheduler_job"] = scheduler_job()
    sweep = sweep_dir()
    if sweep is not None:
        tags.update(sweep_id=sweep_id_of(sweep), sweep_dir=str(sweep), job_num=str(hc.job.num))
    return name, {**tags, **group}


def record_failed_job(error: BaseException) -> None:
    """One line per failed sweep job in the sweep folder, for SweepSummary (appends of one line do not interleave)."""
    hc, folder = hydra_config(), sweep_dir()
    if isinstance(error, UserError):  # explained in its message: a traceback is for bugs
        log.error("job %s (%s) failed: %s; the sweep continues", hc.job.num, " ".join(hc.overrides.task), error)
    else:
        log.exception("job %s (%s) failed; the sweep continues", hc.job.num, " ".join(hc.overrides.task))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / FAILED_JOBS_FILE, "a") as fh:
        fh.write(json.dumps({"job": hc.job.num, "overrides": " ".join(hc.overrides.task),
                             "error": f"{type(error).__name__}: {error}"[:500]}) + "\n")


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


def finished_line(label: str, run_name: str, result, held_out: dict, warnings: int) -> str:
    """One line for a finished sweep job or search trial: its best val mAP (and test mAP), then its name."""
    test = held_out.get("test", {}).get("mAP")
    figures = f"val mAP {result.best_score:.4f} (epoch {result.best_epoch}/{len(result.history)})" + (
        f", test mAP {test:.4f}" if test is not None else "")
    told = f"  [{warnings} warning(s) in its log]" if warnings else ""
    return shorten(f"{label}: {figures}  {run_name}", LINE - len(told)) + told


def job_label() -> str:
    hc = hydra_config()
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
        from mlabel_exp.comparison.groups import rank_settings

        path = Path(config.hydra.sweep.dir) / FAILED_JOBS_FILE
        failed = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        lines = [f"  job {f['job']} ({f['overrides']}): {f['error']}" for f in failed]
        summary = f"{len(failed)} sweep job(s) failed:\n" + "\n".join(lines) if failed else "all jobs finished"
        if config.tracking.enabled:
            try:
                children, settings, look = end_sweep_parent(
                    resolved_tracking(config), sweep_id_of(config.hydra.sweep.dir), "FAILED" if failed else "FINISHED",
                    summary, rank_settings)
                print(settings_table(children, settings, f"sweep {config.hydra.sweep.dir}", look), flush=True)
            except Exception as e:  # the jobs' own runs are complete either way
                log.warning("could not close the sweep's parent run: %s", e)
        if failed:
            log.error(summary)
            raise SystemExit(1)


def settings_table(children: list[dict], settings: list, title: str, look: list[str],
                   compare: str = "python -m mlabel_exp.compare sweep=latest") -> str:
    """The end of a sweep or a search: its settings best first (mean best val mAP over seeds, each seed's value), the
    runs that did not finish, the winner, the command that tests it, and where to look: each once."""
    if not children:
        return f"{title}: no run was started"
    unfinished = [c for c in children if c["status"] != "FINISHED"]
    lines = [shorten(f"{title}: {len(children)} run(s), {len(settings)} setting(s), best mean val mAP first")]
    for s in settings[:20]:
        seeds = f"{len(s.seeds)} seeds: " + " ".join(f"{v:.4f}" for v in s.values) if len(s.seeds) > 1 else "1 seed"
        lines.append(shorten(f"  {s.mean:.4f}  {s.name}  ({seeds})"))
    if len(settings) > 20:
        lines.append(f"  ... and {len(settings) - 20} more (compare lists them all)")
    if unfinished:
        states = [("pruned" if c["tags"].get("pruned") == "true" else c["status"]) for c in unfinished]
        lines.append("  not finished: " + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))))
    if settings:
        more = "" if all(len(s.seeds) > 1 for s in settings[:2]) else " (one seed: repeat it, e.g. -m seed=0,1,2)"
        lines.append(shorten(f"best setting: {settings[0].name}{more}"))
    lines.append(f"is it more than seed noise? {compare}")
    return "\n".join([*lines, *look])
