"""The original project's on-disk format: ``<root>/images/im<N>.jpg`` and ``<root>/annotations/<class>.txt``
listing the image numbers that contain the class.

Class order is the sorted file stems, images that appear in no annotation file are kept as all-zero targets, and
every problem is reported with the file and line it comes from.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from mlabel_exp.data.formats.common import some, unfollowable_link
from mlabel_exp.data.index import DatasetIndex, Problem, check_class_names
from mlabel_exp.errors import DataError

log = logging.getLogger(__name__)


def _pattern_regex(pattern: str) -> re.Pattern:
    if pattern.count("{id}") != 1:
        raise DataError(f"data.image_pattern={pattern!r} must contain '{{id}}' exactly once, e.g. 'im{{id}}.jpg'")
    before, after = pattern.split("{id}")
    return re.compile(re.escape(before) + r"([0-9]+)" + re.escape(after) + r"\Z")


def _some(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _read_annotation(path: Path, problems: list[str] | None = None) -> list[int]:
    """Image numbers in one annotation file: blank lines, spaces, CRLF and a BOM are accepted.

    A malformed line is an error, or, when a ``problems`` list is given, noted there and skipped.
    """
    return [i for _, i in _annotation_lines(path, problems)]


def _annotation_lines(path: Path, problems: list[str] | None = None,
                      collect: list[Problem] | None = None) -> list[tuple[int, int]]:
    """(line number, image number) of each valid line; ``collect`` (the audit) also receives every malformed and
    every repeated line as a ``Problem``, and nothing raises."""
    ids, seen = [], {}
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    for lineno, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token:
            continue
        if not (token.isascii() and token.isdigit()) or int(token) == 0:  # ASCII digits only: not '²', not '٣'

            msg = f"{path}:{lineno}: {token[:40]!r} is not a positive image number"
            if collect is not None:
                collect.append(Problem("malformed annotation line", f"{token[:40]!r} is not a positive image number",
                                       f"{path}:{lineno}", "data.on_bad_annotation=skip skips the line"))
                continue
            if problems is None:
                raise DataError(msg + "; each line of an annotation file must hold one image number such as 123 "
                                "(or set data.on_bad_annotation=skip)")
            problems.append(msg + "; line skipped")
            continue
        if collect is not None and int(token) in seen:
            collect.append(Problem("duplicate annotation line", f"image {int(token)} listed again (first on line "
                                   f"{seen[int(token)]})", f"{path}:{lineno}", "harmless (read once); delete the line"))
        seen.setdefault(int(token), lineno)
        ids.append((lineno, int(token)))
    return ids


def annotation_lines(path: Path) -> dict[int, int]:
    """{image number: the line that first lists it} of one annotation file (malformed lines skipped): where a person
    deletes a label."""
    return {image: line for line, image in reversed(_annotation_lines(path, problems=[]))}


def build_index(root: str | Path, image_pattern: str = "im{id}.jpg", strict: bool = False,
                skip_bad_lines: bool = False, collect: list[Problem] | None = None) -> DatasetIndex:
    """Index a data root in O(images + annotation lines).

    ``strict`` turns annotated ids without an image file into an error instead of a warning;
    ``skip_bad_lines`` turns malformed annotation lines into reported problems instead of an error;
    ``collect`` (the audit) receives every problem as a ``Problem``, each line on its own, and overrides both.
    """
    if collect is not None:
        strict = False
    root = Path(root)
    images_dir, ann_dir = root / "images", root / "annotations"
    missing = [d.name + "/" for d in (images_dir, ann_dir) if not d.is_dir()]
    if missing:
        raise DataError(f"data root {root} has no {' and no '.join(missing)}; expected the layout "
                        "<root>/images/im1.jpg ... and <root>/annotations/<class>.txt (one image number a line)")
    problems: list[str] = []
    file_of = _image_files(images_dir, image_pattern, problems)
    ann_files, ignored = [], []
    for p in sorted(ann_dir.iterdir()):
        if p.name.startswith("."):  # editor and OS files (.DS_Store, .hidden.txt) are no classes
            continue
        (ann_files if p.suffix == ".txt" and p.is_file() else ignored).append(p.name)
    ann_files = [ann_dir / name for name in ann_files]
    if ignored:
        problems.append(f"{len(ignored)} file(s) in {ann_dir} are not <class>.txt and were ignored ({_some(ignored)})")
    if not ann_files:
        raise DataError(f"{ann_dir} holds no <class>.txt annotation file")
    classes = [p.stem for p in ann_files]
    for p in ann_files:
        check_class_names([p.stem], str(p), f"rename the file (e.g. to {p.stem}_class.txt)")
    ids = np.array(sorted(file_of), dtype=np.int64)
    if len(ids) == 0:
        raise DataError(f"no usable images: nothing in {images_dir} matches data.image_pattern={image_pattern!r}")
    row_of = {int(i): r for r, i in enumerate(ids)}
    labels = np.zeros((len(ids), len(classes)), dtype=np.int8)
    missing_ids: list[tuple[str, int]] = []
    for c, path in enumerate(ann_files):
        class_ids = _annotation_lines(path, problems if skip_bad_lines else None, collect)
        if not class_ids and collect is None:  # the audit counts classes without a positive itself
            problems.append(f"{path.name}: empty annotation file, class {path.stem!r} has no positives")
        for lineno, i in class_ids:
            r = row_of.get(i)
            if r is None:
                missing_ids.append((path.name, i))
                _note_missing(collect, path, lineno, image_pattern.format(id=i), images_dir)
            else:
                labels[r, c] = 1  # duplicates in a file simply set the same bit again
    if missing_ids:
        examples = ", ".join(f"{name}: {image_pattern.format(id=i)}" for name, i in missing_ids[:5])
        msg = (f"{len(missing_ids)} annotated image(s) have no file in {images_dir} (e.g. {examples})")
        if strict:
            raise DataError(msg + "; add the files or set data.strict=false to skip them")
        problems.append(msg + "; skipped")
    if collect is not None:
        collect += [Problem("file in the data root not read", p, "", "rename or move it (see the message)")
                    for p in problems if "annotated image(s) have no file" not in p]
    for p in problems if collect is None else []:  # the audit reports its findings itself
        log.warning(p)
    return DatasetIndex(root, classes, ids, [file_of[int(i)] for i in ids], labels, problems, image_dir=images_dir)


def _note_missing(collect: list[Problem] | None, path: Path, lineno: int, name: str, images_dir: Path) -> None:
    if collect is not None:
        collect.append(Problem("annotated image without a file", f"no {name} in {images_dir}", f"{path}:{lineno}",
                               "add the file, or data.strict=false (the default) skips it"))


def _image_files(images_dir: Path, image_pattern: str, problems: list[str]) -> dict[int, str]:
    """Image number -> file name. Files that do not match the pattern, and numbers written twice (im7.jpg and
    im007.jpg), are reported in ``problems``; of two files with one number the first name in sorted order is used."""
    regex = _pattern_regex(image_pattern)
    file_of: dict[int, str] = {}
    unmatched, collisions, links = [], [], []
    with os.scandir(images_dir) as entries:
        for entry in entries:  # directory order: a collision keeps the first name in sorted order, whatever the order
            name = entry.name
            why = unfollowable_link(entry.path) if entry.is_symlink() else None  # is_file() raises on a loop
            if why:
                links.append(f"{name}: {why}")
                continue
            m = regex.match(name)
            if m is None:
                if not name.startswith(".") and entry.is_file():
                    unmatched.append(name)
                continue
            if not entry.is_file():
                continue
            number = int(m.group(1))
            kept = file_of.setdefault(number, name)
            if kept != name:
                file_of[number], other = min(kept, name), max(kept, name)
                collisions.append((other, number))
    unmatched.sort()
    collisions = [f"{name} (number {n}, as {file_of[n]})" for name, n in sorted(collisions)]
    if unmatched:
        problems.append(f"{len(unmatched)} file(s) in {images_dir} do not match data.image_pattern={image_pattern!r} "
                        f"and were ignored ({_some(unmatched)})")
    if collisions:
        problems.append(f"{len(collisions)} file(s) in {images_dir} repeat an image number and were ignored "
                        f"({_some(collisions)})")
    if links:
        problems.append(f"{len(links)} symbolic link(s) in {images_dir} cannot be followed and were skipped: "
                        f"{some(sorted(links), sep='; ')}; remove or repair them")
    return file_of
