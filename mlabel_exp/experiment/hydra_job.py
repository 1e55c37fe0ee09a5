"""The Hydra job a run lives in: its runtime facts (overrides, group choices, sweep folder, job folder), the run's
name and sweep tags, and the end of a sweep (failed jobs named, exit status non-zero)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from mlabel_exp.config import Config, project_root, resolve_path, resolved_tracking
from mlabel_exp.errors import UserError
from mlabel_exp.render.shell import module_command, override
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


def failed_jobs(folder: Path) -> list[dict]:
    """The sweep's failed jobs (``record_failed_job``), in the order they failed."""
    path = Path(folder) / FAILED_JOBS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def end_sweep(config: DictConfig, failed: list[dict]) -> tuple[list[dict], list, list[str]]:
    """Close the sweep's parent run (FAILED when a job failed) with its winning setting: (its child runs, the settings
    best first, the lines that say where to look). A fold sweep's parent also gets the out-of-fold table
    (``out_of_fold``)."""
    from mlabel_exp.comparison.groups import is_fold_run, rank_settings

    lines = [f"  job {f['job']} ({f['overrides']}): {f['error']}" for f in failed]
    summary = f"{len(failed)} sweep job(s) failed:\n" + "\n".join(lines) if failed else "all jobs finished"
    tracking = resolved_tracking(config)
    children, settings, look = end_sweep_parent(tracking, sweep_id_of(config.hydra.sweep.dir),
                                                "FAILED" if failed else "FINISHED", summary, rank_settings)
    if any(is_fold_run(c) for c in children):
        look = [*out_of_fold(tracking.uri, children, Path(config.hydra.sweep.dir)), *look]
    return children, settings, look


def out_of_fold(uri: str, children: list[dict], sweep_folder: Path) -> list[str]:
    """The out-of-fold table of a fold sweep, logged on its parent run (comparison.folds), and the label check's
    command; a sweep that cannot give one (a fold missing or scored in part) says why, and its runs stand."""
    from mlabel_exp.comparison.folds import FOLDER, log_out_of_fold

    parent = children[0]["tags"].get("mlflow.parentRunId", "")
    try:
        line = log_out_of_fold(uri, parent, children, sweep_folder / FOLDER)
    except UserError as e:
        log.warning("no out-of-fold table: %s", e)
        return [f"out-of-fold: none ({e})"]
    return [line, f"labels: {module_command('labels', override('run', parent[:8]))}   (the labels most likely wrong)"]
