"""Train/validation/test split: seeded and stratified over the labels, remembered, saved by file name, and reused
(exactly, on resume) from ``data.split_file``. With ``data.folds=K`` the images outside the test split are cut into K
stratified folds instead, and ``data.fold`` validates (``make_folds``)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from mlabel_exp.config import resolve_path
from mlabel_exp.data.index import DatasetIndex
from mlabel_exp.errors import ConfigError, DataError
from mlabel_exp.fsutil import write_atomic

log = logging.getLogger(__name__)

SPLIT_ALGORITHM = 1  # make_split's version: bump when it changes, so that remembered splits are not reused
FOLD_ALGORITHM = 1  # make_folds's version, likewise


def _cut(labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` cut into (kept, held out ``fraction``), stratified over ``labels`` (uint8 0/1) by iterstrat."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if fraction <= 0:
        return rows, rows[:0]
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    keep, held = next(splitter.split(np.zeros(len(rows)), labels[rows]))
    return np.sort(rows[keep]), np.sort(rows[held])


def make_split(labels: np.ndarray, val_fraction: float, test_fraction: float = 0.0,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded multi-label stratified split (iterative stratification) into train/val[/test] rows. The stratification
    sees the known positives only: an unknown label (-1) counts as absent, so 0/1 labels split as they always did."""
    labels = (np.asarray(labels) == 1).astype(np.uint8)  # what iterstrat was always given: uint8 0/1
    rest, test = _cut(labels, np.arange(len(labels)), test_fraction, seed)
    train, val = _cut(labels, rest, val_fraction / (1.0 - test_fraction), seed + 1)
    split = {"train": train, "val": val}
    if test_fraction > 0:
        split["test"] = test
    return split


