"""What the csv, coco and voc readers share: finding image files by name (sub-folders allowed, the extension tried
when a name has none), the images folder setting, and the label matrix from per-image class sets."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mlabel_exp.data.index import DatasetIndex, check_class_names

from mlabel_exp.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def some(names, n: int = 3) -> str:
    names = list(names)
    return ", ".join(str(v) for v in names[:n]) + (", ..." if len(names) > n else "")


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


def list_files(folder: Path) -> set[str]:
    """Every file under ``folder``, as paths relative to it with '/' separators (hidden entries skipped)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found.update(prefix + f for f in filenames if not f.startswith("."))
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
    if not missing:
        return
    msg = (f"{source}: {len(missing)} of {total} image(s) have no file in {folder} (e.g. {some(missing)}; tried the "
           f"name as given and with {', '.join(IMAGE_EXTENSIONS)})")
    if len(missing) == total:
        raise DataError(msg + "; set data.images_dir to the folder the image paths are relative to")
    if strict:
        raise DataError(msg + "; add the files, fix data.images_dir, or set data.strict=false to skip them")
    problems.append(msg + "; skipped (set data.strict=true to stop instead)")


def index_of(root: Path, image_dir: Path, files: list[str], positives: list[set[str]], unknown: list[set[str]],
             classes: list[str] | None = None, ids: list[int] | None = None, problems: list[str] | None = None,
             source: str = "annotations", meta: dict | None = None) -> DatasetIndex:
    """The index of images ``files`` with their positive and unknown class names (unknown loses to positive)."""
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
