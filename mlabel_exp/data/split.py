"""Train/validation/test split: seeded and stratified over the labels, remembered, saved by file name, and reused
(exactly, on resume) from ``data.split_file``."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from mlabel_exp.config import resolve_path
from mlabel_exp.data.index import DatasetIndex
from mlabel_exp.errors import DataError
from mlabel_exp.fsutil import write_atomic

log = logging.getLogger(__name__)

SPLIT_ALGORITHM = 1  # make_split's version: bump when it changes, so that remembered splits are not reused


def make_split(labels: np.ndarray, val_fraction: float, test_fraction: float = 0.0,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded multi-label stratified split (iterative stratification) into train/val[/test] rows. The stratification
    sees the known positives only: an unknown label (-1) counts as absent, so 0/1 labels split as they always did."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    labels = (np.asarray(labels) == 1).astype(np.uint8)  # what iterstrat was always given: uint8 0/1
    rows = np.arange(len(labels))

    def cut(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if fraction <= 0:
            return rows, rows[:0]
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        keep, held = next(splitter.split(np.zeros(len(rows)), labels[rows]))
        return np.sort(rows[keep]), np.sort(rows[held])

    rest, test = cut(rows, test_fraction, seed)
    train, val = cut(rest, val_fraction / (1.0 - test_fraction), seed + 1)
    split = {"train": train, "val": val}
    if test_fraction > 0:
        split["test"] = test
    return split


def remembered_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                     folder: Path) -> dict[str, np.ndarray]:
    """``make_split``, remembered in ``folder`` under a digest of everything it depends on (the label matrix, the
    fractions, the seed, the iterstrat version): a run on the same data skips importing iterstrat and scikit-learn
    (~0.9 s of every run's start on 2 cores) and computing it. A missing or unreadable file is computed again."""
    import hashlib
    import zipfile
    from importlib.metadata import version

    # int8 labels as their bytes (an unknown -1 as 255): 0/1 labels keep the key they always had
    content = np.ascontiguousarray(np.asarray(labels).astype(np.int8)).view(np.uint8).tobytes()
    key = hashlib.sha256(repr((labels.shape, val_fraction, test_fraction, seed, version("iterative-stratification"),
                               SPLIT_ALGORITHM)).encode() + content).hexdigest()[:24]
    file = folder / f"{key}.npz"
    try:
        with np.load(file) as saved:
            return {k: saved[k] for k in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass
    split = make_split(labels, val_fraction, test_fraction, seed)
    buffer = io.BytesIO()
    np.savez(buffer, **split)
    try:
        write_atomic(file, buffer.getvalue())
    except OSError as e:  # a read-only cache folder costs the next run the computation, nothing else
        log.debug("split not remembered in %s: %s", folder, e)
    return split


def save_split(path: str | Path, index: DatasetIndex, split: dict[str, np.ndarray], **meta) -> None:
    """Write the split as file names (robust to re-indexing), atomically."""
    payload = {"meta": meta, **{k: [index.files[r] for r in v] for k, v in split.items()}}
    write_atomic(Path(path), json.dumps(payload, indent=1))


def load_split(path: str | Path, index: DatasetIndex, exact: bool = False) -> dict[str, np.ndarray]:
    """The split saved at ``path``, as rows of ``index``. Files of the split missing from the data set are an error;
    with ``exact`` (a resumed run), so are images of the data set that the split does not hold."""
    payload = json.loads(Path(path).read_text())
    row_of = {f: r for r, f in enumerate(index.files)}
    fix = ("a resumed run must see the data it started with: restore the data root, or start a new run" if exact
           else "delete the split file or point data.split_file elsewhere")
    split, listed = {}, set()
    for part, files in payload.items():
        if part == "meta":
            continue
        unknown = [f for f in files if f not in row_of]
        if unknown:
            raise DataError(f"split file {path}: {len(unknown)} file(s) of {part!r} are not in the data set "
                            f"{index.root} any more (e.g. {unknown[:3]}); {fix}")
        split[part] = np.array(sorted(row_of[f] for f in files), dtype=np.int64)
        listed.update(files)
    added = [f for f in index.files if f not in listed]
    if exact and added:
        raise DataError(f"split file {path}: {len(added)} image(s) were added to {index.root} since the run started "
                        f"(e.g. {added[:3]}; {len(listed)} in the split); {fix}")
    return split


def split_from_config(index: DatasetIndex, data_cfg, exact: bool = False) -> dict[str, np.ndarray]:
    """The configured split: read from ``data.split_file`` when it exists (``exact``: it must cover the data set),
    else computed (and saved there)."""
    path = resolve_path(data_cfg.split_file) if data_cfg.split_file else None
    if path is not None and path.exists():
        return load_split(path, index, exact)
    split = remembered_split(index.labels, data_cfg.val_fraction, data_cfg.test_fraction, data_cfg.split_seed,
                             resolve_path(data_cfg.cache_dir) / "splits")
    if path is not None:
        save_split(path, index, split, seed=data_cfg.split_seed, val_fraction=data_cfg.val_fraction,
                   test_fraction=data_cfg.test_fraction)
    return split
