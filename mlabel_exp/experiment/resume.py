"""``resume=<run id>|latest``: continue the same experiment, or refuse and say why.

An interrupted run continues exactly where its last finished epoch ended; a finished one continues too, to train it
longer (``trainer.epochs`` above the epochs it ran), with early stopping's patience counting afresh. ``latest`` is
the training run that started last, finished or not, with a checkpoint to continue from (its ``last.pt``). A resumed
run keeps its own settings, split, classes and tracking settings; only the settings in
``MAY_CHANGE`` may change (extending ``trainer.epochs`` is the usual one), and any other override must be what the
run already has (so the command line that started it, plus ``resume=<id>``, resumes it). Its data must be what it
was trained on: the same images, classes, labels and file content (``data_record`` in last.pt). A live run (its
process holds ``RUN_LOCK`` in its output folder) is never resumed by a second process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlabel_exp.config import CONF_DIR, Config, resolve_path, resolved_tracking, upgraded, validate
from mlabel_exp.errors import ConfigError, DataError
from mlabel_exp.fsutil import is_held
from mlabel_exp.runtime.distributed import launched_by_torchrun
from mlabel_exp.tracking.query import find_resumable, preempted_runs
from mlabel_exp.tracking.run_ids import FULL_ID, resolve_run
from mlabel_exp.tracking.runs import flatten
from mlabel_exp.training.output_folder import RUN_LOCK

log = logging.getLogger(__name__)

#: What a resume may change: how long it runs, where the store now is, and how the machine runs it.
MAY_CHANGE = ("resume", "trainer.epochs", "tracking.uri", "trainer.device", "trainer.progress",
              "trainer.log_every_steps", "trainer.num_threads", "data.num_workers")
#: Set by a resume to the run's own, whatever this command composes: where the run is, its split.
RUN_OWNS = ("trainer.output_dir", "data.split_file")


def why_not(tags: dict, latest: bool) -> str | None:
    """Why the run with ``tags`` cannot be resumed now (None: it can)."""
    if latest and tags.get("pruned") == "true":
        return "a search trial the pruner stopped on purpose"
    last = Path(tags.get("output_dir", "")) / "checkpoints" / "last.pt"
    if latest and not (tags.get("output_dir") and last.is_file()):
        return f"no checkpoint at {last} (none written, or its output folder moved)"
    lock = Path(tags.get("output_dir", "")) / RUN_LOCK
    if tags.get("output_dir") and is_held(lock):
        return (f"it is still running (a live process holds {lock}); stop that process first (SIGTERM: it writes "
                "a checkpoint and exits), then resume")
    return None


def _renamed(config: dict) -> dict:
    """A checkpoint's config in this version's names: tracking.log_checkpoint (true/false) is now
    tracking.log_checkpoints (best, or none where no model held the weights either); data.augment's keys
    (config.upgraded)."""
    t = config.get("tracking", {})
    if "log_checkpoint" in t:
        logged = t.pop("log_checkpoint") or t.get("log_model", True)
        t.setdefault("log_checkpoints", "best" if logged else "none")
    return upgraded(config)


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _change(override: str, cfg: DictConfig, run: DictConfig, choices: dict | None, folder: Path) -> str | None:
    """What ``override`` (outside MAY_CHANGE) would change in the run, as '<override> (<what the run has>)'; None when
    the run already has it. A config group (model=resnet18) is compared with the run's recorded choice; without a
    record, by the values it brings (under its node, as this command composes them)."""
    key, typed = _key(override), override.split("=", 1)[1] if "=" in override else None
    if key in RUN_OWNS:  # a path to the run's own folder or split, however it is written
        ours = folder if key == "trainer.output_dir" else folder / "split.json"
        started = OmegaConf.select(run, key)  # as the run was started
        own = {ours.resolve()} | ({resolve_path(started).resolve()} if started else set())
        return None if typed and resolve_path(typed).resolve() in own else f"{override} (the run's: {ours})"
    if (CONF_DIR / key).is_dir():
        if choices is not None:
            return None if choices.get(key) == typed else f"{override} (the run has {key}={choices.get(key)})"
        if OmegaConf.select(run, key) is None and OmegaConf.select(cfg, key) is None:  # a group of global settings
            return f"{override} (the run's config-group choices were not recorded: what it changes is unknown)"
    new = flatten(_plain(OmegaConf.select(cfg, key)), key + ".")
    old = flatten(_plain(OmegaConf.select(run, key)), key + ".")
    differ = [k for k in sorted(set(new) | set(old), key=lambda k: (not k.endswith(".name"), k))  # names first
              if new.get(k) != old.get(k) and k not in MAY_CHANGE + RUN_OWNS]
    if not differ:
        return None
    if differ == [key]:
        return f"{override} (the run has {old.get(key)})"
    more = f", and {len(differ) - 3} more" if len(differ) > 3 else ""
    return f"{override} ({', '.join(f'{k}: {old.get(k)} -> {new.get(k)}' for k in differ[:3])}{more})"


def check_overrides(overrides: list[str], cfg: DictConfig, run: DictConfig, choices: dict | None,
                    folder: Path) -> list[str]:
    """The keys of the command-line ``overrides`` given with ``resume`` that it applies (those in MAY_CHANGE). Any
    other override must leave the run as it is (the same command line again resumes); one that would change it is
    refused with the run's own value. ``cfg``: this command's composed config; ``run``: the run's; ``choices``: its
    config-group choices (None: not recorded); ``folder``: its output folder."""
    overrides = [o for o in overrides if not _key(o).startswith("hydra") and _key(o) != "resume"]
    refused = [c for o in overrides if _key(o) not in MAY_CHANGE for c in [_change(o, cfg, run, choices, folder)] if c]
    if refused:
        raise ConfigError(f"resume continues a run with its own settings; these would change it: {', '.join(refused)}. "
                          f"A resume may set only {', '.join(MAY_CHANGE[1:])}: leave the others out (the run keeps "
                          "its own), or start a new run to change them")
    return [_key(o) for o in overrides if _key(o) in MAY_CHANGE]


def recorded_choices(state: dict, folder: Path) -> dict | None:
    """The config-group choices the run was started with (model: resnet18, trainer: smoke, ...): in last.pt, or in the
    .hydra folder Hydra wrote into its output folder; None when neither has them (a run started without Hydra)."""
    if state.get("hydra_choices") is not None:
        return dict(state["hydra_choices"])
    saved = folder / ".hydra" / "hydra.yaml"
    if saved.is_file():
        return _plain(OmegaConf.select(OmegaConf.load(saved), "hydra.runtime.choices"))
    return None


def resume_point(cfg: DictConfig, overrides: list[str] = (), *, ref: str | None = None,
                 tracking=None) -> tuple[DictConfig, dict]:
    """The config of the run ``ref`` names (default ``cfg.resume``: a run id, a unique prefix of one, or latest: the
    newest run with a last.pt, finished or not) with the allowed ``overrides`` applied, and its checkpoints, recorded
    group choices and run id. ``tracking``: where to find the run (default: this command's tracking settings)."""
    from mlabel_exp.training.checkpoints import load_checkpoint

    ref = ref or cfg.resume
    tracking = tracking or resolved_tracking(cfg)
    if ref != "latest" and not FULL_ID.fullmatch(ref):
        ref = resolve_run(tracking.uri, tracking.experiment, ref, setting="resume")
    cfg = OmegaConf.merge(cfg, {"resume": ref})
    run_id, tags, status = find_resumable(tracking, ref, why_not)
    folder = Path(tags.get("output_dir", "")) / "checkpoints"
    last = folder / "last.pt"
    if not last.is_file():
        raise ConfigError(f"resume={cfg.resume!r}: run {run_id} has no checkpoint at {last} "
                          "(it stopped before finishing its first epoch, ran with trainer.checkpoint=false, or its "
                          "output folder moved)")
    state = load_checkpoint(last)
    original = OmegaConf.merge(OmegaConf.structured(Config), _renamed(state["config"]))  # typed, as when it started
    choices = recorded_choices(state, folder.parent)
    given = check_overrides(list(overrides), cfg, original, choices, folder.parent)
    for key in given:
        if key != "tracking.uri":
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
    if status == "FINISHED":
        if "trainer.epochs" not in given:  # an early-stopped run has epochs left, but nobody asked to train it on
            raise ConfigError(f"resume={cfg.resume!r}: run {run_id} FINISHED after epoch {state['epoch']}; add "
                              f"trainer.epochs=N (above {state['epoch']}) to train it longer. resume=latest is the "
                              "newest run with a last.pt, finished or not: resume=<run id> continues an older "
                              "interrupted one")
        state = trained_longer(state, run_id, original.trainer)
    best = folder / "best.pt"
    return original, {"run_id": run_id, "last": state, "best": load_checkpoint(best) if best.is_file() else None,
                      "choices": choices}


def trained_longer(state: dict, run_id: str, trainer_cfg) -> dict:
    """The last.pt ``state`` of a finished run that continues: early stopping's patience counts afresh from the next
    epoch (the run ended, by its length or by early stopping; more epochs were asked for), and the log says so."""
    patience = trainer_cfg.early_stopping_patience
    log.info("run %s had finished after epoch %d: it continues to epoch %d%s", run_id, state["epoch"],
             trainer_cfg.epochs, f"; early stopping's patience ({patience} epochs without a better val/mAP) counts "
             f"afresh from epoch {state['epoch'] + 1}" if patience else "")
    return {**state, "since_best": 0}


def length_params(state: dict, epochs: int) -> dict[str, int]:
    """The param a resume adds when it changes trainer.epochs (MLflow params never change once logged, so the first
    trainer.epochs stays): ``trainer.epochs.from_epoch_<E>`` = the length in effect from epoch E on."""
    from mlabel_exp.training.checkpoints import planned_epochs

    return {f"trainer.epochs.from_epoch_{state['epoch'] + 1}": epochs} if planned_epochs(state) != epochs else {}


# ------------------------------------------------------------------ the data a run was trained on

def data_record(index, content: np.ndarray) -> dict:
    """What a resume compares the data with, kept in last.pt: file names, classes, labels and each file's content
    hash (image_cache.content_hashes). The labels are kept as the bytes of their int8 values (uint8, as before unknown
    labels existed: an unknown -1 is 255), so 0/1 records are unchanged; ``check_data`` reads them back as int8."""
    import torch

    return {"files": list(index.files), "classes": list(index.classes),
            "labels": torch.from_numpy(np.ascontiguousarray(np.asarray(index.labels).astype(np.int8)).view(np.uint8)),
            "content": torch.from_numpy(np.ascontiguousarray(content, dtype=np.uint8))}


def _some(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def check_data(now: dict, then: dict | None, run_id: str, root) -> None:
    """The data must be what the run was trained on (``then``: its data_record in last.pt): the same classes, images,
    labels and file content; else one error that says what changed, with examples. Runs started before the record was
    kept get a warning (their file names and classes are still checked, against split.json and last.pt)."""
    if then is None:
        log.warning("resume: run %s was started by an earlier version that kept no record of its labels and file "
                    "content: those could not be checked (only its file names and classes are)", run_id)
        return
    t_labels, t_content = then["labels"].numpy().view(np.int8), then["content"].numpy()  # 1, 0, -1: unknown
    t_row = {f: r for r, f in enumerate(then["files"])}
    n_row = {f: r for r, f in enumerate(now["files"])}
    changes = []
    added_c = [c for c in now["classes"] if c not in then["classes"]]
    missing_c = [c for c in then["classes"] if c not in now["classes"]]
    if added_c or missing_c:
        changes.append("classes " + "; ".join(w for w in (f"added {added_c}" if added_c else "",
                                                           f"missing {missing_c}" if missing_c else "") if w))
    added = [f for f in now["files"] if f not in t_row]
    removed = [f for f in then["files"] if f not in n_row]
    for files, what in ((added, "added"), (removed, "removed")):
        if files:
            changes.append(f"{len(files)} image(s) were {what} ({_some(files)})")
    common = [f for f in now["files"] if f in t_row]
    rows_now, rows_then = [n_row[f] for f in common], [t_row[f] for f in common]
    classes = [c for c in now["classes"] if c in then["classes"]]
    cols_now = [now["classes"].index(c) for c in classes]
    cols_then = [list(then["classes"]).index(c) for c in classes]
    a = now["labels"].numpy().view(np.int8)[np.ix_(rows_now, cols_now)]
    b = t_labels[np.ix_(rows_then, cols_then)]
    relabelled = np.flatnonzero((a != b).any(axis=1))
    if len(relabelled):
        examples = [f"{common[i]}: " + ", ".join(f"{classes[c]} {b[i, c]}->{a[i, c]}"
                                                 for c in np.flatnonzero(a[i] != b[i])) for i in relabelled[:3]]
        changes.append(f"the labels of {len(relabelled)} image(s) changed ({'; '.join(examples)}"
                       f"{'; ...' if len(relabelled) > 3 else ''})")
    rewritten = np.flatnonzero((now["content"].numpy()[rows_now] != t_content[rows_then]).any(axis=1))
    if len(rewritten):
        changes.append(f"the content of {len(rewritten)} file(s) changed ({_some([common[i] for i in rewritten])})")
    if changes:
        raise DataError(f"resume: the data in {root} is not what run {run_id} was trained on: {'; '.join(changes)}. "
                        "A resumed run must see the data it started with: restore the data root, or start a new run")


#: The tags that tell which command and job started a run: its command-line overrides, its Hydra sweep and job
#: number, and the scheduler's job id (which a requeued job keeps).
SAME_JOB = ("overrides", "sweep_id", "job_num", "scheduler_job")


def preempted_run(tracking_cfg, identity: dict[str, str]) -> str | None:
    """The newest run this very job started (the tags SAME_JOB of ``identity``) that its scheduler stopped (tracking.
    query.preempted_runs), with its last.pt and no live process on it: the same command continues it. None: a new run.
    Under torchrun only rank 0 looks at the run's lock (it takes the lock itself soon after; another rank looking
    could find it held, or hold it for an instant when rank 0 wants it)."""
    lock_is_mine = not launched_by_torchrun() or os.environ.get("RANK") == "0"
    for run_id, tags in preempted_runs(tracking_cfg, identity):
        if all(tags.get(k) == identity.get(k) for k in SAME_JOB) and (not lock_is_mine or why_not(tags, True) is None) \
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
