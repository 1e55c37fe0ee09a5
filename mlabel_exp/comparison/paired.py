"""The prediction files of compared runs and the images they share: each run's predictions/<split>.csv read once
(``PredictionFiles``), and the targets with every run's probabilities on the images every run scored
(``paired_inputs``), which the groups' tests and the per-class differences both pair on."""

from __future__ import annotations

import numpy as np

from mlabel_exp.inference.outputs import read_predictions
from mlabel_exp.tracking import query


class PredictionFiles:
    """Each run's predictions/<split>.csv (``outputs.Predictions``, rows by file name), read once per comparison."""

    def __init__(self, uri: str):
        self.uri, self.read = uri, {}

    def get(self, run_id: str, split: str):
        if (run_id, split) not in self.read:
            self.read[run_id, split] = run_predictions(self.uri, run_id, split)
        return self.read[run_id, split]


def run_predictions(uri: str, run_id: str, split: str):
    """A run's predictions/<split>.csv read back (``outputs.read_predictions``: probabilities as written, true and
    unknown labels), rows by file name; None when it has none."""

    text = query.artifact_text(uri, run_id, f"predictions/{split}.csv")
    if text is None:
        return None
    return read_predictions(text, "csv", f"run {run_id[:8]}: predictions/{split}.csv").sorted()


def shared_arrays(scored: list) -> tuple[np.ndarray, list[np.ndarray]] | str:
    """Targets (1, 0, -1 unknown) and each run's probabilities on the same images, classes and labels, or why the runs
    cannot be paired (each run is scored against its own labels: they must be the same). The probabilities are the
    float32 the run scored (floats.written: lossless), so an mAP recomputed from them is the run's own to float32
    precision."""
    first = scored[0]
    if first.targets is None:
        return "the predictions hold no true labels"
    for other in scored[1:]:
        if other.files != first.files:
            return "the runs were scored on different images"
        if other.classes != first.classes:
            return "the runs have different classes"
        if other.targets is None or not np.array_equal(other.targets, first.targets):
            return "the runs' true labels differ"
    return first.targets, [p.probs.astype(np.float32).astype(np.float64) for p in scored]


def paired_inputs(frames: PredictionFiles, runs: list[dict]) -> tuple[str, np.ndarray, dict[str, np.ndarray]] | str:
    """(split, targets, run_id -> probabilities) of the images every run scored, or why there are none: the test
    split when every run scored the same test images, else validation."""
    why = []
    for split in ("test", "val"):
        found = {r["run_id"]: frames.get(r["run_id"], split) for r in runs}
        missing = [run_id[:8] for run_id, f in found.items() if f is None]
        if missing:
            why.append(f"run(s) {', '.join(missing[:5])} have no predictions/{split}.csv")
            continue
        arrays = shared_arrays(list(found.values()))
        if isinstance(arrays, str):
            why.append(f"{arrays} on the {split} split")
            continue
        targets, probs = arrays
        return split, targets, dict(zip(found, probs))
    return "; ".join(why)
