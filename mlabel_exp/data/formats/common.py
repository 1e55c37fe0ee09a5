"""What the csv, coco and voc readers share: finding image files by name (sub-folders allowed, the extension tried
when a name has none), the images folder setting, and the label matrix from per-image class sets."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np

from mlabel_exp.data.index import DatasetIndex, check_class_names
from mlabel_exp.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def some(names, n: int = 3, sep: str = ", ") -> str:
    names = list(names)
    return sep.join(str(v) for v in names[:n]) + (f"{sep}..." if len(names) > n else "")


def under_root(root: Path, value: str, setting: str, what: str, folder: bool = False) -> Path:
    """A path setting relative to the data root (or absolute) that must exist: a file, or a ``folder``."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else root / path
    if not (path.is_dir() if folder else path.is_file()):
        raise DataError(f"{setting}={value!r}: {path} {'is not a folder' if folder else 'does not exist'}; "
                        f"set {setting} to {what}")
    return path


def images_folder(root: Path, images_dir: str | None, default: str = "images") -> Path:
    """data.images_dir relative to the root (or absolute); unset: ``<root>/<default>`` when it exists, else the root."""
    if images_dir:
        return under_root(root, images_dir, "data.images_dir", "the folder the image paths are relative to",
                          folder=True)
    return root / default if (root / default).is_dir() else root


def unfollowable_link(path: str | Path) -> str | None:
    """Why ``path`` is a symbolic link that cannot be followed (a loop, or a target that does not exist), in words;
    None for anything else. One stat: a loop is reported, never followed."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as e:
        what = "a symbolic link loop" if e.errno == errno.ELOOP else "a symbolic link to a missing target"
        return f"{what} (-> {os.readlink(path)})"
    return None


def list_files(folder: Path, problems: list[str] | None = None) -> set[str]:
    """Every file under ``folder``, as paths relative to it with '/' separators (hidden entries skipped). Links to
    folders are followed, except one back to a folder above it (a loop); links that cannot be followed are skipped
    and noted in ``problems``."""
    found: set[str] = set()
    skipped: list[str] = []
    stack = [(str(folder), "", frozenset([os.path.realpath(folder)]))]
    while stack:
        path, prefix, above = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError as e:
            skipped.append(f"{prefix or './'}: an unreadable folder ({e.strerror})")
            continue
        for e in entries:
            why = unfollowable_link(e.path) if e.is_symlink() else None  # before is_dir(), which raises on a loop
            if why:
                skipped.append(f"{prefix}{e.name}: {why}")
            elif e.is_dir():
                real = os.path.realpath(e.path)
                if real in above:
                    skipped.append(f"{prefix}{e.name}: a symbolic link loop (-> {real}, a folder above it)")
                else:
                    stack.append((e.path, f"{prefix}{e.name}/", above | {real}))
            elif e.is_file():
                found.add(prefix + e.name)
    if skipped and problems is not None:
        one = len(skipped) == 1
        problems.append(f"{len(skipped)} entr{'y' if one else 'ies'} under {folder} cannot be read and "
                        f"{'was' if one else 'were'} skipped: {some(sorted(skipped), sep='; ')}; remove or repair them "
                        "if images are missing")
    return found


def resolve_file(name: str, existing: set[str]) -> str | None:
    """The file a name refers to: itself, or itself plus one of the usual image extensions (Kaggle's 'train_0')."""
    name = name.strip().replace("\\", "/")
    name = name[2:] if name.startswith("./") else name
    if name in existing:
        return name
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        if name + ext in existing:
            return name + ext
    return None


def missing_images(missing: list[str], total: int, folder: Path, source: str, strict: bool,
                   problems: list[str]) -> None:
    """Images named in ``source`` that have no file: an error when all are missing or ``strict``, else a problem."""
    if missing:
        missing_files(f"{source}: {len(missing)} of {total} image(s) have no file in {folder} (e.g. {some(missing)}; "
                      f"tried the name as given and with {', '.join(IMAGE_EXTENSIONS)})", len(missing) == total,
                      strict, problems, "set data.images_dir to the folder the image paths are relative to",
                      "add the files, fix data.images_dir")


def missing_files(msg: str, all_missing: bool, strict: bool, problems: list[str], fix_all: str, fix: str) -> None:
    """Files a listing names that are not there (``msg``): an error when all are missing or ``strict``, else a
    problem and skipped."""
    if all_missing:
        raise DataError(f"{msg}; {fix_all}")
    if strict:
        raise DataError(f"{msg}; {fix}, or set data.strict=false to skip them")
    problems.append(msg + "; skipped (set data.strict=true to stop instead)")


def index_of(root: Path, image_dir: Path, files: list[str], positives: list[set[str]], unknown: list[set[str]],
             classes: list[str] | None = None, ids: list[int] | None = None, problems: list[str] | None = None,
             source: str = "annotations", meta: dict | None = None) -> DatasetIndex:
    """The index of images ``files`` with their positive and unknown class names (unknown loses to positive)."""
    if not files:  # an empty listing: nothing to split, train on or audit
        raise DataError(f"{source} lists no image; give the file that lists the data set's images")
    classes = sorted(set().union(*positives, *unknown)) if classes is None else sorted(classes)
    if not classes:
        raise DataError(f"{source}: no class names found; every image is unlabelled")
    check_class_names(classes, source)
    col = {c: j for j, c in enumerate(classes)}
    labels = np.zeros((len(files), len(classes)), dtype=np.int8)
    for r, (pos, unk) in enumerate(zip(positives, unknown)):
        for c in unk:
            labels[r, col[c]] = -1
        for c in pos:
            labels[r, col[c]] = 1
    ids_arr = np.arange(1, len(files) + 1, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    problems = problems or []
    for p in problems:
        log.warning(p)
    return DatasetIndex(root, classes, ids_arr, files, labels, problems, image_dir=image_dir, meta=meta or {})
