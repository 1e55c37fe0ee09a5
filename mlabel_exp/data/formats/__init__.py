"""Data formats: each reads a data root into a ``DatasetIndex``; ``index_from_config`` picks the reader for the
``data`` config by ``data.name``: folder (and the generated synthetic set, which is in the folder format), csv,
coco, voc."""

from __future__ import annotations

from pathlib import Path

from mlabel_exp.config import resolve_path
from mlabel_exp.data.formats.coco import read_coco
from mlabel_exp.data.formats.csv import read_csv
from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.data.formats.voc import read_voc
from mlabel_exp.data.index import DatasetIndex
from mlabel_exp.errors import DataError

#: what data.root holds, per format (the message for a missing root)
ROOT_HOLDS = {
    "folder": "holds images/ and annotations/",
    "csv": "holds the labels CSV and the images folder",
    "coco": "holds the COCO JSON and the images folder",
    "voc": "is the VOC devkit folder (Annotations/, JPEGImages/, ImageSets/Main/)",
}


def resolve_data_root(data_cfg) -> Path:
    """The data root a ``data`` config points at, generating the synthetic set on first use."""
    from mlabel_exp.data.synthetic import ensure_generated, generate

    if data_cfg.name in ROOT_HOLDS:
        root = resolve_path(data_cfg.root)
        if not root.is_dir():
            raise DataError(f"data.root={data_cfg.root!r}: {root} does not exist; set data.root to the folder that "
                            f"{ROOT_HOLDS[data_cfg.name]}")
        return root
    spec = data_cfg.synthetic
    if data_cfg.root:
        root = resolve_path(data_cfg.root)
        if not (root / "annotations").is_dir():
            generate(root, spec)
        return root
    return ensure_generated(resolve_path(data_cfg.cache_dir), spec)


def index_from_config(data_cfg) -> DatasetIndex:
    """The configured data set's index, read by its format's reader."""
    root = resolve_data_root(data_cfg)
    if data_cfg.name == "csv":
        return read_csv(root, data_cfg.csv_file, data_cfg.images_dir, data_cfg.image_column, data_cfg.labels_column,
                        data_cfg.label_separator, data_cfg.csv_delimiter, data_cfg.strict)
    if data_cfg.name == "coco":
        return read_coco(root, data_cfg.annotations_file, data_cfg.images_dir, data_cfg.strict)
    if data_cfg.name == "voc":
        return read_voc(root, data_cfg.voc_split, data_cfg.strict)
    return build_index(root, data_cfg.image_pattern, data_cfg.strict,
                       skip_bad_lines=data_cfg.on_bad_annotation == "skip")
