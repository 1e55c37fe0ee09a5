"""``data=coco``: a COCO instances JSON (``images``, ``annotations``, ``categories``). An image's labels are the
category names of its annotations; an image without annotation is all-negative. Classes are sorted by name as in
every format; the category ids are kept in ``index.meta["category_ids"]`` ({name: id}) for the run's record.
Images are found under data.images_dir by their ``file_name``."""

from __future__ import annotations

import json
from pathlib import Path

from mlabel_exp.data.formats.common import (images_folder, index_of, list_files, missing_images, resolve_file, some,
                                             under_root)
from mlabel_exp.data.index import DatasetIndex
from mlabel_exp.errors import DataError


def find_json(root: Path, annotations_file: str | None) -> Path:
    """data.annotations_file relative to the root (or absolute); unset: the one .json file in the root or in
    <root>/annotations/."""
    if annotations_file:
        return under_root(root, annotations_file, "data.annotations_file", "the COCO instances JSON")
    found = sorted(p for d in (root, root / "annotations") if d.is_dir() for p in d.glob("*.json") if p.is_file())
    if len(found) != 1:
        what = f"{len(found)} .json files ({some(p.name for p in found)})" if found else "no .json file"
        raise DataError(f"data root {root} has {what}; set data.annotations_file to the COCO instances JSON")
    return found[0]


def _load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e}); data.annotations_file must be a COCO instances JSON") from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(doc.get(k) if isinstance(doc, dict)
                                                                                    else None, list)]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} list; a COCO instances JSON has images, annotations and "
                        "categories (set data.annotations_file to one)")
    return doc


def _categories(path: Path, categories: list) -> dict[int, str]:
    """Category id -> name (stripped). Two ids of one name are refused, not merged: the run's record could keep only
    one of them, and they may be two classes that need two names."""
    name_of: dict[int, str] = {}
    id_of: dict[str, int] = {}
    for c in categories:
        cid, name = int(c["id"]), str(c["name"]).strip()
        if name_of.setdefault(cid, name) != name:
            raise DataError(f"{path}: category id {cid} is listed twice, as {name_of[cid]!r} and as {name!r}; give "
                            "each category its own id")
        if id_of.setdefault(name, cid) != cid:
            raise DataError(f"{path}: categories {id_of[name]} and {cid} are both named {name!r}; rename one if they "
                            "are different classes, else give their annotations one category id and remove the other")
    return name_of


def read_coco(root: str | Path, annotations_file: str | None = None, images_dir: str | None = None,
              strict: bool = False) -> DatasetIndex:
    root = Path(root)
    path = find_json(root, annotations_file)
    doc = _load(path)
    try:
        name_of = _categories(path, doc["categories"])
        images = sorted((int(im["id"]), str(im["file_name"])) for im in doc["images"])
        labelled: dict[int, set[str]] = {}
        for a in doc["annotations"]:
            labelled.setdefault(int(a["image_id"]), set()).add(name_of[int(a["category_id"])])
    except DataError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: an entry lacks or has a bad {e} field; images need id and file_name, categories id "
                        "and name, annotations image_id and a category_id listed in categories") from e
    folder = images_folder(root, images_dir)
    problems: list[str] = []
    existing = list_files(folder, problems)
    files, ids, positives, missing = [], [], [], []
    for image_id, name in images:
        file = resolve_file(name, existing)
        if file is None:
            missing.append(name)
            continue
        files.append(file)
        ids.append(image_id)
        positives.append(labelled.get(image_id, set()))
    missing_images(missing, len(images), folder, str(path), strict, problems)
    meta = {"category_ids": {n: i for i, n in sorted(name_of.items())}}
    return index_of(root, folder, files, positives, [set()] * len(files), sorted(set(name_of.values())), ids,
                    problems, str(path), meta)
