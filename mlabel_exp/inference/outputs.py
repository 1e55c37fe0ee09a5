"""The prediction files: per-image probabilities and labels (CSV and JSON, lossless numbers, the labels decided from
exactly what is written) and the submission table; written by a training run (validation, test) and by predict."""

from __future__ import annotations

import json
from pathlib import Path

from mlabel_exp.fsutil import write_atomic


def label_names(row, classes) -> list[str]:
    return [c for c, on in zip(classes, row) if on]


def write_predictions(folder: Path, stem: str, files: list[str], probs, classes: list[str], thresholds=0.5,
                      targets=None) -> list[Path]:
    """``<stem>.csv`` and ``<stem>.json`` keyed by file: a probability per class and the labels at ``thresholds``
    (one number or one per class); with ``targets`` also the true labels. Probabilities and thresholds are written
    losslessly and the labels decided from exactly the numbers written (``floats``)."""
    import numpy as np
    import pandas as pd

    from mlabel_exp.data.index import check_class_names
    from mlabel_exp.floats import written

    check_class_names(classes)  # a class named like a column would overwrite it: refused at indexing, asserted here
    p = written(probs.numpy() if hasattr(probs, "numpy") else probs)
    t = written(np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(classes),)))
    predicted = p >= t
    frame = pd.DataFrame(p, columns=classes)
    frame.insert(0, "file", files)
    frame["labels"] = [" ".join(label_names(row, classes)) for row in predicted]
    records = {f: {"probabilities": dict(zip(classes, row.tolist())), "labels": label_names(hit, classes)}
               for f, row, hit in zip(files, p, predicted)}
    if targets is not None:
        true = np.asarray(targets) > 0.5  # positives only: an unknown label (-1) is not a true label
        frame["true_labels"] = [" ".join(label_names(row, classes)) for row in true]
        for f, row in zip(files, true):
            records[f]["true_labels"] = label_names(row, classes)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    write_atomic(csv_path, frame.to_csv(index=False))  # float64 fields as repr: the same decimals as the JSON
    payload = {"classes": classes, "thresholds": dict(zip(classes, t.tolist())), "predictions": records}
    write_atomic(json_path, json.dumps(payload, indent=1))
    return [csv_path, json_path]


def write_submission(path: Path, files: list[str], probs, classes: list[str], thresholds=0.5) -> Path:
    """One row per image, 0/1 columns in alphabetical class order (the original course's format); the same decisions
    as the predictions files."""
    import pandas as pd

    from mlabel_exp.floats import decide

    order = sorted(range(len(classes)), key=lambda i: classes[i])
    hits = decide(probs, thresholds).astype(int)[:, order]
    frame = pd.DataFrame(hits, columns=[classes[i] for i in order])
    frame.insert(0, "image", files)
    write_atomic(path, frame.to_csv(index=False))
    return path
