"""``resume=<run id>|latest``: continue the same experiment, or refuse and say why.

A resumed run keeps its own settings, split, classes and tracking settings; only the settings in
``MAY_CHANGE`` may be given again (extending ``trainer.epochs`` is the usual one). A live run (its process holds
``RUN_LOCK`` in its output folder) is never resumed by a second process.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import Config, ConfigError, validate
from .fsutil import is_held
from .job import RUN_LOCK
#: What a resume may change: how long it runs, where the store now is, and how the machine runs it.
MAY_CHANGE = ("resume", "trainer.epochs", "tracking.uri", "trainer.device", "trainer.progress",
              "trainer.log_every_steps", "trainer.num_threads", "data.num_workers")


def why_not(tags: dict, latest: bool) -> str | None:
    """Why the run with ``tags`` cannot be resumed now (None: it can)."""
    if latest and tags.get("pruned") == "true":
        return "a search trial the pruner stopped on purpose"
    lock = Path(tags.get("output_dir", "")) / RUN_LOCK
    if tags.get("output_dir") and is_held(lock):
        return (f"it is still running (a live process holds {lock}); stop that process first (SIGTERM: it writes "
                "a checkpoint and exits), then resume")
    return None


def _renamed(config: dict) -> dict:
    """A checkpoint's config in this version's names: tracking.log_checkpoint (true/false) is now
    tracking.log_checkpoints (best, or none where no model held the weights either)."""
    t = config.get("tracking", {})
    if "log_checkpoint" in t:
        logged = t.pop("log_checkpoint") or t.get("log_model", True)
        t.setdefault("log_checkpoints", "best" if logged else "none")
    return config


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def check_overrides(overrides: list[str]) -> list[str]:
    """The keys of the command-line ``overrides`` given with ``resume``; refuses any outside MAY_CHANGE."""
    keys = [_key(o) for o in overrides if not _key(o).startswith("hydra")]
    refused = [o for o in overrides if _key(o) in keys and _key(o) not in MAY_CHANGE]
    if refused:
        raise ConfigError(f"resume continues a run with its own settings; these would change it: {', '.join(refused)}. "
                          f"A resume may set only {', '.join(MAY_CHANGE[1:])}; start a new run to change anything else")
    return keys


def resume_point(cfg: DictConfig, overrides: list[str] = ()) -> tuple[DictConfig, dict]:
    """The interrupted run's own config (with the allowed ``overrides`` applied) and its checkpoints."""
    from . import tracking
    from .predictor import load_checkpoint

    given = check_overrides(list(overrides))
    tracker = tracking.open_tracker(validate(cfg).tracking)
    run_id, tags = tracker.find_resumable(cfg.resume, why_not)
    folder = Path(tags.get("output_dir", "")) / "checkpoints"
    last = folder / "last.pt"
    if not last.is_file():
        raise ConfigError(f"resume={cfg.resume!r}: run {run_id} has no checkpoint at {last} "
                          "(it stopped before finishing its first epoch, or its output folder moved)")
    state = load_checkpoint(last)
    original = OmegaConf.merge(OmegaConf.structured(Config), _renamed(state["config"]))  # typed, as when it started
    for key in given:
        if key not in ("resume", "tracking.uri"):
            OmegaConf.update(original, key, OmegaConf.select(cfg, key), merge=False)
    original.tracking.uri = cfg.tracking.uri   # where the run was found; its other tracking settings stay its own
    original.trainer.output_dir = str(folder.parent)
    original.data.split_file = str(folder.parent / "split.json")  # its own split, never a new one
    original.resume = None
    try:
        validate(original)
    except ConfigError as e:  # started by an earlier version, which accepted what this one refuses
        raise ConfigError(f"resume={cfg.resume!r}: run {run_id} was started with settings this version refuses: {e}. "
                          "A resume keeps a run's own settings, so this run cannot continue: start a new run with "
                          f"the change above (the interrupted run's checkpoints stay in {folder})") from e
    if original.trainer.epochs <= state["epoch"]:
        raise ConfigError(f"resume={cfg.resume!r}: run {run_id} already finished epoch {state['epoch']} of "
                          f"trainer.epochs={original.trainer.epochs}; resume with trainer.epochs=N above "
                          f"{state['epoch']} to train longer")
    best = folder / "best.pt"
    return original, {"run_id": run_id, "last": state, "best": load_checkpoint(best) if best.is_file() else None}


#: The tags that tell which command and job started a run: its command-line overrides, its Hydra sweep and job
#: number, and the scheduler's job id (which a requeued job keeps).
SAME_JOB = ("overrides", "sweep_id", "job_num", "scheduler_job")


def preempted_run(tracking_cfg, identity: dict[str, str]) -> str | None:
    """The newest run a scheduler preempted (KILLED, tagged preempted=true) that this very job started (the tags
    SAME_JOB of ``identity``), with its last.pt and no live process on it: the same command continues it. None: a
    new run."""
    from . import tracking

    for run_id, tags in tracking.preempted_runs(tracking_cfg):
        if all(tags.get(k) == identity.get(k) for k in SAME_JOB) and why_not(tags, True) is None \
                and (Path(tags.get("output_dir", "")) / "checkpoints" / "last.pt").is_file():
            return run_id
    return None


def check_classes(now: list[str], then: list[str]) -> None:
    """The data's classes must be the checkpoint's, in order: a renamed file would shift every label column."""
    if list(now) == list(then):
        return
    added, missing = sorted(set(now) - set(then)), sorted(set(then) - set(now))
    what = [f"added {added}" if added else "", f"missing {missing}" if missing else "",
            "same names in another order" if not added and not missing else ""]
    raise ConfigError(f"resume: the annotation files no longer give the classes the run was trained on "
                      f"({'; '.join(w for w in what if w)}); restore annotations/ as it was, or start a new run")
