"""Data layer: index a data root (images/ + annotations/), split it, and serve it to PyTorch.

The on-disk layout is the original project's: ``images/im<N>.jpg`` and ``annotations/<class>.txt``
listing the image numbers that contain the class. Class order is the sorted file stems, images that
appear in no annotation file are kept as all-zero targets, and every problem is reported with the
file and line it comes from.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

from mlabel_exp.config import IMAGENET_MEAN, IMAGENET_STD, UserError
from mlabel_exp.fsutil import epoch_seed, write_atomic


class DataError(UserError):
    """A data set that cannot be used as given; the message names the file and the fix."""


@dataclass
class DatasetIndex:
    """Everything known about a data root without decoding an image."""

    root: Path
    classes: list[str]
    ids: np.ndarray            # image numbers, ascending
    files: list[str]           # file names inside images/, aligned with ids
    labels: np.ndarray         # uint8, len(ids) x len(classes), multi-hot
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self, rows: Sequence[int] | None = None) -> list[Path]:
        rows = range(len(self.files)) if rows is None else rows
        return [self.root / "images" / self.files[r] for r in rows]


#: The columns the prediction files and the pyfunc model write beside one column per class (report.write_predictions,
#: report.write_submission, pyfunc_model.py): a class of one of these names would overwrite it or be overwritten.
OUTPUT_COLUMNS = ("file", "image", "labels", "true_labels", "error")


def check_class_names(classes: Sequence[str], where: str = "classes", fix: str = "rename that class") -> None:
    """Refuse a class named like an output column, before anything is trained or predicted. Refused rather than
    renamed in the outputs (a prefix on every class column): the CSVs keep the class names as their columns, the
    original course's submission format among them, and renaming an annotation file is a one-line fix."""
    clash = [c for c in classes if c in OUTPUT_COLUMNS]
    if clash:
        raise DataError(f"{where}: class {clash[0]!r} has the name of a column of the prediction files "
                        f"({', '.join(OUTPUT_COLUMNS)}), which it would overwrite; {fix}")


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
    ids = []
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    for lineno, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token:
            continue
        if not (token.isascii() and token.isdigit()) or int(token) == 0:  # ASCII digits only: not '²', not '٣'

            msg = f"{path}:{lineno}: {token[:40]!r} is not a positive image number"
            if problems is None:
                raise DataError(msg + "; each line of an annotation file must hold one image number such as 123 "
                                "(or set data.on_bad_annotation=skip)")
            problems.append(msg + "; line skipped")
            continue
        ids.append(int(token))
    return ids


def build_index(root: str | Path, image_pattern: str = "im{id}.jpg", strict: bool = False,
                skip_bad_lines: bool = False) -> DatasetIndex:
    """Index a data root in O(images + annotation lines).

    ``strict`` turns annotated ids without an image file into an error instead of a warning;
    ``skip_bad_lines`` turns malformed annotation lines into reported problems instead of an error.
    """
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
    labels = np.zeros((len(ids), len(classes)), dtype=np.uint8)
    missing_ids: list[tuple[str, int]] = []
    for c, path in enumerate(ann_files):
        class_ids = _read_annotation(path, problems if skip_bad_lines else None)
        if not class_ids:
            problems.append(f"{path.name}: empty annotation file, class {path.stem!r} has no positives")
        for i in class_ids:
            r = row_of.get(i)
            if r is None:
                missing_ids.append((path.name, i))
            else:
                labels[r, c] = 1  # duplicates in a file simply set the same bit again
    if missing_ids:
        examples = ", ".join(f"{name}: {image_pattern.format(id=i)}" for name, i in missing_ids[:5])
        msg = (f"{len(missing_ids)} annotated image(s) have no file in {images_dir} (e.g. {examples})")
        if strict:
            raise DataError(msg + "; add the files or set data.strict=false to skip them")
        problems.append(msg + "; skipped")
    for p in problems:
        log.warning(p)
    return DatasetIndex(root, classes, ids, [file_of[int(i)] for i in ids], labels, problems)


def _image_files(images_dir: Path, image_pattern: str, problems: list[str]) -> dict[int, str]:
    """Image number -> file name. Files that do not match the pattern, and numbers written twice (im7.jpg and
    im007.jpg), are reported in ``problems``; of two files with one number the first name in sorted order is used."""
    regex = _pattern_regex(image_pattern)
    file_of: dict[int, str] = {}
    unmatched, collisions = [], []
    with os.scandir(images_dir) as entries:
        for entry in entries:  # directory order: a collision keeps the first name in sorted order, whatever the order
            name = entry.name
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
    return file_of


# ---------------------------------------------------------------- split

SPLIT_ALGORITHM = 1  # make_split's version: bump when it changes, so that remembered splits are not reused


