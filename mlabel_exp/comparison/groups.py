"""Which settings win, and is it more than noise: ``compare``'s runs grouped by the images they were scored on and
their settings (every param but the seed and where it ran), each group's objective over its seeds with a t-interval,
and the best group tested against each other one over seeds (``stats.seed_difference``: Welch's t-test).

Runs scored on other images (another validation or test set, other classes or labels, or a few batches of the same
split: ``trainer.max_steps_per_epoch``) are never in one group with, nor compared against, the runs scored on the most
images; they are listed, set apart, and the notes say how many images each scored. A seed run again is the same
observation: a group's repeats of one seed count once (their mean). When every compared run scored the same
evaluation images (the test split when each has one, otherwise validation; ``data.split_seed`` keeps the split fixed
across seeds), the values tested are the mAP recomputed on them from each run's per-image probabilities (unknown
labels masked, as the run's own metrics). Where a t-test over seeds cannot stand (a group with one seed, or seeds that
score exactly alike: ``stats.seed_test_limit``) the runs are compared over those images by a paired bootstrap (what it
says is about the trained models, not their settings), or else the verdict says it cannot tell, and why.

Fold runs (``data.folds=K``, the ``data.fold_set`` tag) each score their own fold: the runs of one setting over the
folds of one fold set (the same images, K and split seed) form one group, whose observations are its folds (the seeds
of a fold averaged), paired with another group's on the same fold and tested with the corrected resampled t-test
(``stats.fold_difference``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlabel_exp.comparison.paired import PredictionFiles, paired_inputs
from mlabel_exp.metrics import stats
from mlabel_exp.tracking.runs import BEST_SCORE

log = logging.getLogger(__name__)

#: Params that are not settings: the seed (what a group repeats over), and where and how fast a run happened to run
#: (the device, threads, workers, memory layout, the data root's absolute path on that machine). The precision in
#: effect (``precision``: float32, bfloat16) is a setting: it changes the results; trainer.amp only asks for it.
NOT_SETTINGS = ("seed", "device", "world_size", "data.num_workers", "data.num_workers_used",
                "data.decoded_cache_used", "data.root_resolved", "trainer.device", "trainer.num_threads",
                "trainer.channels_last", "trainer.amp", "trainer.amp_dtype")
#: Params that follow from the settings and the data (counts, the weights file a model name picks): they split no
#: group the settings do not, and would only lengthen the groups' names.
FACTS = ("model.weights_used", "data.num_images", "data.num_train", "data.num_val", "data.num_test",
         "metrics.classes_left_out", "data.unknown_labels")
#: Params that differ between the folds of one setting: the fold, and the counts that follow from it.
FOLD_VARIES = ("data.fold", "data.num_train", "data.num_val", "metrics.classes_left_out")
SPLITS = (("val", "validation"), ("test", "test"))  # prediction file stem, data set context (record.dataset_digests)
LEGACY_BEST_SCORE = "best/val_mAP"  # BEST_SCORE in runs logged before the metric names were unified
COLUMNS = ["group", "verdict", "n", "mean", "std", "ci_low", "ci_high", "eval_mAP", "difference", "diff_ci_low",
           "diff_ci_high", "p_value", "seeds", "values", "run_ids", "test", "unit"]
ALPHA = 0.05


def objective(metrics: dict) -> float:
    """A run's best val mAP (also from runs logged before the rename); NaN when it has none."""
    return metrics.get(BEST_SCORE, metrics.get(LEGACY_BEST_SCORE, float("nan")))


@dataclass
class Groups:
    table: pd.DataFrame      # one row per group, best first, groups set apart (other data) last (COLUMNS)
    evaluated_on: str        # what the verdicts test, on which values
    notes: list[str]

    @property
    def over(self) -> str:
        """What the best group's observations are, for headings: "folds" (fold runs) or "seeds"."""
        first = str(self.table["unit"].iloc[0]) if len(self.table) and "unit" in self.table else ""
        return "folds" if first.startswith("fold") else "seeds"


