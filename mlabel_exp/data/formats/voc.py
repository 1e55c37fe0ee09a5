"""``data=voc``: a PASCAL VOC devkit folder: ``Annotations/<id>.xml``, ``JPEGImages/<file>`` and
``ImageSets/Main/<data.voc_split>.txt`` (one image id a line; every XML when that file is absent). Each object's
``<name>`` is a label of its image; a class present in an image only as ``difficult`` objects is unknown (-1) for
that image, as in the VOC protocol."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from mlabel_exp.data.formats.common import index_of, list_files, missing_files, missing_images, resolve_file, some
from mlabel_exp.data.index import DatasetIndex
from mlabel_exp.errors import DataError


def _image_ids(root: Path, split: str, problems: list[str]) -> list[str]:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if split_file.is_file():
        return [line.split()[0] for line in split_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    problems.append(f"{split_file} does not exist: every XML in {root / 'Annotations'} is used "
                    "(set data.voc_split to the name of a file in ImageSets/Main/)")
    return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))


def _objects(path: Path) -> tuple[str | None, set[str], set[str]]:
    """(file name, classes with a non-difficult object, classes with only difficult objects) of one XML."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise DataError(f"{path}: not valid XML ({e}); fix or remove the file") from e
    node = tree.getroot()
    file_name = (node.findtext("filename") or "").strip() or None
    sure, difficult = set(), set()
    for obj in node.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{path}: an <object> without <name>; every object needs a class name")
        (difficult if (obj.findtext("difficult") or "0").strip() == "1" else sure).add(name)
    return file_name, sure, difficult - sure


def read_voc(root: str | Path, split: str = "trainval", strict: bool = False) -> DatasetIndex:
    root = Path(root)
    missing_dirs = [d + "/" for d in ("Annotations", "JPEGImages") if not (root / d).is_dir()]
    if missing_dirs:
        raise DataError(f"data root {root} has no {' and no '.join(missing_dirs)}; data=voc expects a VOC devkit "
                        "folder (e.g. VOCdevkit/VOC2012) holding Annotations/, JPEGImages/ and ImageSets/Main/")
    problems: list[str] = []
    folder = root / "JPEGImages"
    existing = list_files(folder, problems)
    files, positives, unknown, missing, no_xml = [], [], [], [], []
    names = _image_ids(root, split, problems)
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not names:
        raise DataError((f"{listing} lists no image id" if listing.is_file() else
                         f"{root / 'Annotations'} holds no .xml file") + "; set data.voc_split to a list of this "
                        "devkit's images")
    for image_id in names:
        xml = root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            no_xml.append(str(xml))
            continue
        file_name, sure, unsure = _objects(xml)
        file = resolve_file(image_id, existing) or (resolve_file(file_name, existing) if file_name else None)
        if file is None:
            missing.append(file_name or image_id)
            continue
        files.append(file)
        positives.append(sure)
        unknown.append(unsure)
    if no_xml:
        missing_files(f"{listing}: {len(no_xml)} of {len(names)} listed image id(s) have no annotation file (e.g. "
                      f"{some(no_xml)})", len(no_xml) == len(names), strict, problems,
                      "set data.voc_split to a list of this devkit's images", "add the XML files, remove the ids")
    missing_images(missing, len(names) - len(no_xml), folder, str(listing), strict, problems)
    return index_of(root, folder, files, positives, unknown, problems=problems, source=str(root / "Annotations"))
