"""Out-of-fold predictions of a fold sweep (``-m data.fold=0,...,K-1 data.folds=K``): every image outside the test
split was scored once, by the model that did not train on it. ``out_of_fold`` gathers them from the sweep's runs (each
run's predictions/val.csv holds its own fold; its split.json says which images the folds hold) into one table, the
probabilities of a fold's seeds averaged per image; ``write_out_of_fold`` writes it with the out-of-fold AP per class
and mAP, each with a bootstrap interval over the images; ``log_out_of_fold`` logs them on the sweep's parent run."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlabel_exp.comparison.groups import is_fold_run, objective, rank_settings
from mlabel_exp.comparison.paired import run_predictions
from mlabel_exp.errors import ConfigError
from mlabel_exp.floats import written
from mlabel_exp.fsutil import write_atomic
from mlabel_exp.inference.outputs import write_predictions
from mlabel_exp.metrics import stats
from mlabel_exp.tracking import query
from mlabel_exp.tracking.runs import log_files, log_metrics_to_run

log = logging.getLogger(__name__)

FOLDER = "out_of_fold"  # where the files go, locally and on the parent run


@dataclass
class OutOfFold:
    """Every non-test image of a fold sweep's setting, once, scored by the model of its fold."""
    setting: str             # the setting's name (groups.rank_settings): the sweep's winner where it varied more
    classes: list[str]
    files: list[str]         # by file name
    fold: np.ndarray         # the fold that scored each image
    probs: np.ndarray        # N x C: the mean over the fold's seeds of their probabilities, as written (float32)
    targets: np.ndarray      # 1 positive, 0 negative, -1 unknown
    folds: int
    seeds: int               # seed runs averaged per fold (at least; a fold may have more)
    run_ids: list[str]
    fold_maps: list[float]   # each fold's mean best val mAP over its seeds (what compare tests)


def _fold_of(run: dict) -> int:
    return int(run["params"]["data.fold"])


def out_of_fold(uri: str, runs: list[dict]) -> OutOfFold:
    """The out-of-fold table of the finished fold runs among ``runs`` (a sweep's): of their best setting over folds
    where the sweep varied more than the fold. A ConfigError says what is missing (no fold runs, a fold never
    finished, a fold scored in part)."""
    fold_runs = [r for r in runs if is_fold_run(r) and r["status"] == "FINISHED"]
    if not fold_runs:
        raise ConfigError("no finished fold run (data.folds=K) among the runs: out-of-fold predictions need a fold "
                          "sweep, e.g. python -m mlabel_exp.run -m data.folds=5 data.fold=0,1,2,3,4")
    best = rank_settings(fold_runs)[0]
    return assemble(uri, best.runs, best.name)


def assemble(uri: str, runs: list[dict], setting: str = "") -> OutOfFold:
    """One setting's fold runs into the out-of-fold table: each fold's validation images scored by its runs (the
    probabilities of its seeds averaged), together every image of the folds exactly once."""
    k = int(runs[0]["params"]["data.folds"])
    by_fold = {f: [r for r in runs if _fold_of(r) == f] for f in range(k)}
    missing = [f for f, rs in by_fold.items() if not rs]
    if missing:
        raise ConfigError(f"{setting or 'the setting'}: no finished run on fold(s) {', '.join(map(str, missing))} of "
                          f"data.folds={k}: run them (-m data.fold={','.join(map(str, missing))}) to score every image")
    parts = [_fold_part(uri, f, rs) for f, rs in by_fold.items()]
    _check_partition(parts, by_fold)
    files = [f for part in parts for f in part[1]]
    order = sorted(range(len(files)), key=files.__getitem__)
    first = parts[0][0]
    probs = np.concatenate([p[2] for p in parts])[order]
    targets = np.concatenate([p[3] for p in parts])[order]
    fold = np.concatenate([np.full(len(p[1]), f) for f, p in enumerate(parts)])[order]
    return OutOfFold(setting, first.classes, [files[i] for i in order], fold, written(probs), targets, k,
                     min(len(rs) for rs in by_fold.values()), [r["run_id"] for rs in by_fold.values() for r in rs],
                     [float(np.mean([objective(r["metrics"]) for r in rs])) for rs in by_fold.values()])


def _fold_part(uri: str, fold: int, runs: list[dict]):
    """(one run's predictions, the fold's files, the mean probabilities of its runs, targets, its split.json)."""
    read = [run_predictions(uri, r["run_id"], "val") for r in runs]
    split = query.artifact_text(uri, runs[0]["run_id"], "split.json")
    if any(p is None for p in read) or split is None:
        raise ConfigError(f"fold {fold}: run {runs[0]['run_id'][:8]} has no predictions/val.csv or split.json (a run "
                          "of an earlier version, or one that ended before validating)")
    split = json.loads(split)
    held = sorted(split["val"])
    for run, scored in zip(runs, read):
        if scored.files != held:
            steps = run["params"].get("trainer.max_steps_per_epoch", "0")
            why = f" (trainer.max_steps_per_epoch={steps})" if steps not in ("0", "") else ""
            raise ConfigError(f"fold {fold}: run {run['run_id'][:8]} scored {len(scored.files)} of the {len(held)} "
                              f"images of its fold{why}: out-of-fold predictions need every image of every fold "
                              "scored; train the folds with trainer.max_steps_per_epoch=0")
        if scored.classes != read[0].classes or not np.array_equal(scored.targets, read[0].targets):
            raise ConfigError(f"fold {fold}: runs {runs[0]['run_id'][:8]} and {run['run_id'][:8]} have other classes "
                              "or labels: they were trained on other data")
    probs = np.mean([p.probs for p in read], axis=0)
    return read[0], held, probs, read[0].targets, split


