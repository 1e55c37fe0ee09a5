"""Which settings win, and is it more than noise: ``compare``'s runs grouped by their settings (every param but the
seed), each group's objective over its seeds with a t-interval, and the best group against each other one by a paired
bootstrap over the evaluation images (``stats``), using the per-image probabilities every run logged.

Runs are paired only when they were scored on the same images (the test split when every run has one, otherwise
validation; ``data.split_seed`` keeps the split fixed across seeds). Otherwise no paired test is made and the
verdicts come from the across-seed intervals (Welch's t-test), which needs two or more seeds per group.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlabel_exp.analysis import stats
from mlabel_exp.tracking import query
from mlabel_exp.tracking.runs import BEST_SCORE

log = logging.getLogger(__name__)

#: Params that are not settings: the seed (what a group repeats over), and where and how fast a run happened to run
#: (the device, threads, workers, memory layout, precision, the data root's absolute path on that machine).
NOT_SETTINGS = ("seed", "device", "precision", "world_size", "data.num_workers", "data.num_workers_used",
                "data.decoded_cache_used", "data.root_resolved", "trainer.device", "trainer.num_threads",
                "trainer.channels_last", "trainer.amp", "trainer.amp_dtype")
LEGACY_BEST_SCORE = "best/val_mAP"  # BEST_SCORE in runs logged before the metric names were unified
COLUMNS = ["group", "verdict", "n", "mean", "std", "ci_low", "ci_high", "eval_mAP", "difference", "diff_ci_low",
           "diff_ci_high", "p_value", "seeds", "values", "run_ids"]


def objective(metrics: dict) -> float:
    """A run's best val mAP (also from runs logged before the rename); NaN when it has none."""
    return metrics.get(BEST_SCORE, metrics.get(LEGACY_BEST_SCORE, float("nan")))


@dataclass
class Groups:
    table: pd.DataFrame      # one row per group, best first (COLUMNS)
    evaluated_on: str        # how the paired test was made, or why none was
    notes: list[str]


def settings_key(run: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in run["params"].items() if k not in NOT_SETTINGS))


def _typed_settings(run: dict) -> list[str]:
    """The overrides the run was started with (its ``overrides`` tag), the seed left out: what the user typed."""
    return [w for w in run["tags"].get("overrides", "").split() if not w.startswith("seed=")]


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by their settings, seed runs of a group in seed order. A group is named by what its runs were started
    with, less what every group shares (``model=resnet18``); failing that, by the params that differ between groups."""
    by_key: dict[tuple, list[dict]] = {}
    for run in runs:
        by_key.setdefault(settings_key(run), []).append(run)
    members = [sorted(rs, key=_seed_order) for rs in by_key.values()]
    typed = [set.intersection(*(set(_typed_settings(r)) for r in rs)) for rs in members]
    shared = set.intersection(*typed) if typed else set()
    names = [" ".join(sorted(t - shared)) for t in typed]
    if len(set(names)) < len(names) or not all(names):
        params = [dict(k) for k in by_key]
        differing = sorted({k for p in params for k in p if len({q.get(k) for q in params}) > 1})
        shared = [k for k in differing if all(k in p for p in params)]  # e.g. optimizer.name, not sgd's momentum
        keys = shared if len({tuple(p[k] for k in shared) for p in params}) == len(params) else differing
        names = [" ".join(f"{k}={p.get(k, '-')}" for k in keys) or "all runs" for p in params]
    return dict(zip(names, members))


def _seed_order(run: dict) -> tuple:
    seed = run["params"].get("seed", "")
    return (0, int(seed), "") if str(seed).isdigit() else (1, 0, str(seed))


def _predictions(uri: str, run_id: str, split: str) -> pd.DataFrame | None:
    """A run's per-image probabilities and true labels on ``split`` (predictions/<split>.csv), by file name. The
    probabilities are read back as the float32 the run scored (floats.written: lossless), so an mAP recomputed from
    them is the run's own to float32 precision (a file from before that was written at 6 decimals)."""
    text = query.artifact_text(uri, run_id, f"predictions/{split}.csv")
    if text is None:
        return None
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False)
    probabilities = [c for c in frame.columns if c not in ("file", "labels", "true_labels")]
    frame[probabilities] = frame[probabilities].astype(np.float32)
    return frame.set_index("file").sort_index()


def _arrays(frames: list[pd.DataFrame]) -> tuple[np.ndarray, list[np.ndarray]] | str:
    """Targets and each run's probabilities on the same images and classes, or why the runs cannot be paired."""
    first = frames[0]
    classes = [c for c in first.columns if c not in ("labels", "true_labels")]
    for frame in frames[1:]:
        if list(frame.index) != list(first.index):
            return "the runs were scored on different images"
        if [c for c in frame.columns if c not in ("labels", "true_labels")] != classes:
            return "the runs have different classes"
    if "true_labels" not in first.columns:
        return "the predictions hold no true labels"
    truth = [set(s.split()) for s in first["true_labels"]]
    targets = np.array([[c in t for c in classes] for t in truth], dtype=np.int64)
    return targets, [f[classes].to_numpy(np.float64) for f in frames]


