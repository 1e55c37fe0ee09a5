"""The Hydra job a run lives in: its output folder, its name and sweep, stop requests, and the end of a sweep.

Everything here reads Hydra's runtime state (when there is one) so that the training code does not have to.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mlabel_exp.config import CONF_DIR, Config, ConfigError, UserError, override_problems, project_root, resolve_path
from mlabel_exp.fsutil import Busy, exclusive
from mlabel_exp.tracking.runs import BEST_SCORE

log = logging.getLogger(__name__)

FAILED_JOBS_FILE = "failed_jobs.jsonl"
RUN_LOCK = ".run.lock"  # held by a training process in its output folder for as long as it runs


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


@contextmanager
def output_folder(cfg: Config):
    """The run's output folder, created and held (RUN_LOCK) while it runs: two live processes never write
    one folder, and a live run is never resumed (resume.why_not). DDP ranks share their rank 0's folder and lock."""
    from mlabel_exp.training import distributed

    out = output_dir(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the output folder {out} ({e.strerror}): set trainer.output_dir "
                          "(or hydra.run.dir) to a writable location") from e
    if not distributed.is_main():
        yield out
        return
    try:
        with exclusive(out / RUN_LOCK):
            yield out
    except Busy:
        raise ConfigError(f"{out} is in use by another live run (it holds {out / RUN_LOCK}): give this run its own "
                          "trainer.output_dir, or wait for that run to end") from None


def sweep_id_of(folder: str | Path) -> str:
    """A sweep's id: its output folder, which Hydra makes unique per `-m` invocation."""
    return str(Path(folder).resolve()).replace("/", "_").strip("_")


def swept(folder: Path | None = None) -> list[str]:
    """The overrides a ``-m`` sweep varies, as typed (``model=resnet50,vgg16,inception``), from the multirun.yaml
    Hydra writes into the sweep folder; [] outside a sweep."""
    from omegaconf import OmegaConf

    path = (folder or sweep_dir() or Path("/nonexistent")) / "multirun.yaml"
    if not path.is_file():
        return []
    overrides = OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task", default=[])
    return [o for o in overrides if "," in o or "(" in o.split("=", 1)[-1]]


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
    varied = {o.split("=", 1)[0] for o in swept()}
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


def scheduler_job() -> str | None:
    """The scheduler's id of this job, which a requeued job keeps: SLURM's job id (array job and task for an array
    task), or the submitit local executor's; None outside a scheduler."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm:{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}"
    if env.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"local:{env['SUBMITIT_LOCAL_JOB_ID']}"
    return None


def preemption_signals() -> tuple[int, ...]:
    """Signals that mean "the scheduler takes the machine back": SIGUSR2 (what the SLURM preset and submitit ask for
    before the time limit), and SIGTERM under SLURM (preemption, scancel). A preempted run is continued by the same
    command; a plain SIGTERM or Ctrl-C elsewhere is a person's stop (resume=<id> continues it)."""
    usr2 = (signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ()
    return usr2 + ((signal.SIGTERM,) if "SLURM_JOB_ID" in os.environ else ())


class StopRequest:
    """Set by a signal (or by code): training stops at the next step boundary. ``signum`` says which signal asked
    first, for the exit status (128 + signal); ``preempted`` whether it was the scheduler's; ``previous`` the handler
    that signal had before ours (submitit's requeue), to call once the run has stopped cleanly."""

    def __init__(self):
        self._event = threading.Event()
        self.signum: int = signal.SIGINT
        self.preempted = False
        self.previous = None

    def set(self, signum: int = signal.SIGINT, preempted: bool = False, previous=None) -> None:
        if self._event.is_set():
            return
        self.signum, self.preempted, self.previous = signum, preempted, previous
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def hand_over(self) -> None:
        """Give a preemption signal to the handler it had before ours, now that the run has stopped cleanly: submitit's
        checkpoints its job and requeues it (then exits), instead of interrupting a training step."""
        if self.preempted and callable(self.previous) and self.previous is not signal.default_int_handler:
            self.previous(self.signum, None)


@contextmanager
def stop_on_signals(stop: StopRequest):
    """SIGINT, SIGTERM and SIGUSR2 ask training to stop at the next step boundary; a second Ctrl-C aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, *(s for s in preemption_signals() if s != signal.SIGTERM))
    previous = {s: signal.getsignal(s) for s in signals}
    preemption, owner = preemption_signals(), os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked DataLoader worker, signalled with its process group: its parent stops
            return
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set(signum, signum in preemption, previous[signum])
        then = ("preempted: the same command continues this run" if signum in preemption else
                "Ctrl-C again to abort now")
        log.warning("%s received: stopping at the next step and writing a checkpoint (%s)",
                    signal.Signals(signum).name, then)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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


class SweepSummary(Callback):
    """Hydra callback: after a sweep, name the failed jobs and exit non-zero if there were any."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / FAILED_JOBS_FILE
        failed = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        lines = [f"  job {f['job']} ({f['overrides']}): {f['error']}" for f in failed]
        summary = f"{len(failed)} sweep job(s) failed:\n" + "\n".join(lines) if failed else "all jobs finished"
        if config.tracking.enabled:
            from mlabel_exp.tracking import runs as tracking

            try:
                children = tracking.end_sweep_parent(config.tracking, sweep_id_of(config.hydra.sweep.dir),
                                                     "FAILED" if failed else "FINISHED", summary)
                print(sweep_table(children, config.hydra.sweep.dir), flush=True)
            except Exception as e:  # the jobs' own runs are complete either way
                log.warning("could not close the sweep's parent run: %s", e)
        if failed:
            log.error(summary)
            raise SystemExit(1)


def sweep_table(children: list[dict], folder: str) -> str:
    """The end of a sweep: its runs best first (settings, best val mAP, status) and the command that compares them."""
    if not children:
        return f"sweep {folder}: no run was started"
    rows = [f"  {c['metrics'].get(BEST_SCORE, float('nan')):.4f}  {c['status']:<8}  {c['name']}" for c in children]
    return "\n".join([f"sweep {folder}: {len(children)} run(s), best val mAP first", *rows,
                      "compare them: python -m mlabel_exp.compare --sweep latest"])


def user_error(e: UserError) -> SystemExit:
    """A settings or data problem: its message alone on stderr (no traceback: that is for bugs), exit status 2."""
    print(f"error: {e}", file=sys.stderr)
    return SystemExit(2)


def command(task, config_name: str, schema: type = Config):
    """``main()`` of a Hydra command: misspelt override keys and UserErrors become one line and exit status 2.
    In a sweep a job's error is the task's to handle (run.py records it and the sweep goes on)."""
    import hydra

    @functools.wraps(task)
    def reporting(cfg):
        try:
            return task(cfg)
        except UserError as e:
            raise user_error(e) from None

    def main() -> None:
        problems = override_problems(sys.argv[1:], schema)
        if problems:
            raise user_error(ConfigError("; ".join(problems)))
        hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(reporting)()

    return main