def is_fold_run(run: dict) -> bool:
    """A run of K-fold cross-validation (data.folds=K): it scored its own fold."""
    return run["params"].get("data.folds", "0") not in ("0", "")


def settings_key(run: dict) -> tuple:
    skip = NOT_SETTINGS + (FOLD_VARIES if is_fold_run(run) else ())
    return tuple(sorted((k, v) for k, v in run["params"].items() if k not in skip))


def _typed_settings(run: dict) -> list[str]:
    """The overrides the run was started with (its ``overrides`` tag), the seed and the fold left out: what the user
    typed."""
    return [w for w in run["tags"].get("overrides", "").split()
            if not w.startswith(("seed=", "data.fold=")) and w != "(none)"]


# ------------------------------------------------------------------ the images a run was scored on


@dataclass(frozen=True)
class Scored:
    """The images a run was scored on, per evaluation split: an id of them with their labels ('' where the run has no
    such split) and how many they are (None: not known)."""
    val: str = ""
    test: str = ""
    n_val: int | None = None
    n_test: int | None = None

    @property
    def label(self) -> str:
        return "data=" + "/".join(d for d in (self.val, self.test) if d)

    @property
    def images(self) -> int:
        return (self.n_val or 0) + (self.n_test or 0)


def data_key(run: dict, frames: PredictionFiles | None) -> Scored:
    """The images a run was scored on. The digest it logged of a split (ids, classes, labels, pixels) stands for
    them only where the run provably scored the whole split: no step limit (trainer.max_steps_per_epoch=0) and no
    image skipped, or its prediction file holds as many images as the split. Otherwise (a smoke run's few batches, a
    run that logged no digest) the key is a digest of the files, classes and labels (unknowns included) in its
    prediction file. ``frames`` None: the logged digests alone (a sweep's ranking, which reads no file). A fold run is
    keyed by its fold set (``_fold_key``)."""
    digests = run.get("datasets") or {}
    found = {split: _split_key(run, split, digests.get(context, ""), frames) for split, context in SPLITS}
    if run["tags"].get("data.fold_set"):
        found["val"] = _fold_key(run, frames)
    return Scored(found["val"][0], found["test"][0], found["val"][1], found["test"][1])


def _fold_key(run: dict, frames: PredictionFiles | None) -> tuple[str, int | None]:
    """A fold run's evaluation key: its fold set (the images the folds cut, data.folds, data.split_seed), the same for
    every fold, with as many images as the folds hold; ':part' where it scored only some batches of its fold."""
    p = run["params"]
    size = sum(int(p[k]) for k in ("data.num_train", "data.num_val") if str(p.get(k)).isdigit())
    whole = p.get("trainer.max_steps_per_epoch") == "0" and run.get("tags", {}).get("data.skipped_images") == "0"
    if not whole and frames is not None:
        scored = frames.get(run["run_id"], "val")
        whole = scored is not None and str(len(scored.files)) == p.get("data.num_val")
    key = f"folds:{run['tags']['data.fold_set']}"
    return (key, size) if whole or frames is None else (f"{key}:part", None)


def fold_mode(key: Scored) -> bool:
    """The compared runs are fold runs (``_fold_key``)."""
    return key.val.startswith("folds:")


def _split_key(run: dict, split: str, digest: str, frames: PredictionFiles | None) -> tuple[str, int | None]:
    size = run["params"].get(f"data.num_{split}")
    size = int(size) if str(size).isdigit() else None
    whole = run["params"].get("trainer.max_steps_per_epoch") == "0" and \
        run.get("tags", {}).get("data.skipped_images") == "0"
    if digest and (frames is None or whole):
        return digest, size
    scored = frames.get(run["run_id"], split) if frames is not None else None
    if scored is None or scored.targets is None:  # no file to tell: the logged digest, as runs were keyed before
        return digest, (size if digest else None)
    if digest and len(scored.files) == size:
        return digest, size
    h = hashlib.sha256(json.dumps([scored.classes, scored.files], ensure_ascii=False).encode())
    h.update(np.ascontiguousarray(scored.targets, dtype=np.int8).tobytes())
    return "files:" + h.hexdigest()[:10], len(scored.files)


