"""Where a person changes one label in the annotation files, in words: the line of the folder layout's
annotations/<class>.txt, the row and column (or labels cell) of a CSV, the image's entry in a COCO JSON or VOC XML.
The label check (``python -m mlabel_exp.labels``) prints one for every pair it flags."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mlabel_exp.data.formats import coco, csv, folder, resolve_data_root
from mlabel_exp.data.index import DatasetIndex


def label_fixer(data_cfg, index: DatasetIndex) -> Callable[[int, str, int], str]:
    """``fix(row, class, given)``: how to change the label ``given`` (1 present, 0 absent) of ``class`` for the image
    at ``row`` of ``index`` into the other one, in the data set's own files (data.name's format)."""
    root = resolve_data_root(data_cfg)
    if data_cfg.name == "csv":
        return _csv_fixer(root, data_cfg, index)
    if data_cfg.name == "coco":
        path = coco.find_json(root, data_cfg.annotations_file)
        return lambda row, cls, given: (f"{path}: image id {index.ids[row]} ({index.files[row]}): "
                                        + (f"remove its annotations of category {cls!r}" if given else
                                           f"add an annotation of category {cls!r}"))
    if data_cfg.name == "voc":
        return lambda row, cls, given: (f"{root / 'Annotations' / (Path(index.files[row]).stem + '.xml')}: "
                                        + (f"remove the <object> named {cls}" if given else
                                           f"add an <object> named {cls}"))
    return _folder_fixer(root, index)


def _folder_fixer(root: Path, index: DatasetIndex) -> Callable[[int, str, int], str]:
    """annotations/<class>.txt lists the image numbers holding the class: delete the number's line, or add one."""
    lines: dict[str, dict[int, int]] = {}

    def fix(row: int, cls: str, given: int) -> str:
        path, number = root / "annotations" / f"{cls}.txt", int(index.ids[row])
        if not given:
            return f"{path}: add a line {number} ({index.files[row]} shows {cls})"
        if cls not in lines:
            lines[cls] = folder.annotation_lines(path) if path.is_file() else {}
        where = f":{lines[cls][number]}" if number in lines[cls] else ""
        return f"{path}{where}: delete the line {number} ({index.files[row]} does not show {cls})"

    return fix


def _csv_fixer(root: Path, data_cfg, index: DatasetIndex) -> Callable[[int, str, int], str]:
    """The image's row (its line), then its labels cell (add or remove the name) or the class's column (1 <-> 0)."""
    path, column, line_of = csv.label_rows(root, data_cfg.csv_file, data_cfg.image_column, data_cfg.labels_column,
                                           data_cfg.csv_delimiter)
    by_stem = {Path(name).stem: line for name, line in line_of.items()}

    def fix(row: int, cls: str, given: int) -> str:
        file = index.files[row]
        line = line_of.get(file, by_stem.get(Path(file).stem))
        where = f"{path}:{line}" if line else f"{path} (the row of {file})"
        if column is None:
            return f"{where} ({file}): column {cls!r}: {given} -> {1 - given}"
        return f"{where} ({file}): in column {column!r}, " + (f"remove {cls!r}" if given else f"add {cls!r}")

    return fix