def _paired_inputs(uri: str, runs: list[dict]) -> tuple[str, np.ndarray, dict[str, np.ndarray]] | str:
    """(split, targets, run_id -> probabilities) for a paired test, or why none can be made: the test split when every
    run scored the same test images, else validation."""
    why = []
    for split in ("test", "val"):
        frames = {r["run_id"]: _predictions(uri, r["run_id"], split) for r in runs}
        missing = [run_id[:8] for run_id, f in frames.items() if f is None]
        if missing:
            why.append(f"run(s) {', '.join(missing[:5])} have no predictions/{split}.csv")
            continue
        arrays = _arrays(list(frames.values()))
        if isinstance(arrays, str):
            why.append(f"{arrays} on the {split} split")
            continue
        targets, probs = arrays
        return split, targets, dict(zip(frames, probs))
    return "; ".join(why)


def _welch_p(best: list[float], other: list[float]) -> float | None:
    from scipy import stats as scipy_stats

    if len(best) < 2 or len(other) < 2:
        return None
    return float(scipy_stats.ttest_ind(best, other, equal_var=False).pvalue)


def compare_groups(uri: str, runs: list[dict], *, n_resamples: int = stats.DEFAULT_RESAMPLES,
                   seed: int = 0) -> Groups:
    """Per group: n, mean, std and t-interval of the best val mAP over seeds. With paired evaluation images, each
    group's mean mAP on them (``eval_mAP``) ranks the groups, and the best one is tested against each other one by the
    paired bootstrap (best - other: difference, interval, p-value, verdict), all from the same per-image
    probabilities. Without, the best val mAP ranks them and Welch's t-test across seeds gives the p-value."""
    groups = group_runs(runs)
    scores = {name: [objective(r["metrics"]) for r in members] for name, members in groups.items()}
    summaries = {name: stats.seed_interval(v) for name, v in scores.items()}
    notes = []
    paired = _paired_inputs(uri, runs) if len(groups) > 1 else "one group: nothing to compare"
    eval_map = {}
    if isinstance(paired, str):
        evaluated_on = f"no paired test: {paired}"
        if len(groups) > 1:
            notes.append(f"{evaluated_on}; verdicts from the across-seed intervals (Welch's t-test, 2+ seeds a group)")
        rank = {name: summaries[name].mean for name in groups}
    else:
        split, targets, probs = paired
        eval_map = {name: float(np.mean([stats.weighted_map(probs[r["run_id"]], targets)[0] for r in members]))
                    for name, members in groups.items()}
        rank = eval_map
        where = "test" if split == "test" else "validation"
        evaluated_on = (f"paired bootstrap over the {len(targets)} {where} images, seed runs drawn too "
                        f"({n_resamples} resamples)")
        if split == "val":
            notes.append("paired on validation, the images that also chose each run's best epoch: the differences "
                         "are slightly optimistic; a test split (data.test_fraction) gives held-out ones")
    order = sorted(groups, key=lambda n: -np.nan_to_num(rank[n], nan=-np.inf))
    best = order[0]
    rows = []
    for name in order:
        s, members = summaries[name], groups[name]
        row = {"group": name, "n": s.n, "mean": s.mean, "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high,
               "eval_mAP": eval_map.get(name), "seeds": " ".join(str(r["params"].get("seed", "?")) for r in members),
               "values": scores[name], "run_ids": " ".join(r["run_id"] for r in members)}
        p_value = None
        if name != best:
            if isinstance(paired, str):
                p_value = _welch_p(scores[best], scores[name])
            else:
                d = stats.paired_bootstrap(targets, [probs[r["run_id"]] for r in groups[best]],
                                           [probs[r["run_id"]] for r in members], n_resamples=n_resamples, seed=seed)
                row |= {"difference": d.difference, "diff_ci_low": d.ci_low, "diff_ci_high": d.ci_high}
                p_value = d.p_value
        row |= {"p_value": p_value, "verdict": stats.verdict(name == best, p_value) if len(groups) > 1 else ""}
        rows.append(row)
    if len(groups) > 2:
        notes.append(f"{len(groups) - 1} groups are each tested against the best, without a correction for "
                     "multiple comparisons: read a p just under 0.05 with care")
    if any(s.n < 2 for s in summaries.values()):
        notes.append("a group with one seed has no across-seed interval" + (
            ", and its paired test measures image noise only, not seed noise" if not isinstance(paired, str) else "")
            + ": repeat it, e.g. -m seed=0,1,2")
    elif any(s.n < 5 for s in summaries.values()):
        notes.append("with fewer than 5 seeds a group's seed noise is only roughly known (the bootstrap draws from "
                     "the few runs there are): more seeds narrow the intervals")
    return Groups(pd.DataFrame(rows, columns=COLUMNS), evaluated_on, notes)