def _other_images(key: Scored, main: Scored) -> str:
    """How a run's evaluation images differ from the compared runs', in plain words."""
    if key.val.endswith(":part") or fold_mode(key) != fold_mode(main):
        what = {True: "some batches of each fold (trainer.max_steps_per_epoch)", False: "whole folds"}
        mine = what[key.val.endswith(":part")] if fold_mode(key) else "one validation split"
        theirs = what[main.val.endswith(":part")] if fold_mode(main) else "one validation split"
        return f"scored on {mine}; the best group on {theirs}"
    for split, name in SPLITS:
        n, m = getattr(key, f"n_{split}"), getattr(main, f"n_{split}")
        if n != m:
            return f"scored on {n or 'no'} {name} images; the best group on {m or 'no'}"
    return f"scored on other images or labels than the best group ({key.n_val or 'no'} validation images each)"


def main_data(runs: list[dict], keys: dict[str, Scored]) -> Scored:
    """The images the compared runs share: those of the runs scored on the most images (a smoke run's few batches
    never outrank a whole split), then the ones most runs share, then the newest run's."""
    counts: dict[Scored, int] = {}
    for run in runs:
        counts[keys[run["run_id"]]] = counts.get(keys[run["run_id"]], 0) + 1
    newest = {k: max(r.get("start_time", 0) for r in runs if keys[r["run_id"]] == k) for k in counts}
    return max(counts, key=lambda k: (k.images, counts[k], newest[k]))


# ------------------------------------------------------------------ groups and their names

def group_runs(runs: list[dict], keys: dict[str, Scored] | None = None) -> dict[str, list[dict]]:
    """Runs by the images they were scored on (``keys``: run id -> ``Scored``) and settings, seed runs of a group in
    seed order."""
    keys = keys or {r["run_id"]: Scored() for r in runs}
    by_key: dict[tuple, list[dict]] = {}
    for run in runs:
        by_key.setdefault((keys[run["run_id"]], settings_key(run)), []).append(run)
    members = [sorted(rs, key=_seed_order) for rs in by_key.values()]
    return dict(zip(group_names(list(by_key), members), members))


def _covers(typed_key: str, param: str) -> bool:
    """A typed override names a param: model=resnet50 is model.name, dropout=heavy is dropout_value."""
    return param in (typed_key, f"{typed_key}.name", f"{typed_key}_value")


def group_names(keys: list[tuple], members: list[list[dict]]) -> list[str]:
    """Every setting that differs between the groups: what their runs were started with (``model=resnet50``), less
    what every group shares, then each param that differs and that no typed word names (``precision=bfloat16``,
    ``dropout_value=0.5`` where only the model was typed), then the images scored (``data=<digest>``) where they
    differ. A param some groups lack (sgd's momentum) follows from one that differs and is left out; so are FACTS."""
    typed = [set.intersection(*(set(_typed_settings(r)) for r in rs)) for rs in members]
    shared = set.intersection(*typed) if typed else set()
    typed = [sorted(t - shared) for t in typed]
    params = [dict(settings) for _, settings in keys]
    differing = sorted(k for k in set().union(*params) if k not in FACTS and all(k in p for p in params)
                       and len({p[k] for p in params}) > 1)
    names = []
    for words, p, (data, _) in zip(typed, params, keys):
        typed_keys = [w.split("=", 1)[0] for w in words]
        extra = [f"{k}={p[k]}" for k in differing if not any(_covers(t, k) for t in typed_keys)]
        names.append(words + extra)
    if len({data for data, _ in keys}) > 1:
        names = [n + [data.label] for n, (data, _) in zip(names, keys)]
    if len(keys) == 1:  # nothing differs: what its runs' names share, the seed left out
        words = [set(r.get("name", "").split()) for r in members[0]]
        names = [[w for w in members[0][0].get("name", "").split() if w in set.intersection(*words)
                  and not w.startswith(("seed=", "data.fold="))]]
    names = [" ".join(n) or "all runs" for n in names]
    if len(set(names)) < len(names):  # typed words that tell groups apart no param does (a facts-only difference)
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names