def make_split(labels: np.ndarray, val_fraction: float, test_fraction: float = 0.0,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded multi-label stratified split (iterative stratification) into train/val[/test] rows."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    rows = np.arange(len(labels))

    def cut(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if fraction <= 0:
            return rows, rows[:0]
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        keep, held = next(splitter.split(np.zeros(len(rows)), labels[rows]))
        return np.sort(rows[keep]), np.sort(rows[held])

    rest, test = cut(rows, test_fraction, seed)
    train, val = cut(rest, val_fraction / (1.0 - test_fraction), seed + 1)
    split = {"train": train, "val": val}
    if test_fraction > 0:
        split["test"] = test
    return split


def remembered_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                     folder: Path) -> dict[str, np.ndarray]:
    """``make_split``, remembered in ``folder`` under a digest of everything it depends on (the label matrix, the
    fractions, the seed, the iterstrat version): a run on the same data skips importing iterstrat and scikit-learn
    (~0.9 s of every run's start on 2 cores) and computing it. A missing or unreadable file is computed again."""
    import hashlib
    import zipfile
    from importlib.metadata import version

    content = np.ascontiguousarray(labels, dtype=np.uint8).tobytes()
    key = hashlib.sha256(repr((labels.shape, val_fraction, test_fraction, seed, version("iterative-stratification"),
                               SPLIT_ALGORITHM)).encode() + content).hexdigest()[:24]
    file = folder / f"{key}.npz"
    try:
        with np.load(file) as saved:
            return {k: saved[k] for k in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass
    split = make_split(labels, val_fraction, test_fraction, seed)
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


# ---------------------------------------------------------------- images and transforms

def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB; 16-bit and float images are rescaled, not clipped to white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode != "F":  # by the bit depth, never by the image's own maximum: one value, one grey everywhere
            arr = arr / 257.0  # 16-bit samples (Pillow opens 16-bit PNG and TIFF as I;16 or I) to 8 bits
        elif arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


class ImageTooLarge(DataError):
    """An image over the pixel limit, refused from its header before a pixel is decoded."""


def open_image(source: str | Path | bytes) -> Image.Image:
    """An image file (a path, or its bytes) opened from its header only, refused when its width x height exceeds
    PIL.Image.MAX_IMAGE_PIXELS (Pillow's limit, about 89 million: a 9459 px square, 268 MB as RGB; raise it there,
    or set it to None for no limit). Pillow itself only warns up to twice its limit, and decodes: a PNG of a few KB
    and 12000 x 12000 px would become 432 MB of RGB. Closing it is the caller's (``with open_image(...) as im``)."""
    fix = "refused before decoding; shrink the image, or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine"
    with warnings.catch_warnings():  # our own error below says it; Pillow's warning would repeat it
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        except Image.DecompressionBombError as e:  # over twice the limit: Pillow refuses too
            raise ImageTooLarge(f"{str(e).rstrip('.')}: {fix}") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and im.width * im.height > limit:
        im.close()
        raise ImageTooLarge(f"{im.width} x {im.height} pixels, over the limit of {limit} "
                            f"(PIL.Image.MAX_IMAGE_PIXELS): {fix}")
    return im


def load_image(source: str | Path | bytes) -> Image.Image:
    """Decode to RGB, through ``open_image``'s pixel limit: the one decoder of training, validation, the decoded
    cache, predict and the pyfunc model."""
    with open_image(source) as im:
        im.load()
        return to_rgb(im)


def image_steps(input_size: int, train: bool = False, random_resized_crop: bool = False,
                crop_scale_min: float = 0.6):
    """The per-image part of the pipeline, run in DataLoader workers: PIL image -> uint8 tensor at the input size.

    Everything else (scaling to float, the random flip, normalising) runs on whole batches on the training
    device (``BatchTransform``): workers send a quarter of the bytes and the GPU does the arithmetic.
    """
    from torchvision.transforms import v2

    steps = [v2.PILToTensor()]
    if train and random_resized_crop:
        steps.append(v2.RandomResizedCrop(input_size, scale=(crop_scale_min, 1.0), antialias=True))
    else:
        steps.append(v2.Resize((input_size, input_size), antialias=True))
    return v2.Compose(steps)


def build_transform(input_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    train: bool = False, random_resized_crop: bool = False, crop_scale_min: float = 0.6,
                    hflip: bool = False):
    """PIL image -> normalised float tensor, one image at a time: the two steps training runs (``image_steps`` in
    the workers, ``BatchTransform`` on the device) applied to a batch of one, so there is one definition of each."""
    steps = image_steps(input_size, train, random_resized_crop, crop_scale_min)
    finish = BatchTransform(input_size, mean, std, hflip=hflip)
    return lambda image: finish(steps(image)[None], train=train)[0]


class BatchTransform:
    """uint8 image batches -> normalised float32 batches, on the device they train on.

    A batch stored at another size (a decoded cache kept smaller) is resized here. In training each image
    is flipped with probability 1/2, drawn from a generator seeded by (seed, epoch, rank): the flips of an
    epoch do not depend on workers or on where a resumed run restarted.
    """

    def __init__(self, input_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 hflip: bool = False, seed: int = 0):
        self.input_size, self.mean, self.std, self.hflip, self.seed = input_size, list(mean), list(std), hflip, seed
        self.epoch_seed = seed
        self._generator, self._generator_device = None, None
        self._affine = {}  # device -> (scale, shift) with x / 255 normalised = x * scale + shift

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        self.epoch_seed = epoch_seed(self.seed, epoch, rank)
        self._generator = None

    def __call__(self, x, train: bool = False):
        """Few passes over the batch and one allocation: flips on uint8 (a quarter of the bytes), then float and an
        in-place multiply-add."""
        import torch
        from torchvision.transforms.v2 import functional as F

        if train and self.hflip:
            if self._generator is None or self._generator_device != x.device:  # once per epoch and device
                self._generator, self._generator_device = torch.Generator(x.device).manual_seed(self.epoch_seed), x.device
            flip = torch.rand(len(x), generator=self._generator, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x = x.to(torch.float32, copy=True)  # our own copy: the in-place steps below allocate nothing more
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.resize(x, [self.input_size, self.input_size], antialias=True)
        if x.device not in self._affine:
            mean, std = (torch.tensor(v, dtype=torch.float32, device=x.device)[:, None, None] for v in (self.mean, self.std))
            self._affine[x.device] = (1 / (255 * std), -mean / std)
        scale, shift = self._affine[x.device]
        return x.mul_(scale).add_(shift)


@dataclass
class BadSample:
    """Stands in for an unreadable image; ``collate`` drops it from the batch and reports it."""

    name: str
    error: str


class MultiLabelImages:
    """A map-style torch Dataset over image paths with optional multi-hot targets.

    Items are dicts: ``image`` (tensor), ``name`` (file name) and, with labels, ``target`` (float
    multi-hot). An unreadable file gives a ``BadSample`` (``on_bad_image="skip"``, dropped by
    ``collate``) or a DataError naming it (``on_bad_image="error"``), so an epoch never dies halfway.
    """

    def __init__(self, paths: Sequence[Path], labels: np.ndarray | None, transform, on_bad_image: str = "skip",
                 names: Sequence[str] | None = None):
        """``names``: how items are named (default: the file name); predict names them by their path below the input."""
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(labels)} label rows")
        self.paths = list(paths)
        self.names = list(names) if names is not None else [p.name for p in self.paths]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)
        self.transform = transform
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        path = self.paths[i]
        try:
            image = self.transform(load_image(path))
        except Exception as e:  # any decoder failure: truncated, not an image, too large, ...
            if self.on_bad_image == "error":
                raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e}); replace or remove the file, "
                                "or set data.on_bad_image=skip") from e
            return BadSample(self.names[i], f"{type(e).__name__}: {e}")
        item = {"image": image, "name": self.names[i]}
        if self.labels is not None:
            item["target"] = torch.from_numpy(self.labels[i])
        return item

    @classmethod
    def from_index(cls, index: DatasetIndex, rows: Sequence[int], transform, on_bad_image: str = "skip"):
        rows = np.asarray(rows, dtype=np.int64)
        return cls(index.paths(rows), index.labels[rows], transform, on_bad_image)


