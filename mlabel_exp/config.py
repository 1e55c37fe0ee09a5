"""Typed schemas for every config group, and path resolution against the project root.

The dataclasses are registered with Hydra's ConfigStore as ``config_schema``: OmegaConf rejects an
unknown key or a wrong type while composing, and ``validate`` (``__post_init__`` range checks, run
when the config is turned into objects) rejects out-of-range values before any data is read. Every
message names the setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR.parent / "conf"


class ConfigError(ValueError):
    """A setting with a bad value; the message names the setting and what it accepts."""


def project_root() -> Path:
    """Where relative paths resolve: $MLABEL_EXP_ROOT, else the checkout holding conf/, else the cwd."""
    env = os.environ.get("MLABEL_EXP_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    return PACKAGE_DIR.parent if CONF_DIR.is_dir() else Path.cwd()


def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute path: ``~`` expanded, relative paths against the project root (never Hydra's job dir)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def _check(ok: bool, setting: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}={value!r} is invalid: expected {expected}")


def _fraction(setting: str, value: float, *, upper_open: bool = True) -> None:
    _check(0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0, setting, value,
           "a number in [0, 1)" if upper_open else "a number in [0, 1]")


@dataclass
class AugmentConfig:
    random_resized_crop: bool = True
    crop_scale_min: float = 0.6
    hflip: bool = True

    def __post_init__(self):
        _check(0.0 < self.crop_scale_min <= 1.0, "data.augment.crop_scale_min", self.crop_scale_min,
               "a number in (0, 1]")


@dataclass
class SyntheticConfig:
    num_images: int = 4000
    image_size: int = 128
    seed: int = 0
    unlabeled_fraction: float = 0.4
    grayscale_fraction: float = 0.03

    def __post_init__(self):
        _check(self.num_images >= 1, "data.synthetic.num_images", self.num_images, "an integer >= 1")
        _check(self.image_size >= 16, "data.synthetic.image_size", self.image_size, "an integer >= 16")
        _fraction("data.synthetic.unlabeled_fraction", self.unlabeled_fraction)
        _fraction("data.synthetic.grayscale_fraction", self.grayscale_fraction, upper_open=False)


@dataclass
class DataConfig:
    name: str = "synthetic"              # synthetic (generated, cached) | folder (images/ + annotations/ at root)
    root: Optional[str] = None           # folder: the data root; synthetic: where to generate (default: cache)
    image_pattern: str = "im{id}.jpg"
    strict: bool = False                 # annotated ids without an image file: error instead of warning
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_seed: int = 0
    split_file: Optional[str] = None     # reuse this split (JSON of file names); written there if absent
    num_workers: int = -1                # DataLoader workers; -1 = one per CPU core, at most 8
    cache_dir: str = "~/.cache/mlabel_exp"
    verify_images: bool = False          # decode every image when auditing (finds truncated files)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        _check(self.name in ("synthetic", "folder"), "data.name", self.name, "'synthetic' or 'folder'")
        if self.name == "folder":
            _check(bool(self.root), "data.root", self.root,
                   "the path of a folder holding images/ and annotations/ (data=folder data.root=PATH)")
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "a number in (0, 1)")
        _fraction("data.test_fraction", self.test_fraction)
        _check(self.val_fraction + self.test_fraction < 1.0, "data.val_fraction + data.test_fraction",
               self.val_fraction + self.test_fraction, "a sum below 1 (something must be left to train on)")
        _check(self.num_workers >= -1, "data.num_workers", self.num_workers, "-1 (auto) or an integer >= 0")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=Config)


def validate(cfg: DictConfig) -> Config:
    """Typed, range-checked view of a composed config; raises ConfigError naming the setting."""
    try:
        return OmegaConf.to_object(cfg)  # builds the dataclasses, which runs every __post_init__
    except ConfigError:
        raise
    except Exception as e:  # OmegaConf type errors already name the key
        raise ConfigError(str(e)) from e