def make_folds(labels: np.ndarray, folds: int, test_fraction: float = 0.0, seed: int = 0) -> np.ndarray:
    """The fold (0..K-1) of every row, -1 for the test split. The test split is the one ``make_split`` cuts with the
    same seed, so it stays outside every fold (and is the plain split's test split). The rest is cut by iterstrat's
    MultilabelStratifiedKFold, then ``balance_folds`` moves a few images so that each fold holds each class's
    positives to within one of the ideal count (iterstrat alone leaves up to 4.7 images off on UC Merced's 2,100)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    labels = (np.asarray(labels) == 1).astype(np.uint8)
    rest, _ = _cut(labels, np.arange(len(labels)), test_fraction, seed)
    if len(rest) < folds:
        raise DataError(f"data.folds={folds}: only {len(rest)} image(s) outside the test split; give data.folds at "
                        f"most {len(rest)}")
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + 1)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(rest)), labels[rest])):
        fold_of[rest[held]] = fold
    fold_of[rest] = balance_folds(labels[rest], fold_of[rest], folds)
    return fold_of


def fold_split(fold_of: np.ndarray, fold: int) -> dict[str, np.ndarray]:
    """train (the other folds) / val (``fold``) [/ test (-1)] rows of a ``make_folds`` assignment."""
    split = {"train": np.flatnonzero((fold_of >= 0) & (fold_of != fold)), "val": np.flatnonzero(fold_of == fold)}
    if (fold_of < 0).any():
        split["test"] = np.flatnonzero(fold_of < 0)
    return split


#: Candidates per side a swap is looked for among (the most promising by the separable part of its gain).
_SWAP_CANDIDATES = 48


def balance_folds(labels: np.ndarray, fold_of: np.ndarray, folds: int) -> np.ndarray:
    """Greedy local search from ``fold_of``: each step moves one image to another fold, or swaps two, where that
    lowers the sum over folds and classes of (positives - ideal)^2 plus (C + 1) (images - ideal)^2, until no step does.
    Images with the same labels are interchangeable, so the search runs over label sets (a few hundred), not images,
    and the rows that move are the last of their label set in each fold: seeded through ``fold_of``, deterministic."""
    sets, of_row = np.unique(labels, axis=0, return_inverse=True)
    of_row = of_row.ravel()
    # the last column counts images, weighted as much as every class together: folds of equal size first
    y = np.hstack([sets, np.full((len(sets), 1), np.sqrt(sets.shape[1] + 1.0))]).astype(np.float64)
    count = np.zeros((folds, len(sets)), dtype=np.int64)
    np.add.at(count, (fold_of, of_row), 1)
    excess = count @ y - count.sum(0) @ y / folds  # folds x (classes + 1): above the ideal count
    norm = (y ** 2).sum(1)
    for _ in range(len(labels)):
        step = _best_step(y, count, excess, norm)
        if step is None:
            break
        for label_set, source, target in step:
            count[source, label_set] -= 1
            count[target, label_set] += 1
            excess[source] -= y[label_set]
            excess[target] += y[label_set]
    return _assign(fold_of, of_row, count)


def _best_step(y, count, excess, norm) -> list[tuple[int, int, int]] | None:
    """The move or swap that lowers the squared excess most, as (label set, from fold, to fold) moves; None if none
    does. Moving y from fold a to b changes it by 2(|y|^2 - y.g), g = excess[a] - excess[b]; swapping u (in a) with v
    (in b) by 2(v.g - u.g + |u|^2 + |v|^2 - 2 u.v), looked for among the best few u and v by their own terms."""
    best, found = -1e-9, None
    folds, projected = len(count), y @ excess.T  # label sets x folds
    for a in range(folds):
        s_all = projected[:, [a]] - projected  # column b: y.g of the pair (a, b)
        move = np.where(count[a][:, None] > 0, 2 * (norm[:, None] - s_all), np.inf)
        move[:, a] = np.inf
        u = np.argmin(move, axis=0)
        b = int(np.argmin(move[u, np.arange(folds)]))
        if move[u[b], b] < best:
            best, found = move[u[b], b], [(int(u[b]), a, b)]
        for b in range(a + 1, folds):
            s = s_all[:, b]
            cu = _fewest(np.where(count[a] > 0, norm - s, np.inf))
            cv = _fewest(np.where(count[b] > 0, norm + s, np.inf))
            swap = 2 * (s[cv][None, :] - s[cu][:, None] + norm[cu][:, None] + norm[cv][None, :] - 2 * y[cu] @ y[cv].T)
            i, j = np.unravel_index(int(np.argmin(swap)), swap.shape)
            if swap[i, j] < best:
                best, found = swap[i, j], [(int(cu[i]), a, b), (int(cv[j]), b, a)]
    return found


def _fewest(values: np.ndarray) -> np.ndarray:
    """The indices of the _SWAP_CANDIDATES smallest finite ``values``, in index order (deterministic)."""
    picked = np.argpartition(values, _SWAP_CANDIDATES)[:_SWAP_CANDIDATES] if len(values) > _SWAP_CANDIDATES \
        else np.arange(len(values))
    return np.sort(picked[np.isfinite(values[picked])])


def _assign(fold_of: np.ndarray, of_row: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Rows to folds so that fold f holds count[f, s] rows of label set s, moving as few rows as possible."""
    new = fold_of.copy()
    for label_set in range(count.shape[1]):
        rows = np.flatnonzero(of_row == label_set)
        room = count[:, label_set].copy()
        spare = []
        for r in rows:
            if room[fold_of[r]] > 0:
                room[fold_of[r]] -= 1
            else:
                spare.append(r)
        for r, fold in zip(spare, np.repeat(np.arange(len(room)), np.maximum(room, 0))):
            new[r] = fold
    return new


def remembered_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                     folder: Path) -> dict[str, np.ndarray]:
    """``make_split``, remembered in ``folder`` under a digest of everything it depends on (the label matrix, the
    fractions, the seed, the iterstrat version): a run on the same data skips importing iterstrat and scikit-learn
    (~0.9 s of every run's start on 2 cores) and computing it. A missing or unreadable file is computed again."""
    return _remembered(labels, (val_fraction, test_fraction, seed), SPLIT_ALGORITHM, folder,
                       lambda: make_split(labels, val_fraction, test_fraction, seed))