class CachedImages:
    """A Dataset over rows of a decoded-image cache: a batch is one gather from the memory-mapped array.

    ``__getitems__`` (which the DataLoader calls with a whole batch of indices) returns the batch itself;
    rows that failed to decode are left out and reported in ``bad``, as ``collate`` does for files.
    ``crop`` (a RandomResizedCrop) runs per image; without it the cache's pixels go out as they are.
    """

    def __init__(self, cache, rows: Sequence[int], labels: np.ndarray | None, names: Sequence[str], crop=None):
        self.cache, self.rows, self.names, self.crop = cache, np.asarray(rows, dtype=np.int64), list(names), crop
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[int]) -> dict:
        import torch

        bad = [(self.names[i], self.cache.bad[self.rows[i]]) for i in indices if self.rows[i] in self.cache.bad]
        if bad:
            indices = [i for i in indices if self.rows[i] not in self.cache.bad]
        batch = {"name": [self.names[i] for i in indices], "bad": bad}
        if not indices:
            return {**batch, "image": None}
        images = torch.from_numpy(np.asarray(self.cache.array[self.rows[indices]]))  # one copy out of the page cache
        if self.crop is not None:
            images = torch.stack([self.crop(im) for im in images])
        batch["image"] = images
        if self.labels is not None:
            batch["target"] = torch.from_numpy(self.labels[indices])
        return batch

    @classmethod
    def from_index(cls, cache, index: DatasetIndex, rows: Sequence[int], crop=None):
        rows = np.asarray(rows, dtype=np.int64)
        return cls(cache, rows, index.labels[rows], [index.files[r] for r in rows], crop)