def _seed_order(run: dict) -> tuple:
    fold = run["params"].get("data.fold", "") if is_fold_run(run) else ""
    seed = run["params"].get("seed", "")
    fold = int(fold) if str(fold).isdigit() else -1
    return (fold, 0, int(seed), "") if str(seed).isdigit() else (fold, 1, 0, str(seed))


def observation(run: dict) -> str:
    """What one observation of a group is: a seed, or for a fold run its fold (the seeds of a fold are averaged into
    one observation: they share the fold's images, which the corrected test does not count as independent)."""
    if is_fold_run(run):
        return str(run["params"].get("data.fold"))
    return str(run["params"].get("seed", run["run_id"]))


def per_seed(members: list[dict], value) -> tuple[list[str], list[float]]:
    """One observation per seed (a fold run's: per fold): the mean of ``value(run)`` over its runs (a run without a
    seed is its own)."""
    by_seed: dict[str, list[float]] = {}
    for run in members:
        by_seed.setdefault(observation(run), []).append(value(run))
    return list(by_seed), [float(np.mean(v)) for v in by_seed.values()]


def unit(members: list[dict]) -> str:
    """What a group's observations are, in words: "seed", "fold", or "fold (S seeds each)"."""
    if not is_fold_run(members[0]):
        return "seed"
    seeds = len({r["params"].get("seed") for r in members})
    return "fold" if seeds == 1 else f"fold ({seeds} seeds each)"


def fold_ratio(runs: list[dict]) -> float:
    """Validation over training images of fold runs, averaged (1/(K-1) for K equal folds): the corrected resampled
    t-test's inflation of the variance."""
    ratios = [int(r["params"]["data.num_val"]) / int(r["params"]["data.num_train"]) for r in runs
              if str(r["params"].get("data.num_val")).isdigit() and str(r["params"].get("data.num_train")).isdigit()
              and int(r["params"]["data.num_train"]) > 0]
    return float(np.mean(ratios)) if ratios else 0.0


@dataclass
class Setting:
    """One setting of a sweep: its runs, and its best val mAP over seeds (one value a seed: repeats averaged; over
    folds for fold runs, ``unit`` says which)."""
    name: str
    seeds: list[str]
    values: list[float]
    runs: list[dict]
    unit: str = "seed"

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))


def rank_settings(runs: list[dict]) -> list[Setting]:
    """The settings of a sweep's runs that have a best val mAP, best mean over seeds first: what the sweep's parent
    names as its winner (not the luckiest seed). Grouped as compare groups them, on the logged digests."""
    scored = [r for r in runs if objective(r["metrics"]) == objective(r["metrics"])]
    keys = {r["run_id"]: data_key(r, None) for r in scored}
    found = []
    for name, members in group_runs(scored, keys).items():
        seeds, values = per_seed(members, lambda r: objective(r["metrics"]))
        found.append(Setting(name, seeds, values, members, unit(members)))
    return sorted(found, key=lambda s: -s.mean)


# ------------------------------------------------------------------ the comparison

