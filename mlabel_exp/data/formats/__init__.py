"""Data formats: each reads a data root into a ``DatasetIndex``; ``index_from_config`` picks the reader for the
``data`` config (data=folder and the generated synthetic set are both in the folder format)."""

from __future__ import annotations

from pathlib import Path

from mlabel_exp.data.formats.folder import build_index
from mlabel_exp.data.index import DataError, DatasetIndex


def resolve_data_root(data_cfg) -> Path:
    """The data root a ``data`` config points at, generating the synthetic set on first use."""
    from mlabel_exp.config import resolve_path
    from mlabel_exp.data.synthetic import ensure_generated, generate

    if data_cfg.name == "folder":
        root = resolve_path(data_cfg.root)
        if not root.is_dir():
            raise DataError(f"data.root={data_cfg.root!r}: {root} does not exist; set data.root to the folder that "
                            "holds images/ and annotations/")
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
    return build_index(resolve_data_root(data_cfg), data_cfg.image_pattern, data_cfg.strict,
                       skip_bad_lines=data_cfg.on_bad_annotation == "skip")
