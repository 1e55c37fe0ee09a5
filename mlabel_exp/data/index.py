"""What a data set is once read: image ids, files, sorted class names and the multi-hot label matrix.

Every format (``mlabel_exp.data.formats``) produces a ``DatasetIndex``; everything downstream (split, loaders,
cache, audit, the run's record) reads only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mlabel_exp.errors import DataError


@dataclass
class DatasetIndex:
    """Everything known about a data root without decoding an image."""

    root: Path
    classes: list[str]
    ids: np.ndarray            # image numbers where the format has them (folder, COCO), else 1..N in file order
    files: list[str]           # paths relative to image_dir (sub-folders allowed), aligned with ids
    labels: np.ndarray         # int8, len(ids) x len(classes): 1 positive, 0 negative, -1 unknown
    problems: list[str] = field(default_factory=list)
    image_dir: Path | None = None  # the folder ``files`` are relative to; default root / "images" (the folder format)
    #: what a format knows beyond the labels, for the run to record: COCO puts {"category_ids": {name: id}} here
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root)
        self.image_dir = self.root / "images" if self.image_dir is None else Path(self.image_dir)
        self.labels = np.asarray(self.labels, dtype=np.int8)

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self, rows: Sequence[int] | None = None) -> list[Path]:
        rows = range(len(self.files)) if rows is None else rows
        return [self.image_dir / self.files[r] for r in rows]


#: The columns the prediction files and the pyfunc model write beside one column per class (outputs.write_predictions,
#: outputs.write_submission, pyfunc_model.py): a class of one of these names would overwrite it or be overwritten.
OUTPUT_COLUMNS = ("file", "image", "labels", "true_labels", "unknown_labels", "error")


def check_class_names(classes: Sequence[str], where: str = "classes", fix: str = "rename that class") -> None:
    """Refuse a class named like an output column, before anything is trained or predicted. Refused rather than
    renamed in the outputs (a prefix on every class column): the CSVs keep the class names as their columns, the
    original course's submission format among them, and renaming an annotation file is a one-line fix."""
    clash = [c for c in classes if c in OUTPUT_COLUMNS]
    if clash:
        raise DataError(f"{where}: class {clash[0]!r} has the name of a column of the prediction files "
                        f"({', '.join(OUTPUT_COLUMNS)}), which it would overwrite; {fix}")


@dataclass(frozen=True)
class Problem:
    """One finding of a reader in collecting mode (the audit): ``kind`` groups findings, ``where`` is file:line (or a
    file, or empty), ``fix`` the setting that skips or fixes it."""

    kind: str
    message: str
    where: str = ""
    fix: str = ""
