"""Hyperparameter search (``python -m mlabel_exp.search [search.n_trials=N] [any run override]``).

A thin loop over Optuna (TPE sampler, median pruner) rather than Hydra's Optuna sweeper, which pins
optuna < 3 and cannot prune: pruning needs each trial's per-epoch val mAP, which ``train`` reports
through ``on_epoch``. The study lives in SQLite next to the MLflow database, so running the same
command again continues an interrupted search; every trial is an MLflow child run of the search's
parent run.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mlabel_exp.config import Config, project_root, resolved_tracking, validate
from mlabel_exp.errors import ConfigError
from mlabel_exp.tracking.client import resolve_sqlite
from mlabel_exp.tracking.sweeps import end_sweep_parent
from mlabel_exp.training.callbacks import TrialPruned

log = logging.getLogger(__name__)


def storage_uri(storage: str | None) -> str:
    """The study's storage: next to the MLflow database unless ``search.storage`` says otherwise."""
    return resolve_sqlite(storage) if storage else f"sqlite:///{project_root() / 'mlruns' / 'optuna.db'}"


def training_config(cfg: DictConfig) -> DictConfig:
    """The training part of a search config (everything but ``search``), typed as a training run's config."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("search", None)
    return OmegaConf.merge(OmegaConf.structured(Config), container)


def suggest(trial, key: str, spec: dict):
    if spec["type"] == "categorical":
        return trial.suggest_categorical(key, list(spec["choices"]))
    if spec["type"] == "int":
        return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))


def search(cfg: DictConfig, on_trial=lambda outcome: None, on_pruned=lambda trial, epoch, value, overrides: None):
    """Run trials until the study holds ``search.n_trials`` finished ones; returns the optuna Study and the sweep_id
    its runs carry. ``on_trial(outcome)`` sees each finished trial's RunOutcome, ``on_pruned(trial number, epoch, val
    mAP, overrides)`` each pruned one."""
    import optuna

    from mlabel_exp.experiment.train import train

    s = validate(cfg).search
    run_cfg = training_config(cfg)
    if not s.space:
        raise ConfigError("search.space is empty: name the settings to search, e.g. search=regularisation")
    storage = storage_uri(s.storage)
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=s.study, storage=storage, load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=s.sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials,
                                           n_warmup_steps=s.pruner_warmup_epochs))
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = s.n_trials - sum(t.state in done for t in study.trials)
    group = {"sweep_id": f"optuna_{s.study}", "sweep_dir": storage}
    log.info("study %r at %s: %d trial(s) finished, %d to run", s.study, storage, s.n_trials - remaining, max(remaining, 0))

    def objective(trial) -> float:
        trial_cfg = copy.deepcopy(run_cfg)
        chosen = {key: suggest(trial, key, spec) for key, spec in s.space.items()}
        for key, value in chosen.items():
            OmegaConf.update(trial_cfg, key, value, merge=False)

        def on_epoch(epoch: int, metrics: dict) -> None:
            score = max(metrics["val/mAP"], metrics.get("val_ema/mAP", float("-inf")))  # the kept weights' (trainer.ema)
            trial.report(score, epoch)
            if trial.should_prune():
                on_pruned(trial.number, epoch, score, tags["overrides"])
                raise TrialPruned()

        tags = {**group, "optuna_trial": str(trial.number),
                "overrides": " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())}
        try:
            outcome = train(trial_cfg, on_epoch=on_epoch, group=tags)
        except TrialPruned:
            raise optuna.TrialPruned() from None
        on_trial(outcome)
        return outcome.objective

    if remaining > 0:
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study.optimize(objective, n_trials=remaining, catch=())
        finally:
            optuna.logging.set_verbosity(verbosity)
    return study, group["sweep_id"]


def end_search(cfg: DictConfig, study, sweep_id: str):
    """The end of a search: its parent run closed with the winning setting. Returns (summary line, and with tracking
    on: the child runs, the settings best first, the lines that say where to look; else None)."""
    import optuna

    from mlabel_exp.comparison.groups import rank_settings

    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    summary = f"{len(finished)} complete, {pruned} pruned"
    if finished:
        summary += f"; best val mAP {study.best_value:.4f} with {study.best_params}"
    log.info("study %r: %s", study.study_name, summary)
    if not cfg.tracking.enabled:
        return summary, None
    return summary, end_sweep_parent(resolved_tracking(cfg), sweep_id, "FINISHED", summary, rank_settings)