@dataclass
class _Group:
    name: str
    members: list[dict]
    seeds: list[str]
    scores: list[float]      # the objective, one a seed
    tested: list[float]      # what the verdict tests, one a seed (scores, or the mAP on the shared images)
    apart: str = ""          # why this group is not compared (other data)
    ratio: float | None = None  # fold groups: validation over training images a fold (None: seeds)

    @property
    def shown(self) -> str:
        """The observations as the table says them: seeds ("0 1 2"), or folds ("folds 0 1 2 x seeds 0 1")."""
        if self.ratio is None:
            return " ".join(self.seeds)
        seeds = list(dict.fromkeys(str(r["params"].get("seed")) for r in self.members))
        return f"folds {' '.join(self.seeds)}" + (f" x seeds {' '.join(seeds)}" if len(seeds) > 1 else "")


def _fold_test(best: _Group, other: _Group) -> dict:
    """best - other over the folds both were run on (their seeds averaged per fold), paired by fold: the corrected
    resampled t-test (stats.fold_difference), else ``why`` it cannot be made."""
    common = [f for f in best.seeds if f in other.seeds]
    a = [best.tested[best.seeds.index(f)] for f in common]
    b = [other.tested[other.seeds.index(f)] for f in common]
    limit = stats.fold_test_limit(a, b)
    if limit is not None:
        return {"why": limit}
    d = stats.fold_difference(a, b, best.ratio, 1 - ALPHA)
    seeds = {r["params"].get("seed") for r in best.members + other.members}
    over = f"{len(common)} folds" + (f" x {len(seeds)} seeds" if len(seeds) > 1 else "")
    return {"difference": d.difference, "diff_ci_low": d.ci_low, "diff_ci_high": d.ci_high, "p_value": d.p_value,
            "test": d.method, "over": over}


def _test(best: _Group, other: _Group, paired, n_resamples: int, seed: int) -> dict:
    """best - other: difference, interval, p-value, test name: Welch's t-test over seeds where it can stand, else the
    runs over the shared images (paired bootstrap; ``runs_only`` says why), else ``why`` no test can be made. Fold
    groups: ``_fold_test``."""
    if best.ratio is not None:
        return _fold_test(best, other)
    limit = stats.seed_test_limit(best.tested, other.tested, ("the best group", "this group"))
    if limit is None:
        d = stats.seed_difference(best.tested, other.tested, 1 - ALPHA)
        return {"difference": d.difference, "diff_ci_low": d.ci_low, "diff_ci_high": d.ci_high, "p_value": d.p_value,
                "test": d.method}
    if isinstance(paired, str):
        return {"why": f"{limit}; and no images every run scored"}
    _, targets, probs = paired
    d = stats.paired_bootstrap(targets, [probs[r["run_id"]] for r in best.members],
                               [probs[r["run_id"]] for r in other.members], n_resamples=n_resamples, seed=seed,
                               confidence=1 - ALPHA, draw_runs=False)
    single = len(best.tested) == len(other.tested) == 1
    test = ("paired bootstrap over images (one seed a group: the runs, not the settings)" if single else
            "paired bootstrap over images (no seed spread to test: the runs, not the settings)")
    return {"difference": d.difference, "diff_ci_low": d.ci_low, "diff_ci_high": d.ci_high, "p_value": d.p_value,
            "test": test, "runs_only": "1 seed" if single else "runs over images"}


def _row(group: _Group, best: _Group, paired, eval_map: dict, n_groups: int, n_resamples: int, seed: int) -> dict:
    s = stats.seed_interval(group.scores, test_train_ratio=group.ratio or 0.0)
    row = {"group": group.name, "n": s.n, "mean": s.mean, "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high,
           "eval_mAP": eval_map.get(group.name), "seeds": group.shown, "values": group.scores,
           "run_ids": " ".join(r["run_id"] for r in group.members), "test": "", "unit": unit(group.members)}
    if group.apart:
        return row | {"verdict": group.apart}
    found = _test(best, group, paired, n_resamples, seed) if group is not best else {}
    why, runs_only, over = found.pop("why", ""), found.pop("runs_only", ""), found.pop("over", "")
    row |= found
    interval = (row["diff_ci_low"], row["diff_ci_high"]) if "diff_ci_low" in row else None
    word = stats.verdict(group is best, row.get("p_value"), ALPHA, interval, runs_only, why, over) \
        if n_groups > 1 else ""
    return row | {"verdict": word}


