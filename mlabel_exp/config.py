"""Typed schemas for every config group, and path resolution against the project root.

The dataclasses are registered with Hydra's ConfigStore as ``config_schema``: OmegaConf rejects an
unknown key or a wrong type while composing, and ``validate`` (``__post_init__`` range checks, run
when the config is turned into objects) rejects out-of-range values before any data is read. Every
message names the setting.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from mlabel_exp.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent


def _conf_dir() -> Path:
    """The Hydra config tree: mlabel_exp/conf in an installed wheel (pyproject.toml ships conf/ there), else conf/
    beside the package in a checkout (an editable install, or PYTHONPATH). Found on disk rather than imported
    (Hydra's pkg://), so that a checkout always reads its own conf/, never an installed copy's."""
    shipped = PACKAGE_DIR / "conf"
    return shipped if (shipped / "config.yaml").is_file() else PACKAGE_DIR.parent / "conf"


CONF_DIR = _conf_dir()




def project_root() -> Path:
    """Where outputs/, multirun/ and mlruns/ go and relative paths resolve: $MLABEL_EXP_ROOT, else the working
    directory; never where the package lies (an installed package lies in site-packages)."""
    env = os.environ.get("MLABEL_EXP_ROOT")
    return Path(env).expanduser().resolve() if env else Path.cwd()


# ${project_root:} in conf/ (hydra.run.dir, hydra.sweep.dir): Hydra's job folders go under the same root as mlruns/.
OmegaConf.register_new_resolver("project_root", lambda: str(project_root()), replace=True)


def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute path: ``~`` expanded, relative paths against the project root (never Hydra's job dir)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def _check(ok: bool, setting: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}={value!r} is invalid: expected {expected}")


def one_of(choices: tuple[str, ...]) -> str:
    """'a, b or c': how a message names the choices of a setting."""
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


def _choice(setting: str, value: Any, choices: tuple[str, ...]) -> None:
    _check(value in choices, setting, value, one_of(choices))


# Every choice a setting offers, declared once: the schema checks against these and the builders read them.
DATA_SOURCES = ("synthetic", "folder", "csv", "coco", "voc")
SYNTHETIC_FORMATS = ("folder", "csv", "onehot", "coco", "voc")
#: The data settings of one reader only: a run records those of its own data= format, not the others'.
FORMAT_SETTINGS = {
    "csv": ("images_dir", "csv_file", "csv_delimiter", "image_column", "labels_column", "label_separator"),
    "coco": ("images_dir", "annotations_file"), "voc": ("voc_split",)}
ON_BAD = ("skip", "error")
DECODED_CACHE_MODES = ("auto", "on", "off")
TRAINABLE_MODES = ("head", "partial", "all")
MODEL_SOURCES = ("builtin", "timm")  # builtin: models.backbones.REGISTRY (torchvision + SmallCNN); timm: any timm model
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # how images are resized to the model's input
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "step", "onecycle")
AMP_DTYPES = ("auto", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PROGRESS_MODES = ("auto", "bar", "log", "none")
LOSSES = ("bce", "focal", "asl")
POS_WEIGHTS = ("none", "balanced", "sqrt")
LOG_CHECKPOINTS = ("best", "all", "none")
AUGMENT_POLICIES = ("none", "flip", "randaugment", "trivialaugment")  # each after none includes the flips
SAMPLERS = ("random", "repeat_factor")
TTA_MODES = ("none", "flip")
#: Settings of an earlier version and what replaced them: a command line or config naming one is told so in one line.
RENAMED = {"data.augment.hflip": "data.augment=flip (true) or data.augment=none (false)",
           "data.augment.random_resized_crop": "data.random_resized_crop",
           "data.augment.crop_scale_min": "data.crop_scale_min"}


def _fraction(setting: str, value: float, *, upper_open: bool = True) -> None:
    _check(0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0, setting, value,
           "a number in [0, 1)" if upper_open else "a number in [0, 1]")


def upgraded(config: dict) -> dict:
    """A config an earlier version saved (a checkpoint's), in this version's names (RENAMED): data.augment's hflip,
    random_resized_crop and crop_scale_min. Changed in place, and returned."""
    data = config.get("data") or {}
    old = data.get("augment")
    if isinstance(old, dict):
        data["augment"] = "flip" if old.get("hflip", True) else "none"
        for key in ("random_resized_crop", "crop_scale_min"):
            if key in old:
                data.setdefault(key, old[key])
    return config


def _augment(value: Any) -> None:
    """data.augment: a policy name; a mapping (data.augment.hflip: ..., an earlier version's) is named with its
    replacement."""
    if isinstance(value, dict):
        raise ConfigError(f"data.augment={value!r} is invalid: data.augment is now one policy, "
                          f"{one_of(AUGMENT_POLICIES)}; " + "; ".join(f"{k} is now {v}" for k, v in RENAMED.items()))
    _choice("data.augment", value, AUGMENT_POLICIES)


@dataclass
class SyntheticConfig:
    """The embedded data set's generator parameters (synthetic.py draws from them; its cache is keyed by them)."""

    num_images: int = 4000
    image_size: int = 128
    seed: int = 0
    unlabeled_fraction: float = 0.4
    grayscale_fraction: float = 0.03
    max_objects: int = 4
    prefix: ClassVar[str] = "data.synthetic."  # how messages name these settings

    def __post_init__(self):
        p = self.prefix
        _check(self.num_images >= 1, f"{p}num_images", self.num_images, "an integer >= 1")
        _check(self.image_size >= 16, f"{p}image_size", self.image_size, "an integer >= 16")
        _fraction(f"{p}unlabeled_fraction", self.unlabeled_fraction)
        _fraction(f"{p}grayscale_fraction", self.grayscale_fraction, upper_open=False)
        _check(self.max_objects >= 1, f"{p}max_objects", self.max_objects, "an integer >= 1")
        _check(self.seed >= 0, f"{p}seed", self.seed, "an integer >= 0")


@dataclass
class SyntheticCommandConfig(SyntheticConfig):
    """python -m mlabel_exp.synthetic: the generator's parameters, top-level, and where to write (conf/synthetic.yaml)."""

    out: str = MISSING                   # output folder (created; must not hold a data set)
    format: str = "folder"               # folder | csv (labels column) | onehot (a column per class) | coco | voc
    prefix: ClassVar[str] = ""

    def __post_init__(self):
        super().__post_init__()
        _choice("format", self.format, SYNTHETIC_FORMATS)


@dataclass
class DataConfig:
    name: str = "synthetic"              # synthetic (generated, cached) | folder (images/ + annotations/) | csv | coco | voc
    root: Optional[str] = None           # folder, csv, coco, voc: the data root; synthetic: where to generate (default: cache)
    image_pattern: str = "im{id}.jpg"    # folder
    strict: bool = False                 # annotated images without a file: error instead of warning
    images_dir: Optional[str] = None     # csv, coco: folder the image paths are relative to (default root/images, else root)
    csv_file: Optional[str] = None       # csv: the labels file, relative to root (default: the one .csv/.tsv there)
    csv_delimiter: Optional[str] = None  # csv: field delimiter (default: detected from the header; tab as \t)
    image_column: Optional[str] = None   # csv: column of image paths (default: image, image_name, file, filename, path, id ...)
    labels_column: Optional[str] = None  # csv: column of class names; unset: detected (or one column per class, 1/0/-1)
    label_separator: Optional[str] = None  # csv: between class names in labels_column (default: space , ; or |)
    annotations_file: Optional[str] = None  # coco: the instances JSON, relative to root (default: the one .json)
    voc_split: str = "trainval"          # voc: ImageSets/Main/<voc_split>.txt (every XML when absent)
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_seed: int = 0
    split_file: Optional[str] = None     # reuse this split (JSON of file names); written there if absent
    folds: int = 0                       # K >= 2: K-fold cross-validation of the non-test images (0: val_fraction)
    fold: int = 0                        # with folds=K: the fold that validates, 0..K-1 (-m data.fold=0,1,2,3,4)
    num_workers: int = -1                # DataLoader workers; -1 = one per CPU core, at most 8
    cache_dir: str = "~/.cache/mlabel_exp"   # synthetic data sets and decoded-image caches
    decoded_cache: str = "auto"          # images decoded once into a memory-mapped array: auto (when it pays) | on | off
    decoded_cache_size: int = 0          # side in px of the cached images; 0 = model.input_size (resized once)
    verify_images: bool = False          # decode every image when auditing (finds truncated files)
    on_bad_image: str = "skip"           # unreadable image during training: skip (counted, listed on the run) | error
    on_bad_annotation: str = "error"     # malformed annotation line: error (file:line) | skip (reported on the run)
    # Training augmentation (docs/configuration.md: what each risks on multi-label images)
    augment: Any = "flip"                # none | flip (random horizontal flips) | randaugment | trivialaugment (+ flips)
    random_resized_crop: bool = False    # off by default: a crop can cut an object out while its label stays
    crop_scale_min: float = 0.6          # random_resized_crop: the smallest share of the image's area kept
    cutout: float = 0.0                  # > 0: a square of this share of the side erased with a random colour per image
    sampler: str = "random"              # random (each training image once an epoch) | repeat_factor (LVIS)
    repeat_threshold: float = 0.1        # repeat_factor: an image of a class in a share f < t of images repeats sqrt(t/f)x
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        _choice("data.name", self.name, DATA_SOURCES)
        holds = {"folder": "holding images/ and annotations/", "csv": "holding the labels CSV and the images",
                 "coco": "holding the COCO JSON and the images", "voc": "of a VOC devkit (Annotations/, JPEGImages/)"}
        if self.name in holds:
            _check(bool(self.root), "data.root", self.root,
                   f"the path of a folder {holds[self.name]} (data={self.name} data.root=PATH)")
        _check(self.csv_delimiter is None or len(self.csv_delimiter) == 1 or self.csv_delimiter in ("\\t", "tab"),
               "data.csv_delimiter", self.csv_delimiter, "one character such as , or ; (\\t or tab for a tab; quote "
               "a ; for the shell and Hydra: 'data.csv_delimiter=\";\"')")
        _check(self.label_separator is None or len(self.label_separator) >= 1, "data.label_separator",
               self.label_separator, "a non-empty string such as '|' or ';' (quoted for the shell and Hydra: "
               "'data.label_separator=\";\"'), or null (any of space , ; |)")
        _check(bool(self.voc_split.strip()) and "/" not in self.voc_split, "data.voc_split", self.voc_split,
               "the name of a file in ImageSets/Main/ without .txt, e.g. trainval")
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "a number in (0, 1)")
        _fraction("data.test_fraction", self.test_fraction)
        _check(self.val_fraction + self.test_fraction < 1.0, "data.val_fraction + data.test_fraction",
               self.val_fraction + self.test_fraction, "a sum below 1 (something must be left to train on)")
        _choice("data.on_bad_image", self.on_bad_image, ON_BAD)
        _choice("data.on_bad_annotation", self.on_bad_annotation, ON_BAD)
        _choice("data.decoded_cache", self.decoded_cache, DECODED_CACHE_MODES)
        _check(self.decoded_cache_size >= 0, "data.decoded_cache_size", self.decoded_cache_size,
               "0 (the model's input size) or a side in pixels")
        _check(self.num_workers >= -1, "data.num_workers", self.num_workers, "-1 (auto) or an integer >= 0")
        _check(self.split_seed >= 0, "data.split_seed", self.split_seed, "an integer >= 0")
        _check(self.folds == 0 or self.folds >= 2, "data.folds", self.folds,
               "0 (one validation split, data.val_fraction) or a number of folds >= 2, e.g. data.folds=5")
        if self.folds:
            _check(0 <= self.fold < self.folds, "data.fold", self.fold,
                   f"a fold of data.folds={self.folds}: 0 to {self.folds - 1} (-m data.fold="
                   f"{','.join(map(str, range(self.folds)))} runs them all)")
        else:
            _check(self.fold == 0, "data.fold", self.fold,
                   "0 without data.folds; for K-fold cross-validation set data.folds=K too, e.g. data.folds=5")
        _augment(self.augment)
        _check(0.0 < self.crop_scale_min <= 1.0, "data.crop_scale_min", self.crop_scale_min, "a number in (0, 1]")
        _fraction("data.cutout", self.cutout)
        _choice("data.sampler", self.sampler, SAMPLERS)
        _check(0.0 < self.repeat_threshold <= 1.0, "data.repeat_threshold", self.repeat_threshold,
               "a share of the training images in (0, 1], e.g. 0.1 (LVIS used 0.001 for its 1,203 classes)")


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ModelConfig:
    name: str = "smallcnn"               # a key of mlabel_exp.models.REGISTRY, or with source=timm any timm model
    source: str = "builtin"              # builtin | timm (model=timm)
    weights: Optional[str] = None        # null (random init) | DEFAULT | IMAGENET1K_V1 ... | path to a state dict
    # null only with source=timm: the model's own (timm's data config), filled in when a run starts
    input_size: Optional[int] = 64
    mean: Optional[List[float]] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: Optional[List[float]] = field(default_factory=lambda: list(IMAGENET_STD))
    interpolation: Optional[str] = "bilinear"  # resizing to input_size: bilinear | bicubic | nearest
    hidden: int = 0                      # width of a hidden layer in the head; 0 = one linear layer
    dropout: float = 0.0                 # this model's recommended dropout, used while dropout=model
    weight_decay: float = 1e-4           # this model's recommended weight decay, used while weight_decay=model
    trainable: Any = "all"               # head | partial | all | list of module-name patterns
    aux_logits: bool = True              # inception: train with the auxiliary head
    aux_weight: float = 0.4              # inception: loss = main + aux_weight * aux

    @property
    def key(self) -> str:
        """What the model builders take: the registry name, or timm:<name> for a timm model."""
        return model_key(self.name, self.source)

    def __post_init__(self):
        _choice("model.source", self.source, MODEL_SOURCES)
        unset = [k for k in ("input_size", "mean", "std", "interpolation") if getattr(self, k) is None]
        _check(not unset or self.source == "timm", f"model.{unset[0] if unset else ''}", None,
               "a value (null, the model's own, only with model=timm)")
        _check(self.input_size is None or self.input_size >= 16, "model.input_size", self.input_size,
               "an integer >= 16")
        _check((self.mean is None or len(self.mean) == 3) and (self.std is None or (
            len(self.std) == 3 and all(v > 0 for v in self.std))),
               "model.mean/model.std", (self.mean, self.std), "three values each, std > 0")
        if self.interpolation is not None:
            _choice("model.interpolation", self.interpolation, INTERPOLATIONS)
        _check(self.hidden >= 0, "model.hidden", self.hidden, "an integer >= 0")
        _check(self.hidden == 0 or self.source != "timm", "model.hidden", self.hidden,
               "0 with model=timm (timm models keep their own head, with model.dropout before it)")
        _fraction("model.dropout", self.dropout)
        _check(self.weight_decay >= 0, "model.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.aux_weight >= 0, "model.aux_weight", self.aux_weight, "a number >= 0")
        t = self.trainable
        ok = (isinstance(t, str) and t in TRAINABLE_MODES) or (
            isinstance(t, (list, tuple)) and len(t) > 0 and all(isinstance(v, str) and v for v in t))
        _check(ok, "model.trainable", t, f"{one_of(TRAINABLE_MODES)}, or a list of module-name patterns such as ['layer4']")


def model_key(name: str, source: str = "builtin") -> str:
    """One string naming an architecture across sources: ``resnet50`` (torchvision) vs ``timm:resnet50``."""
    return f"timm:{name}" if source == "timm" else name


@dataclass
class OptimizerConfig:
    name: str = "adamw"                  # adam | adamw | sgd
    lr: float = 4e-3
    momentum: float = 0.9                # sgd
    nesterov: bool = False               # sgd
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    backbone_lr_scale: float = 1.0       # backbone lr = lr * this; the new head keeps lr

    def __post_init__(self):
        _choice("optimizer.name", self.name, OPTIMIZERS)
        _check(self.lr > 0, "optimizer.lr", self.lr, "a number > 0")
        _check(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "a number in [0, 1)")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optimizer.betas", self.betas,
               "two numbers in [0, 1)")
        _check(self.backbone_lr_scale > 0, "optimizer.backbone_lr_scale", self.backbone_lr_scale, "a number > 0")


@dataclass
class SchedulerConfig:
    name: str = "onecycle"               # none | cosine | step | onecycle
    warmup_epochs: int = 0               # linear warm-up from lr/10 (not with onecycle, which warms up itself)
    step_size: int = 5                   # step: epochs between decays
    gamma: float = 0.1                   # step: decay factor
    min_lr_scale: float = 0.01           # cosine: final lr = lr * this

    def __post_init__(self):
        _choice("trainer.scheduler.name", self.name, SCHEDULERS)
        _check(self.warmup_epochs >= 0, "trainer.scheduler.warmup_epochs", self.warmup_epochs, "an integer >= 0")
        _check(self.step_size >= 1, "trainer.scheduler.step_size", self.step_size, "an integer >= 1")
        _check(0 < self.gamma <= 1, "trainer.scheduler.gamma", self.gamma, "a number in (0, 1]")


@dataclass
class TrainerConfig:
    epochs: int = 20                     # with early stopping; onecycle over 20 epochs: val mAP 0.88 on the embedded data
    batch_size: int = 32
    device: str = "auto"                 # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    devices: int = 1                     # > 1: data-parallel (DDP) processes on this machine; batch_size is per process
    amp: bool = True                     # mixed precision where it is native: CUDA; CPUs with bfloat16 instructions
    amp_dtype: str = "auto"              # CUDA: auto (bfloat16 where the GPU has it, else float16) | bfloat16 | float16
    compile: bool = False                # torch.compile the model (first steps slower while it compiles)
    channels_last: bool = True           # on CUDA and the CPU (oneDNN); not on MPS
    unfreeze_at_epoch: int = 0           # > 0: only the head trains for this many epochs, then model.trainable
    early_stopping_patience: int = 5     # epochs without val mAP improvement before stopping; 0 = never
    max_steps_per_epoch: int = 0         # > 0: cut each epoch (and validation) short; for smoke runs
    num_threads: int = 0                 # torch CPU threads; 0 = torch's default
    progress: str = "auto"               # auto (bar on a terminal, log lines otherwise) | bar | log | none
    log_every_steps: int = 50            # log-line progress and the lr metric: every this many steps
    checkpoint: bool = True              # write best.pt / last.pt in the job's output folder
    output_dir: Optional[str] = None     # default: Hydra's job folder (outputs/...)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ema: Any = None                      # weight averaging: null or 0 (off) | a decay per step in (0, 1) such as 0.9997 |
    #                                      a window: 3000steps, 2epochs (decay 1 - 1/steps); docs/recipes.md
    tta: str = "none"                    # none | flip: the final evaluation also scores the best weights with flip TTA

    def __post_init__(self):
        _choice("trainer.amp_dtype", self.amp_dtype, AMP_DTYPES)
        ema_setting(self.ema)
        _choice("trainer.tta", self.tta, TTA_MODES)
        _check(self.epochs >= 1, "trainer.epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "trainer.batch_size", self.batch_size, "an integer >= 1")
        _check(self.devices >= 1, "trainer.devices", self.devices, "an integer >= 1")
        _check(self.devices == 1 or self.unfreeze_at_epoch == 0, "trainer.unfreeze_at_epoch", self.unfreeze_at_epoch,
               "0 when trainer.devices > 1 (DDP does not pick up parameters unfrozen after it starts)")
        _check(self.unfreeze_at_epoch >= 0, "trainer.unfreeze_at_epoch", self.unfreeze_at_epoch, "an integer >= 0")
        _check(self.early_stopping_patience >= 0, "trainer.early_stopping_patience",
               self.early_stopping_patience, "an integer >= 0")
        _check(self.max_steps_per_epoch >= 0, "trainer.max_steps_per_epoch", self.max_steps_per_epoch, "an integer >= 0")
        _choice("trainer.progress", self.progress, PROGRESS_MODES)
        _choice("trainer.device", re.sub(r"^cuda:[0-9]+$", "cuda:N", self.device), DEVICES)


_EMA_WINDOW = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(step|epoch)s?\s*")


def ema_setting(value: Any) -> tuple[str, float] | None:
    """trainer.ema read: None (off: null or 0), ("decay", d) with d in (0, 1), or ("steps" | "epochs", n): a window of
    about n steps or epochs; anything else is a ConfigError naming the forms."""
    expected = ("null or 0 (off), a decay per step in (0, 1) such as 0.9997, or an averaging window such as 3000steps "
                "or 2epochs")
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check(0 < value < 1, "trainer.ema", value, expected)
        return "decay", float(value)
    window = _EMA_WINDOW.fullmatch(value) if isinstance(value, str) else None
    _check(window is not None and float(window.group(1)) > 0, "trainer.ema", value, expected)
    return window.group(2) + "s", float(window.group(1))


@dataclass
class LossConfig:
    name: str = "bce"                    # bce | focal | asl
    pos_weight: str = "none"             # bce: none | balanced (neg/pos) | sqrt (sqrt(neg/pos)), per class
    pos_weight_max: float = 10.0         # bce: clip for pos_weight
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05

    def __post_init__(self):
        _choice("loss.name", self.name, LOSSES)
        _choice("loss.pos_weight", self.pos_weight, POS_WEIGHTS)
        _check(self.pos_weight_max >= 1, "loss.pos_weight_max", self.pos_weight_max, "a number >= 1")
        _check(0 <= self.focal_alpha <= 1, "loss.focal_alpha", self.focal_alpha, "a number in [0, 1]")
        for k in ("focal_gamma", "asl_gamma_neg", "asl_gamma_pos"):
            _check(getattr(self, k) >= 0, f"loss.{k}", getattr(self, k), "a number >= 0")
        _check(0 <= self.asl_clip < 1, "loss.asl_clip", self.asl_clip, "a number in [0, 1)")


def dataset_name(data_cfg) -> str:
    """The data set's name: the synthetic set's spec, else its root folder's name. Runs land in the experiment of this
    name unless tracking.experiment says otherwise, so runs on different data are not one table."""
    if data_cfg.name == "synthetic":
        s = data_cfg.synthetic
        return f"synthetic ({s.num_images} images, {s.image_size} px, seed {s.seed})"
    root = resolve_path(str(data_cfg.root))
    return root.name or str(root)


def experiment_name(tracking_cfg, data_cfg) -> str:
    """The experiment a run (or a search, an audit) lands in: tracking.experiment, else the data set's name."""
    return tracking_cfg.experiment or dataset_name(data_cfg)


def resolved_tracking(cfg) -> "TrackingConfig":
    """A composed config's tracking settings (typed) with the experiment resolved (experiment_name)."""
    tracking = OmegaConf.to_object(cfg.tracking) if isinstance(cfg.tracking, DictConfig) else cfg.tracking
    tracking = TrackingConfig(**tracking) if isinstance(tracking, dict) else tracking  # an untyped config's
    tracking.experiment = experiment_name(tracking, cfg.data)
    return tracking


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None            # default: sqlite:///<project root>/mlruns/mlflow.db; or http://HOST:PORT
    artifact_location: Optional[str] = None  # new experiments' artifact root; default <project root>/mlruns/artifacts
    experiment: Optional[str] = None     # default: the data set's name (dataset_name) for run, search and inspect;
    #                                      compare and predict: the experiment of the store's newest run
    run_name: Optional[str] = None       # default: the model and the overrides
    log_checkpoints: str = "best"        # best: the best weights, once (in the model, else checkpoints/best.pt);
    #                                      all: also checkpoints/last.pt (weights + optimizer state); none: neither
    log_model: bool = True               # an MLflow pyfunc model (runs:/<id>/model) holding the best weights
    register: Optional[str] = None       # register that model under this name (a new version per run)

    def __post_init__(self):
        _choice("tracking.log_checkpoints", self.log_checkpoints, LOG_CHECKPOINTS)
        _check(self.log_checkpoints != "none" or not self.log_model, "tracking.log_checkpoints", self.log_checkpoints,
               "best or all while tracking.log_model=true (the model is made of the best weights), or none with "
               "tracking.log_model=false")
        _check(self.register is None or (self.log_model and self.enabled), "tracking.register", self.register,
               "null unless tracking.log_model=true and tracking.enabled=true (it registers the logged model)")
        _check(self.register is None or bool(str(self.register).strip()), "tracking.register", self.register,
               "a model name")


@dataclass
class SearchConfig:
    """python -m mlabel_exp.search: an Optuna study over config settings, maximising val mAP."""

    study: str = "regularisation"        # study name; the same name continues an interrupted search
    n_trials: int = 20                   # finished (complete or pruned) trials wanted in the study
    storage: Optional[str] = None        # default: sqlite:///<project root>/mlruns/optuna.db
    sampler_seed: int = 0
    pruner_startup_trials: int = 3       # MedianPruner: trials that are never pruned
    pruner_warmup_epochs: int = 1        # MedianPruner: epochs of a trial before pruning may start
    space: Any = field(default_factory=dict)  # setting -> {type: float|int|categorical, low, high, log, choices}

    def __post_init__(self):
        _check(self.n_trials >= 1, "search.n_trials", self.n_trials, "an integer >= 1")
        _check(isinstance(self.space, dict), "search.space", self.space,
               "a mapping of settings to ranges, e.g. {dropout: {type: float, low: 0, high: 0.6}}")
        for key, spec in self.space.items():
            kind = spec.get("type") if isinstance(spec, dict) else None
            ok = (kind in ("float", "int") and "low" in spec and "high" in spec and spec["low"] < spec["high"]) or (
                kind == "categorical" and len(spec.get("choices") or []) > 0)
            _check(ok, f"search.space.{key}", spec,
                   "{type: float|int, low: L, high: H[, log: true]} with L < H, or {type: categorical, choices: [...]}")


@dataclass
class DiagnosticsConfig:
    """Where and why a model fails (diagnostics/ of a run, and python -m mlabel_exp.diagnose): docs/diagnostics.md."""

    enabled: bool = True                 # written at the end of every training run
    gallery_classes: int = 0             # error galleries of the N classes with the most errors; 0: every class
    gallery_size: int = 6                # false positives (and false negatives) shown per class
    bins: int = 15                       # equal-width probability bins of ECE and (merged) of the reliability diagrams
    min_bin_count: int = 30              # labels a reliability bin holds at least (adjacent bins merged until it does)
    min_positives: int = 20              # a class with fewer positives (or negatives) is in the pooled diagram only
    resamples: int = 1000                # bootstrap resamples of the per-class AP intervals
    activation_maps: int = 2             # Grad-CAM maps: images of each kind (true positives, false positives, false
    #                                      negatives: the most confident) per class page; 0: no maps
    activation_map_classes: int = 4      # map pages of the N classes with the most errors; 0: every class

    def __post_init__(self):
        _check(self.gallery_classes >= 0, "diagnostics.gallery_classes", self.gallery_classes,
               "an integer >= 0 (0: every class)")
        _check(self.activation_maps >= 0, "diagnostics.activation_maps", self.activation_maps,
               "an integer >= 0 (0: no maps)")
        _check(self.activation_map_classes >= 0, "diagnostics.activation_map_classes", self.activation_map_classes,
               "an integer >= 0 (0: every class)")
        for key in ("gallery_size", "bins", "min_bin_count", "min_positives"):
            _check(getattr(self, key) >= 1, f"diagnostics.{key}", getattr(self, key), "an integer >= 1")
        _check(self.resamples >= 100, "diagnostics.resamples", self.resamples,
               "an integer >= 100 (the 2.5% and 97.5% percentiles need some resamples beyond them)")


@dataclass
class PresetsConfig:
    dropout: Any = field(default_factory=dict)
    weight_decay: Any = field(default_factory=dict)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    presets: PresetsConfig = field(default_factory=PresetsConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    dropout: Any = "model"               # a preset name (presets.dropout), "model", or a number in [0, 1)
    weight_decay: Any = "model"          # a preset name (presets.weight_decay), "model", or a number >= 0
    seed: int = 0
    resume: Optional[str] = None         # continue a run id, a prefix, or "latest" (the newest run with a last.pt, finished or not)

    def __post_init__(self):
        _check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        self.tracking.experiment = experiment_name(self.tracking, self.data)
        # Resolved to floats here: the composed config keeps what the user typed (e.g. "heavy").
        self.dropout = _regularisation("dropout", self.dropout, self.presets.dropout, self.model.dropout)
        _fraction("dropout", self.dropout)
        _check(self.tracking.register is None or self.trainer.checkpoint, "tracking.register", self.tracking.register,
               "null with trainer.checkpoint=false (the registered model is the best checkpoint)")
        self.weight_decay = _regularisation("weight_decay", self.weight_decay, self.presets.weight_decay,
                                            self.model.weight_decay)
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(self.trainer.unfreeze_at_epoch < self.trainer.epochs or self.trainer.unfreeze_at_epoch == 0,
               "trainer.unfreeze_at_epoch", self.trainer.unfreeze_at_epoch,
               f"0 or fewer than trainer.epochs={self.trainer.epochs}")
        frozen = [s for s, on in ((f"model.trainable={self.model.trainable}", self.model.trainable != "all"),
                                  (f"trainer.unfreeze_at_epoch={self.trainer.unfreeze_at_epoch}",
                                   self.trainer.unfreeze_at_epoch > 0)) if on]
        if self.model.weights is None and frozen:  # frozen random layers are random features, never trained
            raise ConfigError(f"model.weights=null (random init) with {' and '.join(frozen)} would freeze random "
                              f"layers: use pretrained weights (model.weights=DEFAULT or a state dict), or train "
                              f"everything from scratch with model.trainable=all trainer.unfreeze_at_epoch=0")


def _regularisation(setting: str, value: Any, presets: dict, model_value: float) -> float:
    """A preset name, 'model' (the model config's recommendation) or a plain number -> float."""
    if isinstance(value, str):
        if value == "model":
            return float(model_value)
        if value in presets:
            return float(presets[value])
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{setting}={value!r} is invalid: expected a number or one of "
                              f"{', '.join(['model', *presets])}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{setting}={value!r} is invalid: expected a number or a preset name")
    return float(value)


@dataclass
class SearchJobConfig(Config):
    """python -m mlabel_exp.search: a training run's config plus the study's settings (conf/search.yaml)."""

    search: SearchConfig = field(default_factory=SearchConfig)


@dataclass
class InspectConfig(Config):
    """python -m mlabel_exp.inspect: a training run's config (its data settings) plus where the audit goes."""

    out: Optional[str] = None            # the report and figures; default <project root>/outputs/inspect/<time>


@dataclass
class PredictConfig:
    input: str = MISSING                 # a folder of images or a glob such as 'images/im2*.jpg'
    run: Optional[str] = None            # a run id (or prefix, latest, best): its best.pt (in its model, or checkpoints/)
    checkpoint: Optional[str] = None     # or a checkpoint file (best.pt)
    model_file: Optional[str] = None     # model=: or an exported model file (.onnx: python -m mlabel_exp.export)
    out: Optional[str] = None            # output folder; default: Hydra's job folder (outputs/predict/...)
    threshold: Any = "tuned"             # tuned (the run's per-class thresholds, else 0.5) | a number
    batch_size: int = 64
    num_workers: int = -1
    device: str = "auto"
    log_to_run: bool = True              # with run=: log the outputs to that run as artifacts
    tta: str = "none"                    # none | flip: the mean of the probabilities of each image and its mirror image
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # model=FILE is short for model_file=FILE (a setting named model would be taken by Hydra for the config group
    # conf/model/ of a run)
    aliases: ClassVar[dict[str, str]] = {"model": "model_file"}

    def __post_init__(self):
        if not str(self.input).strip():
            raise ConfigError("input= is empty: give a folder of images or a glob such as input='images/*.jpg'")
        if sum(bool(v) for v in (self.run, self.checkpoint, self.model_file)) != 1:
            raise ConfigError("predict needs exactly one of run=<mlflow run id>, checkpoint=<path to best.pt> or "
                              "model=<exported .onnx file>")
        _check(not self.model_file or str(self.model_file).endswith(".onnx"), "model", self.model_file,
               "an exported .onnx file (python -m mlabel_exp.export run=<run> writes one)")
        if isinstance(self.threshold, str) and self.threshold != "tuned":
            try:
                self.threshold = float(self.threshold)
            except ValueError:
                raise ConfigError(f"threshold={self.threshold!r} is invalid: expected 'tuned' or a number") from None
        if not isinstance(self.threshold, str) and not 0 < float(self.threshold) < 1:
            raise ConfigError(f"threshold={self.threshold!r} is invalid: expected a number in (0, 1)")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r} is invalid: expected an integer >= 1")
        _choice("tta", self.tta, TTA_MODES)


EXPORT_FORMATS = ("onnx",)
EXPORTERS = ("auto", "dynamo", "legacy")


@dataclass
class ExportConfig:
    """python -m mlabel_exp.export: a run's model as an ONNX file, checked against the run (conf/export.yaml)."""

    run: Optional[str] = None            # a run id (or prefix, latest, best, a sweep parent's id)
    checkpoint: Optional[str] = None     # or a checkpoint file (best.pt): written and checked, logged nowhere
    format: str = "onnx"                 # onnx (TorchScript is not offered: torch.jit is deprecated)
    exporter: str = "auto"               # auto: torch.onnx's dynamo exporter, else the legacy TorchScript-based one
    out: Optional[str] = None            # default: the run's output folder's export/ (else outputs/export/<time>)
    images: Optional[str] = None         # parity images (a folder or glob); default: the run's validation images
    parity_batches: int = 4              # batches of parity images (batch_size each) at most
    batch_size: int = 32
    log_to_run: bool = True              # with run=: log the model under the run (MLflow's ONNX flavor)
    register: Optional[str] = None       # register that logged model under this name (a new version)
    tta: str = "none"                    # flip: the graph averages the probabilities of each image and its mirror image
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        _choice("tta", self.tta, TTA_MODES)
        if bool(self.run) == bool(self.checkpoint):
            raise ConfigError("export needs exactly one of run=<run id, prefix, latest or best> or "
                              "checkpoint=<path to best.pt>")
        if self.format == "torchscript":
            raise ConfigError("format=torchscript is not offered: torch.jit (trace, script, save) is deprecated in "
                              "torch 2.x in favour of torch.export; use format=onnx")
        _choice("format", self.format, EXPORT_FORMATS)
        _choice("exporter", self.exporter, EXPORTERS)
        _check(self.parity_batches >= 1, "parity_batches", self.parity_batches, "an integer >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.register is None or (bool(self.run) and self.log_to_run and bool(str(self.register).strip())),
               "register", self.register, "null, or a model name with run= and log_to_run=true (it registers the "
               "model logged under the run)")


@dataclass
class DiagnoseConfig:
    """python -m mlabel_exp.diagnose run=<run>: an earlier run's diagnostics from its logged predictions, no training."""

    run: str = MISSING                   # a run id, a unique prefix, latest, best or a sweep parent (its winning run)
    out: Optional[str] = None            # default: the run's own output folder if it is still here, else
    #                                      <project root>/outputs/diagnose/<run id>; the files go to <out>/diagnostics/
    log_to_run: bool = True              # log the files under diagnostics/ and the metrics into that run
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        if not str(self.run).strip():
            raise ConfigError("run= is empty: give a run id, a unique prefix of one, latest or best")


@dataclass
class CompareConfig:
    """python -m mlabel_exp.compare: which runs, and where the table goes (conf/compare.yaml)."""

    sweep: Optional[str] = None          # latest | a sweep parent's run id (or a prefix) | a sweep_id tag; null: every run
    filter: Optional[str] = None         # an MLflow filter string, e.g. "params.model.name = 'resnet50'"
    out: Optional[str] = None            # default: <project root>/outputs/compare/<time>
    log_to_mlflow: bool = True           # log the comparison as a run tagged mlabel.kind=comparison
    register_best: Optional[str] = None  # register the best run's model under this name, aliased champion
    wide: bool = False                   # print the tables at full width (default: fit 120 characters)
    cost: bool = True                    # measure each group's best model: parameters, checkpoint size, images/s
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # experiment=NAME is short for tracking.experiment=NAME (a setting of its own would be taken by Hydra for the
    # config group conf/experiment/ of a run)
    aliases: ClassVar[dict[str, str]] = {"experiment": "tracking.experiment"}


@dataclass
class LabelsConfig:
    """python -m mlabel_exp.labels run=<fold sweep>: the given labels most likely wrong, from the sweep's out-of-fold
    probabilities (conf/labels.yaml)."""

    run: str = MISSING                   # a fold sweep: its parent's run id (or a prefix), latest, a sweep_id, or one of its runs
    out: Optional[str] = None            # default: <project root>/outputs/labels/<time>
    per_class: int = 8                   # the gallery: each class's surest errors, at most this many
    log_to_run: bool = True              # log the table and the page on the sweep's parent run (artifacts labels/)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    aliases: ClassVar[dict[str, str]] = {"experiment": "tracking.experiment"}

    def __post_init__(self):
        if not str(self.run).strip():
            raise ConfigError("run= is empty: give a fold sweep's parent run id (or a prefix of it), or latest")
        _check(self.per_class >= 1, "per_class", self.per_class, "an integer >= 1")


def register(schema: type = Config, name: str = "config_schema") -> None:
    """A command's typed schema, under the name its conf/<command>.yaml starts from: a training run's (config_schema;
    the search command's is a training config plus ``search``), compare's, synthetic's, predict's."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=schema)


def not_a_setting(key: str, names: list[str], prefix: str) -> str:
    """'<key> is not a setting', with the closest valid name (or every valid one)."""
    import difflib

    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(names)}"
    return f"{prefix}{key} is not a setting ({hint})"


def _unknown_keys(node, schema: type, prefix: str = "") -> list[str]:
    """Keys of ``node`` that ``schema`` (a dataclass) does not have, each with the closest valid name."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    problems = []
    for key in node.keys():
        if key not in hints:
            problems.append(not_a_setting(str(key), list(hints), prefix))
        elif dataclasses.is_dataclass(hints[key]) and isinstance(node[key], DictConfig):
            problems += _unknown_keys(node[key], hints[key], f"{prefix}{key}.")
    return problems


def validate(cfg: DictConfig, schema: type = Config) -> Config:
    """Typed, range-checked view of a composed config; raises ConfigError naming the setting (and, for a misspelt
    key, the closest valid one)."""
    unknown = _unknown_keys(cfg, SearchJobConfig if "search" in cfg else schema)
    if unknown:
        raise ConfigError("; ".join(unknown))
    try:
        return OmegaConf.to_object(cfg)  # builds the dataclasses, which runs every __post_init__
    except ConfigError:
        raise
    except Exception as e:  # OmegaConf errors: the first line, with the key they are about
        raise ConfigError(one_line(e)) from e


def one_line(error: Exception) -> str:
    """An OmegaConf error as one line: its first line, prefixed with the setting it names (its full_key)."""
    from omegaconf.errors import MissingMandatoryValue

    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    key = getattr(error, "full_key", None)
    if isinstance(error, MissingMandatoryValue):
        key = key or first.rsplit(" ", 1)[-1]
        return f"{key} is required: give {key}=..."
    return f"{key}: {first}" if key and key not in first else first
