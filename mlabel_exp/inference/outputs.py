"""The prediction files: per-image probabilities and labels (CSV and JSON, lossless numbers, the labels decided from
exactly what is written) and the submission table; written by a training run (validation, test) and by predict, and
read back by ``read_predictions``, the one reader every consumer uses (compare, diagnostics, diagnose).

With the truth (a run's validation and test files) each image carries its known positives (``true_labels``) and its
unknown labels (``unknown_labels``: -1 in the data, masked out of every metric); every other class is a known
negative. In the CSV each list is one cell holding a JSON array (``["big dog", "red car"]``), so that no class name,
whatever it holds (spaces, commas, ``;``, ``|``), is cut apart or merged with another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlabel_exp.data.index import OUTPUT_COLUMNS, check_class_names
from mlabel_exp.errors import DataError
from mlabel_exp.floats import decide, written
from mlabel_exp.fsutil import write_atomic

LIST_COLUMNS = ("labels", "true_labels", "unknown_labels")  # the CSV's cells that hold a list of class names


def label_names(row, classes) -> list[str]:
    return [c for c, on in zip(classes, row) if on]


def _cell(names: list[str]) -> str:
    return json.dumps(names, ensure_ascii=False)


def write_predictions(folder: Path, stem: str, files: list[str], probs, classes: list[str], thresholds=0.5,
                      targets=None, extra: dict[str, list] | None = None) -> list[Path]:
    """``<stem>.csv`` and ``<stem>.json`` keyed by file: a probability per class and the labels at ``thresholds``
    (one number or one per class); with ``targets`` (1 positive, 0 negative, -1 unknown) also the true and the
    unknown labels. Probabilities and thresholds are written losslessly and the labels decided from exactly the
    numbers written (``floats``); lists of class names as JSON arrays (CSV cells too). ``extra``: more columns
    (name -> one int or str per file) after ``file``, and keys of each JSON record (the out-of-fold table's fold)."""
    import pandas as pd


    check_class_names(classes)  # a class named like a column would overwrite it: refused at indexing, asserted here
    extra = extra or {}
    clash = [c for c in classes if c in extra]
    if clash:
        raise DataError(f"class {clash[0]!r} has the name of the column {clash[0]!r} of {stem}.csv, which it would "
                        "overwrite; rename that class")
    p = written(probs.numpy() if hasattr(probs, "numpy") else probs)
    t = written(np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(classes),)))
    predicted = p >= t
    frame = pd.DataFrame(p, columns=classes)
    frame.insert(0, "file", files)
    for i, (name, values) in enumerate(extra.items(), start=1):
        frame.insert(i, name, list(values))
    frame["labels"] = [_cell(label_names(row, classes)) for row in predicted]
    records = {f: {**{k: v[i] for k, v in extra.items()}, "probabilities": dict(zip(classes, row.tolist())),
                   "labels": label_names(hit, classes)}
               for i, (f, row, hit) in enumerate(zip(files, p, predicted))}
    if targets is not None:
        y = np.asarray(targets.numpy() if hasattr(targets, "numpy") else targets)
        for column, rows in (("true_labels", y > 0.5), ("unknown_labels", y < 0)):
            frame[column] = [_cell(label_names(row, classes)) for row in rows]
            for f, row in zip(files, rows):
                records[f][column] = label_names(row, classes)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    write_atomic(csv_path, frame.to_csv(index=False))  # float64 fields as repr: the same decimals as the JSON
    payload = {"classes": classes, "thresholds": dict(zip(classes, t.tolist())), "predictions": records}
    write_atomic(json_path, json.dumps(payload, indent=1, ensure_ascii=False))
    return [csv_path, json_path]


def write_submission(path: Path, files: list[str], probs, classes: list[str], thresholds=0.5) -> Path:
    """One row per image, 0/1 columns in alphabetical class order (the original course's format); the same decisions
    as the predictions files."""
    import pandas as pd


    order = sorted(range(len(classes)), key=lambda i: classes[i])
    hits = decide(probs, thresholds).astype(int)[:, order]
    frame = pd.DataFrame(hits, columns=[classes[i] for i in order])
    frame.insert(0, "image", files)
    write_atomic(path, frame.to_csv(index=False))
    return path


# ------------------------------------------------------------------ reading them back

@dataclass
class Predictions:
    """A prediction file read back. ``probs`` are the written numbers (float64; ``.astype(np.float32)`` is exactly the
    float32 the run computed); ``targets`` 1 known positive, 0 known negative, -1 unknown (None: no truth, predict's
    files); ``marks_unknowns`` False for a file of an older run, which listed positives only (its unknown labels read
    as negatives: a reader that has the data set may mark them); ``thresholds`` from the JSON only."""
    classes: list[str]
    files: list[str]
    probs: np.ndarray
    labels: np.ndarray
    targets: np.ndarray | None
    marks_unknowns: bool
    thresholds: np.ndarray | None = None
    extra: dict[str, list] = field(default_factory=dict)  # read_predictions' ``extra`` columns, one value a file

    def sorted(self) -> Predictions:
        """The same, rows in file-name order (runs' files compared row by row)."""
        order = sorted(range(len(self.files)), key=self.files.__getitem__)
        return Predictions(self.classes, [self.files[i] for i in order], self.probs[order], self.labels[order],
                           None if self.targets is None else self.targets[order], self.marks_unknowns, self.thresholds,
                           {k: [v[i] for i in order] for k, v in self.extra.items()})