def compare_groups(uri: str, runs: list[dict], *, n_resamples: int = stats.DEFAULT_RESAMPLES,
                   seed: int = 0, frames: PredictionFiles | None = None) -> Groups:
    """Per group: n (seeds), mean, std and t-interval of the best val mAP over seeds. The groups on the main data are
    ranked by their mean over seeds of what the test uses (``eval_mAP``: the mAP on the images every run scored, or
    else the best val mAP), and the best is tested against each other one (best - other: difference, interval,
    p-value, verdict: ``_test``). Groups scored on other images are listed last, set apart, untested. ``frames``:
    the runs' prediction files, where the caller reads them too."""
    frames = frames or PredictionFiles(uri)
    keys = {r["run_id"]: data_key(r, frames) for r in runs}
    main = main_data(runs, keys) if runs else Scored()
    groups = group_runs(runs, keys)
    compared = [r for r in runs if keys[r["run_id"]] == main]
    n_main = sum(keys[rs[0]["run_id"]] == main for rs in groups.values())
    ratio = fold_ratio(compared) if fold_mode(main) else None
    paired = (FOLDS if ratio is not None else paired_inputs(frames, compared)) if n_main > 1 \
        else "one group: nothing to compare"
    value = (lambda r: objective(r["metrics"])) if isinstance(paired, str) else \
        (lambda r: float(stats.weighted_map(paired[2][r["run_id"]], paired[1])[0]))
    built = []
    for name, members in groups.items():
        seeds, scores = per_seed(members, lambda r: objective(r["metrics"]))
        key = keys[members[0]["run_id"]]
        apart = "" if key == main else f"set apart: {_other_images(key, main)}"
        tested = per_seed(members, value)[1] if not apart else scores
        built.append(_Group(name, members, seeds, scores, tested, apart, ratio if not apart else None))
    eval_map = {} if isinstance(paired, str) else {g.name: float(np.mean(g.tested)) for g in built if not g.apart}
    built.sort(key=lambda g: (bool(g.apart), -np.nan_to_num(np.mean(g.tested), nan=-np.inf)))
    rows = [_row(g, built[0], paired, eval_map, n_main, n_resamples, seed) for g in built]
    table = pd.DataFrame(rows, columns=COLUMNS)
    return Groups(table, evaluated_on(paired, table), _notes(built, paired, keys, main, table))


#: ``paired`` of fold runs: each scored its own fold, so no images are shared; the test pairs folds instead.
FOLDS = "fold runs: each scored on its own fold"


def evaluated_on(paired, table: pd.DataFrame) -> str:
    """What the verdicts test, on which values."""
    tests = sorted({t for t in table["test"] if t})
    how = "; ".join(tests) if tests else "no test"
    if paired == FOLDS:
        return f"{how} of the best val mAP of each fold (its seeds averaged), paired by fold"
    if isinstance(paired, str):
        return f"{how} of the best val mAP over seeds (no shared images: {paired})"
    split, targets, _ = paired
    where = "test" if split == "test" else "validation"
    return f"{how} of the mAP on the {len(targets)} {where} images every run scored"


