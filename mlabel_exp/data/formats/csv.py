"""``data=csv``: one CSV/TSV row per image, in either of the two shapes multi-label sets are published in:

- an image column and one labels column of class names (``image_name,tags`` / ``train_0,haze primary``: names
  separated by space, comma, semicolon or pipe; empty = no label), as Kaggle's multi-label sets;
- an image column and one column per class holding 1 / 0 (-1 or empty: unknown for that image).

Image paths are relative to data.images_dir (sub-folders allowed); a name without extension is tried with the usual
ones. The delimiter, the image column and the shape are detected unless set (data.csv_delimiter, data.image_column,
data.labels_column).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from mlabel_exp.data.formats.common import (images_folder, index_of, list_files, missing_images, resolve_file, some,
                                             under_root)
from mlabel_exp.data.index import DatasetIndex
from mlabel_exp.errors import DataError

IMAGE_COLUMNS = ("image", "image_name", "image_id", "file", "filename", "file_name", "path", "id", "img", "name")
LABEL_COLUMNS = ("labels", "label", "tags", "classes", "class", "categories", "category", "target")
DELIMITERS = (",", "\t", ";", "|")
ONE_HOT = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": -1}
ACCEPTED = "1 (positive), 0 (negative), -1 or an empty cell (unknown)"


def find_csv(root: Path, csv_file: str | None) -> Path:
    """data.csv_file relative to the root (or absolute); unset: the one .csv/.tsv file in the root."""
    if csv_file:
        return under_root(root, csv_file, "data.csv_file", "the labels CSV")
    found = sorted(p for p in root.iterdir() if p.suffix.lower() in (".csv", ".tsv") and p.is_file())
    if len(found) != 1:
        what = f"{len(found)} .csv/.tsv files ({some(p.name for p in found)})" if found else "no .csv/.tsv file"
        raise DataError(f"data root {root} has {what}; set data.csv_file to the labels file")
    return found[0]


def _delimiter(path: Path, header: str, given: str | None) -> str:
    if given:
        return "\t" if given in ("\\t", "tab") else given
    if path.suffix.lower() == ".tsv":
        return "\t"
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])  # ties keep the order of DELIMITERS: ',' first
    return best if counts[best] else ","


def _read_rows(path: Path, delimiter: str | None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: the file is empty or has no header line; the first line must name the columns")
    reader = csv.reader(lines, delimiter=_delimiter(path, lines[0], delimiter))
    header = [h.strip() for h in next(reader)]
    rows = []
    for lineno, row in enumerate(reader, start=2):
        if not any(v.strip() for v in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{lineno}: {len(row)} field(s) where the header has {len(header)} "
                            f"({', '.join(header)}); set data.csv_delimiter if the columns are split wrongly")
        rows.append((lineno, [v.strip() for v in row]))
    if not rows:
        raise DataError(f"{path} has a header but no rows: add one line per image below the header "
                        f"({', '.join(header)}), or set data.csv_file to the labels file")
    return header, rows


def _refuse_repeats(path: Path, header: list[str], used: list[str]) -> None:
    """A column name the reader uses given twice: one would silently win (a class, the image column)."""
    for name in dict.fromkeys(used):
        at = [j + 1 for j, h in enumerate(header) if h == name]
        if len(at) > 1:
            raise DataError(f"{path}: the header names column {name!r} {len(at)} times (columns "
                            f"{', '.join(map(str, at[:-1]))} and {at[-1]}); a column name must be unique: rename one "
                            "if they are different classes, else merge them into one column")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _pick(header: list[str], given: str | None, names: tuple[str, ...], setting: str, path: Path) -> str | None:
    if given:
        if given not in header:
            raise DataError(f"{setting}={given!r}: {path} has no such column (header: {', '.join(header)})")
        return given
    lower = {h.lower(): h for h in header}
    return next((lower[n] for n in names if n in lower), None)


def _shape(path: Path, header: list[str], rows, image_col: str, labels_column: str | None) -> str | None:
    """'labels' (one column of class names), 'onehot' (a column per class) or None when neither fits. Cells that are
    mostly numbers make a one-hot file, whose other cells are then errors: a column of 0, 1, 2 is never read as the
    class names '0', '1', '2'."""
    if labels_column:
        return "labels"
    others = [j for j, h in enumerate(header) if h != image_col]
    cells = [r[j] for _, r in rows for j in others if r[j]]
    if others and all(c in ONE_HOT for c in cells):
        return "onehot"
    if _pick([header[j] for j in others], None, LABEL_COLUMNS, "", path):
        return "labels"
    if 2 * sum(map(_is_number, cells)) > len(cells):
        return "onehot"
    return "labels" if len(others) == 1 else None


def _bad_cell(header: list[str], rows, cols: list[int]) -> tuple[int, str, str] | None:
    """(line, column name, value) of the first cell of ``cols`` that a one-hot file does not accept."""
    return next(((lineno, header[j], r[j]) for lineno, r in rows for j in cols if r[j] not in ONE_HOT), None)


def _one_hot_rows(path: Path, header: list[str], rows, cols: list[int]) -> list[tuple[set[str], set[str]]]:
    """(positive, unknown) class names of each row of a one-hot file; a cell it does not accept is an error."""
    bad = _bad_cell(header, rows, cols)
    if bad:
        lineno, column, value = bad
        raise DataError(f"{path}:{lineno}: column {column!r} holds {value!r}; a column per class holds {ACCEPTED} "
                        f"(set data.labels_column={column} if that column holds class names)")
    return [({header[j] for j in cols if ONE_HOT[r[j]] == 1}, {header[j] for j in cols if ONE_HOT[r[j]] == -1})
            for _, r in rows]


def read_csv(root: str | Path, csv_file: str | None = None, images_dir: str | None = None,
             image_column: str | None = None, labels_column: str | None = None, label_separator: str | None = None,
             csv_delimiter: str | None = None, strict: bool = False) -> DatasetIndex:
    root = Path(root)
    path = find_csv(root, csv_file)
    header, rows = _read_rows(path, csv_delimiter)
    image_col = _pick(header, image_column, IMAGE_COLUMNS, "data.image_column", path)
    if image_col is None:
        raise DataError(f"{path}: no image column among {', '.join(header)}; set data.image_column to the column "
                        "holding the image paths")
    shape = _shape(path, header, rows, image_col, labels_column)
    if shape is None:
        bad = _bad_cell(header, rows, [j for j, h in enumerate(header) if h != image_col])
        raise DataError(f"{path}: header {', '.join(header)} fits neither shape: set data.labels_column to the column "
                        f"of class names, or give one column per class holding {ACCEPTED} ("
                        + (f"line {bad[0]}: column {bad[1]!r} holds {bad[2]!r})" if bad else
                           f"no column besides {image_col!r})"))
    folder = images_folder(root, images_dir)
    problems: list[str] = []
    existing = list_files(folder, problems)
    img = header.index(image_col)
    if shape == "labels":
        col = header.index(_pick(header, labels_column, LABEL_COLUMNS, "data.labels_column", path)
                           or next(h for h in header if h != image_col))
        _refuse_repeats(path, header, [image_col, header[col]])
        split = re.compile(re.escape(label_separator) if label_separator else r"[\s,;|]+")
        classes = None  # names stripped: 'big dog; cat' split at ';' is 'big dog' and 'cat', not ' cat'
        per_row = [({c.strip() for c in split.split(r[col]) if c.strip()}, set()) for _, r in rows]
    else:
        _refuse_repeats(path, header, header)
        cols = [j for j, h in enumerate(header) if h != image_col]
        classes = [header[j] for j in cols]
        per_row = _one_hot_rows(path, header, rows, cols)
    return _index(root, folder, path, existing, [r[img] for _, r in rows], per_row, classes, strict, problems)


def _index(root, folder, path, existing, names, per_row, classes, strict, problems: list[str]) -> DatasetIndex:
    files, positives, unknown, missing, seen = [], [], [], [], set()
    for name, (pos, unk) in zip(names, per_row):
        file = resolve_file(name, existing)
        if file is None:
            missing.append(name)
        elif file in seen:
            problems.append(f"{path}: image {name!r} is listed more than once; the first row is used")
        else:
            seen.add(file)
            files.append(file)
            positives.append(pos)
            unknown.append(unk)
    missing_images(missing, len(names), folder, str(path), strict, problems)
    return index_of(root, folder, files, positives, unknown, classes, problems=problems, source=str(path))


def label_rows(root: str | Path, csv_file: str | None = None, image_column: str | None = None,
               labels_column: str | None = None, csv_delimiter: str | None = None) -> tuple[Path, str | None,
                                                                                         dict[str, int]]:
    """Where each image's labels are in the CSV, for a person to change them: (the file, the labels column, or None
    for a column per class, {image cell as written: line number}), read as ``read_csv`` reads it."""
    root = Path(root)
    path = find_csv(root, csv_file)
    header, rows = _read_rows(path, csv_delimiter)
    image_col = _pick(header, image_column, IMAGE_COLUMNS, "data.image_column", path) or header[0]
    img = header.index(image_col)
    column = None
    if _shape(path, header, rows, image_col, labels_column) == "labels":
        column = _pick(header, labels_column, LABEL_COLUMNS, "data.labels_column", path) or next(
            h for h in header if h != image_col)
    return path, column, {r[img]: lineno for lineno, r in reversed(rows)}  # the first row of a repeated image wins
