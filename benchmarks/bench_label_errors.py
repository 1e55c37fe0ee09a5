"""The label check against labels made wrong on purpose: precision and recall of its top-N (image, class) pairs.

A copy of the synthetic data set gets known errors (data.synthetic.write_label_errors: each positive dropped with
probability --drop, each negative made positive with probability --add, seeded); a --folds-fold sweep of short smallcnn
runs trains on it (the models learn from the wrong labels too, as on a user's data), and one run with a single
validation split (data.val_fraction=0.2) is the baseline. Ranked against the injected errors:

- out-of-fold, confident learning: ``python -m mlabel_exp.labels``' ranking (metrics.label_issues.find_label_issues);
- out-of-fold, plain loss: every pair of the same out-of-fold probabilities by its binary cross-entropy;
- single split, plain loss (the baseline): the pairs of the single run's validation images by their loss (the other
  80% of the images have no honest score).

Precision@N is the share of the first N pairs that are injected errors, recall@N the share of the injected errors
among them; N = 100 and N = the number injected. Then the cost of the ranking step alone on 10,000 images x 14
classes of constructed probabilities. About 10 minutes on 2 cores (the defaults):

    .venv/bin/python benchmarks/bench_label_errors.py [--images 2000] [--size 48] [--epochs 8] [--folds 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

EXPERIMENT = "label-errors"


def _train(args, root: Path, work: Path, *overrides: str) -> float:
    """One `python -m mlabel_exp.run` (a sweep with -m) on ``root``; its seconds."""
    cmd = [sys.executable, "-m", "mlabel_exp.run", *overrides, "data=folder", f"data.root={root}", "model=smallcnn",
           f"model.input_size={args.size}", f"trainer.epochs={args.epochs}", "trainer.batch_size=32",
           "trainer.progress=none", f"data.cache_dir={work / 'cache'}", f"tracking.uri=sqlite:///{work}/mlflow.db",
           f"tracking.experiment={EXPERIMENT}", "tracking.log_model=false", "diagnostics.enabled=false",
           f"hydra.sweep.dir={work / 'multirun'}", f"hydra.run.dir={work / 'single'}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if done.returncode:
        sys.exit(f"training failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _rows(methods: dict, errors: set, n_values: list[int]) -> list[str]:
    from mlabel_exp.metrics.label_issues import precision_recall_at

    lines = ["| ranking | pairs ranked | " + " | ".join(f"precision@{n} | recall@{n}" for n in n_values) + " |",
             "|---|---:|" + "---:|---:|" * len(n_values)]
    for name, (rows, classes, scored) in methods.items():
        cells = [f"{v:.3f}" for n in n_values for v in precision_recall_at(rows, classes, errors, n)]
        lines.append(f"| {name} | {len(rows)} of {scored} | " + " | ".join(cells) + " |")
    return lines


def _rankings(uri: str, errors_file: Path):
    """(the rankings as rows and classes of the out-of-fold table, the injected errors there, the out-of-fold table)."""
    import numpy as np

    from mlabel_exp.comparison.folds import out_of_fold
    from mlabel_exp.comparison.groups import is_fold_run
    from mlabel_exp.comparison.paired import run_predictions
    from mlabel_exp.metrics.label_issues import find_label_issues, rank_by_loss
    from mlabel_exp.tracking import query

    runs = [r for r in query.list_runs(uri, EXPERIMENT) if r["status"] == "FINISHED" and "mlabel.kind" not in r["tags"]]
    oof = out_of_fold(uri, [r for r in runs if is_fold_run(r)])
    row_of, col_of = {f: i for i, f in enumerate(oof.files)}, {c: j for j, c in enumerate(oof.classes)}
    errors = set()
    for line in errors_file.read_text().splitlines()[1:]:
        image, cls, _ = line.split(",")
        errors.add((row_of[f"im{image}.jpg"], col_of[cls]))
    known = int((oof.targets >= 0).sum())
    issues = find_label_issues(oof.probs, oof.targets)
    single = run_predictions(uri, next(r for r in runs if not is_fold_run(r))["run_id"], "val")
    rows, classes = rank_by_loss(single.probs, single.targets)
    as_oof = np.array([row_of[single.files[r]] for r in rows], dtype=np.int64)
    methods = {"out-of-fold, confident learning (the label check)": (issues.row, issues.cls, known),
               "out-of-fold, plain loss": (*rank_by_loss(oof.probs, oof.targets), known),
               "single split, plain loss (baseline)": (as_oof, classes, known)}
    return methods, errors, oof


def _ranking_cost(n: int = 10_000, c: int = 14) -> float:
    """Seconds of find_label_issues on constructed out-of-fold probabilities of n images x c classes (best of 3)."""
    import numpy as np

    from mlabel_exp.metrics.label_issues import find_label_issues

    rng = np.random.default_rng(0)
    targets = (rng.random((n, c)) < rng.uniform(0.01, 0.4, c)).astype(np.int8)
    probs = 1 / (1 + np.exp(-(3 * (2 * targets - 1) + rng.normal(0, 1.5, (n, c)))))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        find_label_issues(probs, targets)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--drop", type=float, default=0.1, help="share of positives dropped (missing labels)")
    p.add_argument("--add", type=float, default=0.01, help="share of negatives made positive (wrong labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="a folder to keep the data, runs and store in (default: a temporary one)")
    args = p.parse_args()

    from mlabel_exp.data.synthetic import write_label_errors

    print(_common.machine_line())
    print(_common.calibration_line(), flush=True)
    clean = _common.dataset(args.images, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        errors = write_label_errors(clean, work / "noisy", args.drop, args.add, args.seed)
        print(f"{args.images} synthetic images at {args.size} px; injected {len(errors)} errors (seed {args.seed}): "
              f"{sum(g == 0 for _, _, g in errors)} positives dropped (p={args.drop}), "
              f"{sum(g == 1 for _, _, g in errors)} negatives made positive (p={args.add})", flush=True)
        folds = _train(args, work / "noisy", work, "-m", f"data.folds={args.folds}",
                       "data.fold=" + ",".join(map(str, range(args.folds))))
        single = _train(args, work / "noisy", work)
        print(f"training: {args.folds}-fold sweep {folds:.0f} s, single split {single:.0f} s (smallcnn, "
              f"{args.epochs} epochs)", flush=True)
        uri = f"sqlite:///{work}/mlflow.db"
        methods, found, oof = _rankings(uri, work / "noisy" / "injected_errors.csv")
        if args.keep:
            print(f"kept in {work}: python -m mlabel_exp.labels run=latest tracking.uri={uri} "
                  f"experiment={EXPERIMENT}")
    from mlabel_exp.metrics import stats

    mean_ap, low, high = stats.map_interval(oof.probs, oof.targets, n_resamples=300)
    print(f"out-of-fold mAP against the wrong labels {mean_ap:.4f} [{low:.4f}, {high:.4f}]; folds' own val mAP "
          f"{', '.join(f'{v:.4f}' for v in oof.fold_maps)}")
    print("\n".join(_rows(methods, found, [100, len(found)])))
    print(f"the ranking step alone (find_label_issues) on 10,000 images x 14 classes: {_ranking_cost():.3f} s")


if __name__ == "__main__":
    main()