def collate(items) -> dict:
    """Batch the readable items; ``bad`` lists (name, error) of the others. ``image`` is None when none is readable.
    A batch already made by a dataset's ``__getitems__`` (CachedImages) passes through."""
    from torch.utils.data import default_collate

    if isinstance(items, dict):
        return items
    good = [it for it in items if not isinstance(it, BadSample)]
    bad = [(it.name, it.error) for it in items if isinstance(it, BadSample)]
    batch = default_collate(good) if good else {"image": None, "name": []}
    batch["bad"] = bad
    return batch


class EpochShuffle:
    """A random order that depends only on (seed, epoch), set by ``set_epoch``: the same whether the DataLoader's
    workers persist across epochs or a resumed run starts afresh."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


# ---------------------------------------------------------------- from config

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
    return build_index(resolve_data_root(data_cfg), data_cfg.image_pattern, data_cfg.strict,
                       skip_bad_lines=data_cfg.on_bad_annotation == "skip")


def split_from_config(index: DatasetIndex, data_cfg, exact: bool = False) -> dict[str, np.ndarray]:
    """The configured split: read from ``data.split_file`` when it exists (``exact``: it must cover the data set),
    else computed (and saved there)."""
    from mlabel_exp.config import resolve_path

    path = resolve_path(data_cfg.split_file) if data_cfg.split_file else None
    if path is not None and path.exists():
        return load_split(path, index, exact)
    split = remembered_split(index.labels, data_cfg.val_fraction, data_cfg.test_fraction, data_cfg.split_seed,
                             resolve_path(data_cfg.cache_dir) / "splits")
    if path is not None:
        save_split(path, index, split, seed=data_cfg.split_seed, val_fraction=data_cfg.val_fraction,
                   test_fraction=data_cfg.test_fraction)
    return split


def check_validation_images(index: DatasetIndex, split: dict, cache=None) -> None:
    """Before training: a validation set with no image (or, known from the decoded cache, no readable image) would
    give no score at all."""
    rows = split["val"]
    unreadable = sum(int(r) in cache.bad for r in rows) if cache is not None else 0
    if len(rows) == unreadable:
        why = f"all {len(rows)} validation images are unreadable" if len(rows) else "the validation split is empty"
        raise DataError(f"{index.root}: {why}, so no epoch could be scored; add readable images or raise "
                        f"data.val_fraction (now {len(rows)} of {len(index)} images)")


def default_workers(requested: int, cached: bool = False, cuda: bool = False) -> int:
    """-1 (auto): decoding JPEGs, one DataLoader worker per CPU core available to this process, at most 8;
    reading a decoded cache, none on CPU (a gather from memory costs less than sending it between processes)
    and 4 on CUDA (gathering overlaps the GPU's work; on an H200, 2 workers left resnet50 at 0.88x, 4 at 0.97x)."""
    if requested >= 0:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if cached:
        return min(4, cores) if cuda else 0
    return max(1, min(8, cores))


def make_loader(dataset, batch_size: int, *, shuffle: bool, num_workers: int, seed: int = 0,
                pin_memory: bool = False, sampler=None, persistent: bool = False):
    """A DataLoader of ``collate`` batches whose ``set_epoch(epoch)`` makes the epoch's order and worker randomness a
    function of (seed, epoch): shuffling is an ``EpochShuffle`` (or the given sampler, e.g. DistributedSampler).
    ``persistent`` keeps the workers between epochs: only for workers that draw no random numbers (else their seeds
    would depend on where a resumed run started)."""
    import torch
    from torch.utils.data import DataLoader

    class EpochLoader(DataLoader):
        def set_epoch(self, epoch: int) -> None:
            if hasattr(self.sampler, "set_epoch"):  # EpochShuffle, DistributedSampler; not the sequential sampler
                self.sampler.set_epoch(epoch)
            self.generator.manual_seed(epoch_seed(seed, epoch))  # seeds the workers' random augmentation

    if sampler is None and shuffle:
        sampler = EpochShuffle(len(dataset), seed)
    return EpochLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                       generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory, collate_fn=collate,
                       drop_last=False, persistent_workers=persistent and num_workers > 0)