def _notes(built: list[_Group], paired, keys: dict, main: Scored, table: pd.DataFrame) -> list[str]:
    """What qualifies the verdicts: runs set apart, repeats, few seeds, cut intervals, validation pairing, several
    tests."""
    notes = []
    for data in dict.fromkeys(keys[g.members[0]["run_id"]] for g in built if g.apart):
        ids = [r["run_id"][:8] for g in built if g.apart for r in g.members if keys[r["run_id"]] == data]
        notes.append(f"set apart {len(ids)} run(s) {_other_images(data, main)} ({data.label}, the compared runs' "
                     f"{main.label}): {' '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}; never grouped or tested "
                     "with them")
    for g in built:
        if g.ratio is not None:
            continue  # fold groups: _fold_notes
        if len(g.members) > len(g.seeds):
            notes.append(f"{g.name}: {len(g.members)} runs of {len(g.seeds)} seed(s) ({' '.join(g.seeds)}): a seed run "
                         "again is one observation (the mean of its repeats), n counts seeds")
        if len(g.scores) > 1 and stats.seed_interval(g.scores).clipped:
            notes.append(f"{g.name}: its 95% t-interval over {len(g.scores)} seeds reached past 0 or 1 and is cut "
                         "there (mAP lies in [0, 1]): the seeds spread too much for so few; more seeds narrow it")
    compared = [g for g in built if not g.apart]
    if paired == FOLDS or any(g.ratio is not None for g in compared):
        return notes + _fold_notes(compared)
    return notes + _test_notes(compared, paired, table)


def _fold_notes(compared: list[_Group]) -> list[str]:
    """What qualifies the groups of fold runs and their tests."""
    notes = []
    for g in compared:
        if len(g.members) > len(g.seeds):
            notes.append(f"{g.name}: {len(g.members)} runs over {len(g.seeds)} fold(s) ({g.shown}): the seeds of a "
                         "fold are averaged into one value (they share its images), n counts folds")
        missing = [f for g2 in compared for f in g2.seeds if f not in g.seeds]
        if missing:
            notes.append(f"{g.name}: no finished run on fold(s) {' '.join(sorted(set(missing)))}: it is compared on "
                         "the folds it has")
    if compared and compared[0].ratio is not None:
        notes.append(f"fold runs: each run is scored on its own fold (n_test/n_train {compared[0].ratio:.3f}); the "
                     "intervals and tests inflate the variance over folds by (1/J + n_test/n_train) (Nadeau & "
                     "Bengio's correction: the folds' training sets overlap), so 5 folds give wide intervals: 'not "
                     "distinguishable' is not 'equal'")
    if len(compared) > 2:
        notes.append(f"{len(compared) - 1} groups are each tested against the best, without a correction for "
                     "multiple comparisons: read a p just under 0.05 with care")
    return notes


def _test_notes(compared: list[_Group], paired, table: pd.DataFrame) -> list[str]:
    """What qualifies the tests between the compared groups."""
    if len(compared) < 2:
        return []
    notes = []
    if isinstance(paired, str):
        notes.append(f"no shared evaluation images ({paired}): the verdicts test the best val mAP over seeds")
    elif paired[0] == "val":
        notes.append("compared on validation, the images that also chose each run's best epoch: the values are "
                     "slightly optimistic; a test split (data.test_fraction) gives held-out ones")
    if len(compared) > 2:
        notes.append(f"{len(compared) - 1} groups are each tested against the best, without a correction for "
                     "multiple comparisons: read a p just under 0.05 with care")
    alike = [g.name for g in compared if len(g.tested) > 1 and np.ptp(g.tested) == 0]
    if alike:
        notes.append(f"{', '.join(alike)}: the seeds score exactly alike, so the spread over seeds is not measured "
                     "(a seed that changes nothing, or one run logged twice): no t-test against such a group")
    if any(len(g.seeds) < 2 for g in compared):
        runs_only = any(str(t).startswith("paired bootstrap") for t in table["test"])
        notes.append("a group with one seed has no across-seed interval and no t-test" + (
            "; runs are then compared run against run over the images (`worse run`): that says which trained "
            "model is better on such images, not which setting (seed noise is not measured)" if runs_only
            else "") + ": repeat it, e.g. -m seed=0,1,2")
    elif any(len(g.seeds) < 5 for g in compared):
        notes.append("with 2-4 seeds a group the t-test holds its 5% error rate but sees only large differences "
                     "(wide intervals): 'not distinguishable' is not 'equal'; more seeds make it more sensitive")
    return notes