def remembered_folds(labels: np.ndarray, folds: int, test_fraction: float, seed: int, folder: Path) -> np.ndarray:
    """``make_folds``, remembered as ``remembered_split`` is: every fold run of a sweep computes it once between
    them (the first), and each reads its own fold from the same assignment."""
    return _remembered(labels, ("folds", folds, test_fraction, seed), FOLD_ALGORITHM, folder,
                       lambda: {"fold_of": make_folds(labels, folds, test_fraction, seed)})["fold_of"]


def _remembered(labels: np.ndarray, inputs: tuple, algorithm: int, folder: Path, compute) -> dict[str, np.ndarray]:
    import hashlib
    import zipfile
    from importlib.metadata import version

    # int8 labels as their bytes (an unknown -1 as 255): 0/1 labels keep the key they always had
    content = np.ascontiguousarray(np.asarray(labels).astype(np.int8)).view(np.uint8).tobytes()
    key = hashlib.sha256(repr((labels.shape, *inputs, version("iterative-stratification"),
                               algorithm)).encode() + content).hexdigest()[:24]
    file = folder / f"{key}.npz"
    try:
        with np.load(file) as saved:
            return {k: saved[k] for k in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass
    split = compute()
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


def split_meta(data_cfg) -> dict:
    """What split.json says of how it was cut, beside the files: the seed, and which fold of how many."""
    folds = {"folds": data_cfg.folds, "fold": data_cfg.fold} if data_cfg.folds else {}
    return {"seed": data_cfg.split_seed, **folds}


def split_from_config(index: DatasetIndex, data_cfg, exact: bool = False) -> dict[str, np.ndarray]:
    """The configured split: read from ``data.split_file`` when it exists (``exact``: it must cover the data set),
    else computed (and saved there); with ``data.folds``, fold ``data.fold`` of the remembered folds."""
    path = resolve_path(data_cfg.split_file) if data_cfg.split_file else None
    if data_cfg.folds:
        return _fold_from_config(index, data_cfg, path, exact)
    if path is not None and path.exists():
        return load_split(path, index, exact)
    split = remembered_split(index.labels, data_cfg.val_fraction, data_cfg.test_fraction, data_cfg.split_seed,
                             resolve_path(data_cfg.cache_dir) / "splits")
    if path is not None:
        save_split(path, index, split, seed=data_cfg.split_seed, val_fraction=data_cfg.val_fraction,
                   test_fraction=data_cfg.test_fraction)
    return split


def _fold_from_config(index: DatasetIndex, data_cfg, path: Path | None, exact: bool) -> dict[str, np.ndarray]:
    """Fold ``data.fold`` of ``data.folds``. A split file is only read, and only where it says it holds this very
    fold (a resumed fold run's own split.json): one file cannot hold the K splits of a fold sweep."""
    want = {"folds": data_cfg.folds, "fold": data_cfg.fold}
    if path is not None:
        meta = json.loads(path.read_text()).get("meta", {}) if path.exists() else None
        if meta is None or {k: meta.get(k) for k in want} != want:
            held = "does not exist" if meta is None else (
                f"holds fold {meta['fold']} of {meta['folds']}" if "folds" in meta else "holds no fold")
            raise ConfigError(f"data.split_file={data_cfg.split_file} {held}, and data.folds={data_cfg.folds} "
                              f"data.fold={data_cfg.fold} asks for a fold: leave data.split_file out (every fold run "
                              "saves its own split.json; data.split_seed fixes the folds)")
        return load_split(path, index, exact)
    fold_of = remembered_folds(index.labels, data_cfg.folds, data_cfg.test_fraction, data_cfg.split_seed,
                               resolve_path(data_cfg.cache_dir) / "splits")
    return fold_split(fold_of, data_cfg.fold)