def _check_partition(parts: list, by_fold: dict) -> None:
    """The folds' validation images are disjoint and together every image the folds hold (train + val of a fold),
    with the same classes: else the runs were not folds of one assignment."""
    first = parts[0]
    holds = set(first[4]["train"]) | set(first[4]["val"])
    seen: set[str] = set()
    for f, part in enumerate(parts):
        if part[0].classes != first[0].classes:
            raise ConfigError(f"fold {f} has other classes than fold 0: the runs were trained on other data")
        if seen & set(part[1]) or (set(part[4]["train"]) | set(part[4]["val"])) != holds:
            raise ConfigError(f"fold {f} (run {by_fold[f][0]['run_id'][:8]}) is not a fold of the same assignment "
                              "as fold 0 (other images, data.split_seed or data.test_fraction)")
        seen |= set(part[1])
    if seen != holds:
        raise ConfigError(f"the folds' validation images ({len(seen)}) are not every image the folds hold "
                          f"({len(holds)})")


def write_out_of_fold(oof: OutOfFold, folder: Path, resamples: int = 1000) -> tuple[list[Path], dict[str, float]]:
    """out_of_fold.csv/.json (the table: a row per image, its fold, probabilities, true and unknown labels; labels
    at 0.5), per_class.csv (each class's out-of-fold AP with a 95% bootstrap interval over the images) and
    summary.json (mAP with its interval, and the mean of the folds' own mAP with the corrected t-interval); the files
    and the metrics for the parent run."""
    folder.mkdir(parents=True, exist_ok=True)
    files = write_predictions(folder, "out_of_fold", oof.files, oof.probs, oof.classes, 0.5, oof.targets,
                              extra={"fold": [int(f) for f in oof.fold]})
    intervals = stats.per_class_ap_intervals(oof.probs, oof.targets, n_resamples=resamples)
    per_class = pd.DataFrame({"class": oof.classes, "positives": (oof.targets == 1).sum(0), "AP": intervals.ap,
                              "AP low": intervals.low, "AP high": intervals.high})
    write_atomic(folder / "per_class.csv", per_class.to_csv(index=False))
    mean_ap, low, high = stats.map_interval(oof.probs, oof.targets, n_resamples=resamples)
    over_folds = stats.seed_interval(oof.fold_maps, test_train_ratio=1 / (oof.folds - 1))
    summary = {"setting": oof.setting, "folds": oof.folds, "seeds_per_fold": oof.seeds, "images": len(oof.files),
               "mAP": mean_ap, "mAP_low": low, "mAP_high": high, "confidence": 0.95, "resamples": resamples,
               "fold_mAP": oof.fold_maps, "fold_mean_mAP": over_folds.mean, "fold_mean_mAP_low": over_folds.ci_low,
               "fold_mean_mAP_high": over_folds.ci_high, "run_ids": oof.run_ids,
               "note": "mAP: one ranking per class of every image's out-of-fold probability (the K models' scores "
                       "pooled), interval: percentile bootstrap over the images; fold_mean_mAP: the mean of each "
                       "fold's best val mAP (chosen on that fold: slightly optimistic), interval: t over folds with "
                       "Nadeau & Bengio's correction; a fold's seeds are averaged per image"}
    write_atomic(folder / "summary.json", json.dumps(summary, indent=1))
    metrics = {"oof/mAP": mean_ap, "oof/mAP_low": low, "oof/mAP_high": high, "oof/images": float(len(oof.files))}
    return [*files, folder / "per_class.csv", folder / "summary.json"], metrics


def log_out_of_fold(uri: str, parent_id: str, runs: list[dict], folder: Path) -> str:
    """The out-of-fold table of a finished fold sweep, written under ``folder`` and logged on its parent run
    (artifacts out_of_fold/, metrics oof/*); the line that says so."""
    oof = out_of_fold(uri, runs)
    files, metrics = write_out_of_fold(oof, folder)
    log_files(uri, parent_id, files, FOLDER)
    log_metrics_to_run(uri, parent_id, metrics, step=0)
    seeds = f", {oof.seeds} seeds a fold averaged" if oof.seeds > 1 else ""
    return (f"out-of-fold: mAP {metrics['oof/mAP']:.4f} [{metrics['oof/mAP_low']:.4f}, {metrics['oof/mAP_high']:.4f}] "
            f"on {len(oof.files)} images ({oof.folds} folds{seeds}): {folder}")