def read_predictions(text: str, fmt: str, where: str = "predictions", extra: tuple[str, ...] = ()) -> Predictions:
    """A ``write_predictions`` file (``fmt``: "csv" or "json") from its text, also one an older version wrote (lists
    joined by spaces, no unknown labels). ``where`` names the file in errors; ``extra``: the columns written with
    ``write_predictions``' ``extra`` (not classes), read into ``Predictions.extra`` (CSV cells as text)."""

    try:
        classes, files, probs, lists, thresholds = _read_json(text) if fmt == "json" else _read_csv(text, where, extra)
    except DataError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{where}: not a prediction file of this project ({type(e).__name__}: {e}); write it again "
                        "with python -m mlabel_exp.diagnose or predict") from e
    n = len(files)
    grids = {column: _grid(names, classes, where, column) for column, names in lists.items() if names is not None}
    targets = None
    if "true_labels" in grids:
        unknown = grids.get("unknown_labels", np.zeros((n, len(classes)), dtype=bool))
        both = np.argwhere(grids["true_labels"] & unknown)
        if len(both):
            raise DataError(f"{where}: {files[both[0][0]]} lists {classes[both[0][1]]!r} as true and as unknown")
        targets = np.where(unknown, -1, grids["true_labels"].astype(np.int8)).astype(np.int8)
    labels = grids.get("labels", np.zeros((n, len(classes)), dtype=bool))
    return Predictions(classes, files, probs.reshape(n, len(classes)), labels, targets,
                       "unknown_labels" in grids, thresholds, _extra(text, fmt, files, extra, where))


def _extra(text: str, fmt: str, files: list[str], names: tuple[str, ...], where: str) -> dict[str, list]:
    """The ``extra`` columns of a prediction file, one value a file (as written in the JSON, as text in the CSV)."""
    import io

    import pandas as pd

    if not names:
        return {}
    if fmt == "json":
        records = json.loads(text)["predictions"]
        found = {name: [records[f].get(name) for f in files] for name in names}
    else:
        frame = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype=str)
        found = {name: list(frame[name]) if name in frame.columns else [None] * len(files) for name in names}
    missing = [name for name, values in found.items() if any(v is None for v in values)]
    if missing:
        raise DataError(f"{where}: no {missing[0]!r} for every image; write it again")
    return found


def _read_json(text: str):
    payload = json.loads(text)
    classes, records = list(payload["classes"]), payload["predictions"]
    files = list(records)
    probs = np.array([[records[f]["probabilities"][c] for c in classes] for f in files], dtype=np.float64)
    lists = {c: [records[f][c] for f in files] if files and all(c in records[f] for f in files) else None
             for c in LIST_COLUMNS}
    lists["labels"] = lists["labels"] or [[] for _ in files]
    given = payload.get("thresholds")
    return classes, files, probs, lists, np.array([given[c] for c in classes], dtype=np.float64) if given else None


def _read_csv(text: str, where: str, extra: tuple[str, ...] = ()):
    import io

    import pandas as pd


    frame = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype=str)
    classes = [c for c in frame.columns if c not in OUTPUT_COLUMNS and c not in extra]
    probs = frame[classes].to_numpy(dtype=np.float64)
    lists = {c: _names(list(frame[c]), classes, where, c) if c in frame.columns else None for c in LIST_COLUMNS}
    return classes, list(frame["file"]), probs, lists, None


def _names(cells: list[str], classes: list[str], where: str, column: str) -> list[list[str]]:
    """Each cell's class names: a JSON array, or in a file an older version wrote, the names joined by spaces."""
    try:
        parsed = [json.loads(c) for c in cells]
        if all(isinstance(p, list) and all(isinstance(x, str) for x in p) for p in parsed):
            return parsed
    except json.JSONDecodeError:
        pass
    return [_space_joined(c, classes, f"{where} line {i + 2}, {column}") for i, c in enumerate(cells)]


def _space_joined(cell: str, classes: list[str], where: str) -> list[str]:
    """Class names joined by single spaces in class order (files before the JSON cells), read back exactly: where a
    name holds a space, by matching the names in class order; refused where two readings fit."""
    from functools import lru_cache


    @lru_cache(maxsize=None)
    def readings(start: int, first: int) -> tuple[tuple[str, ...], ...]:  # at most two readings of cell[start:]
        if start >= len(cell):
            return ((),)
        found = []
        for j in range(first, len(classes)):
            end = start + len(classes[j])
            if cell.startswith(classes[j], start) and (end == len(cell) or cell[end] == " "):
                found += [(classes[j], *rest) for rest in readings(end + 1, j + 1)]
            if len(found) > 1:
                break
        return tuple(found[:2])

    options = readings(0, 0) if cell else ((),)
    if len(options) != 1:
        why = "names no class of the file" if not options else f"reads as {list(options[0])} or {list(options[1])}"
        raise DataError(f"{where}: {cell!r} {why} (a file written before class names were kept whole: write it "
                        "again, e.g. with a new run)")
    return list(options[0])


def _grid(names: list[list[str]], classes: list[str], where: str, column: str) -> np.ndarray:
    """N x C booleans: which classes each row's list names; a name that is not a class is an error."""

    col = {c: j for j, c in enumerate(classes)}
    grid = np.zeros((len(names), len(classes)), dtype=bool)
    for i, row in enumerate(names):
        for name in row:
            if name not in col:
                raise DataError(f"{where}: row {i + 1}, {column} names {name!r}, not a class of the file")
            grid[i, col[name]] = True
    return grid
