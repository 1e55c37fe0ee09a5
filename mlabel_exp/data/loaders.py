"""Serving a data set to PyTorch: Datasets over image files or the decoded cache, batches that survive unreadable
images, epoch-seeded order, and the train/validation/test loaders of a run."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlabel_exp.config import Config, resolve_path
from mlabel_exp.data import cache as image_cache
from mlabel_exp.data.images import BatchTransform, image_steps, load_image, worker_augmentation
from mlabel_exp.data.index import DatasetIndex
from mlabel_exp.errors import DataError
from mlabel_exp.fsutil import epoch_seed
from mlabel_exp.runtime import distributed

log = logging.getLogger(__name__)


@dataclass
class BadSample:
    """Stands in for an unreadable image; ``collate`` drops it from the batch and reports it."""

    name: str
    error: str


class MultiLabelImages:
    """A map-style torch Dataset over image paths with optional multi-hot targets.

    Items are dicts: ``image`` (tensor), ``name`` (file name) and, with labels, ``target`` (float
    multi-hot: 1.0, 0.0, and -1.0 for an unknown label, which the losses and metrics mask out). An unreadable file gives a ``BadSample`` (``on_bad_image="skip"``, dropped by
    ``collate``) or a DataError naming it (``on_bad_image="error"``), so an epoch never dies halfway.
    """

    def __init__(self, paths: Sequence[Path], labels: np.ndarray | None, transform, on_bad_image: str = "skip",
                 names: Sequence[str] | None = None):
        """``names``: how items are named (default: the file name); predict names them by their path below the input."""
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(labels)} label rows")
        self.paths = list(paths)
        self.names = list(names) if names is not None else [p.name for p in self.paths]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)  # an unknown -1 stays -1.0
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
    rows that failed to decode are left out and reported in ``bad``, as ``collate`` does for files. Targets as in
    ``MultiLabelImages``: float 1/0, -1 for an unknown label.
    ``crop`` (data.images.worker_augmentation: a random crop, a policy's steps) runs per image; without it the
    cache's pixels go out as they are.
    """

    def __init__(self, cache, rows: Sequence[int], labels: np.ndarray | None, names: Sequence[str], crop=None):
        self.cache, self.rows, self.names, self.crop = cache, np.asarray(rows, dtype=np.int64), list(names), crop
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)  # an unknown -1 stays -1.0

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


def repeat_factors(labels: np.ndarray, threshold: float) -> np.ndarray:
    """Each image's repeat factor (LVIS, Gupta et al. 2019): the largest r_c = max(1, sqrt(t / f_c)) of its positive
    classes, f_c the share of the images holding class c (an unknown label holds nothing); 1 without a positive."""
    positive = np.asarray(labels) == 1
    share = positive.mean(0) if len(positive) else np.zeros(positive.shape[1])
    per_class = np.sqrt(threshold / np.where(share > 0, share, threshold))  # a class no image holds: never used
    return np.where(positive, np.maximum(1.0, per_class)[None, :], 1.0).max(1, initial=1.0)


class RepeatFactorSampler:
    """Repeat-factor sampling (detectron2's RepeatFactorTrainingSampler) by epochs: image i appears floor(r_i) times,
    plus once more with probability r_i - floor(r_i) (stochastic rounding, drawn anew each epoch), shuffled. The epoch
    has a fixed length, round(sum r_i), so that the LR schedule knows its steps: the draw is cut, or extended by its
    own first images, to that length (every copy as likely to go or repeat: the shares stay r_i / sum r). Depends
    only on (seed, epoch), as EpochShuffle. Under DDP every rank draws the same epoch and takes every world-th image
    from its rank on (the epoch padded to a multiple of the world size, as DistributedSampler pads)."""

    def __init__(self, factors: np.ndarray, seed: int = 0, rank: int = 0, world: int = 1):
        import torch

        self.factors = torch.as_tensor(np.asarray(factors, dtype=np.float64))
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0
        self.images = max(1, round(float(self.factors.sum())))  # of the whole epoch, every rank
        self.per_rank = -(-self.images // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def epoch_order(self):
        """The epoch's image indices, every rank's (``images`` of them), as a tensor."""
        import torch

        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        whole = torch.floor(self.factors)
        counts = whole + (torch.rand(len(whole), generator=g, dtype=torch.float64) < self.factors - whole)
        drawn = torch.repeat_interleave(torch.arange(len(whole)), counts.long())
        drawn = drawn[torch.randperm(len(drawn), generator=g)]
        return drawn.repeat(-(-self.images // max(len(drawn), 1)))[:self.images]

    def __iter__(self):
        order, total = self.epoch_order(), self.per_rank * self.world
        return iter(order.repeat(-(-total // len(order)))[:total][self.rank::self.world].tolist())


def train_sampler(cfg: Config, labels: np.ndarray, train_set):
    """The training loader's sampler: data.sampler's, each rank its share under DDP; None: make_loader's EpochShuffle."""
    if cfg.data.sampler == "repeat_factor":
        factors = repeat_factors(labels, cfg.data.repeat_threshold)
        sampler = RepeatFactorSampler(factors, cfg.seed, distributed.rank(), distributed.world_size())
        log.info("data.sampler=repeat_factor (t=%g): %d images an epoch from %d training images (%d of them repeated, "
                 "at most %.2fx)", cfg.data.repeat_threshold, sampler.images, len(factors), int((factors > 1).sum()),
                 float(factors.max(initial=1.0)))
        return sampler
    if distributed.active():  # each rank its share of every epoch
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(train_set, shuffle=True, seed=cfg.seed)
    return None


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


def decoded_cache(cfg: Config, index):
    """The decoded-image cache for this run (data.decoded_cache), or None: images are then decoded every epoch."""
    d = cfg.data
    size = d.decoded_cache_size or cfg.model.input_size
    if d.decoded_cache == "off":
        return None
    if d.decoded_cache == "auto":
        pays, why = image_cache.pays_off(len(index), size, cfg.trainer.epochs, d.cache_dir)
        log.info("data.decoded_cache=auto: %s (%s)", "on" if pays else "off", why)
        if not pays:
            return None
    cache = image_cache.open_or_build(index, size, resolve_path(d.cache_dir), threads=default_workers(-1),
                                      required=d.decoded_cache == "on", interpolation=cfg.model.interpolation)
    if cache is not None and cache.bad and d.on_bad_image == "error":
        row, error = next(iter(sorted(cache.bad.items())))
        raise DataError(f"{index.paths([row])[0]}: unreadable image ({error}); replace or remove the file, or set "
                        f"data.on_bad_image=skip ({len(cache.bad)} unreadable image(s) in all)")
    return cache


@dataclass
class Loaders:
    """What a training run reads its data through."""

    train: Any
    val: Any
    test: Any | None            # None without a test split (data.test_fraction=0)
    transform: Any              # BatchTransform: uint8 batches -> the model's input, on the device
    workers: int
    cache: Any | None           # the decoded-image cache, or None


def build_loaders(cfg: Config, index, split, cuda: bool) -> Loaders:
    """Train loader (ordered by data.sampler, by seed and epoch), validation and test loaders (in split order; each
    rank its share) of uint8 images, the BatchTransform that finishes them on the device; with the decoded cache,
    batches are gathered from it."""
    m, d = cfg.model, cfg.data
    cache = decoded_cache(cfg, index)
    workers = default_workers(d.num_workers, cached=cache is not None, cuda=cuda)

    def evaluation_set(rows):
        rows = rows[distributed.rank()::distributed.world_size()]  # each image once, no padding
        if cache is not None:
            return CachedImages.from_index(cache, index, rows)
        return MultiLabelImages.from_index(index, rows, image_steps(m.input_size, interpolation=m.interpolation),
                                           d.on_bad_image)

    drawn = worker_augmentation(d, m.input_size, m.interpolation)  # per image: a crop, a policy (None: nothing)
    if cache is not None:
        train_set = CachedImages.from_index(cache, index, split["train"], drawn)
    else:
        train_tf = image_steps(m.input_size, train=True, random_resized_crop=d.random_resized_crop,
                               crop_scale_min=d.crop_scale_min, interpolation=m.interpolation, policy=d.augment)
        train_set = MultiLabelImages.from_index(index, split["train"], train_tf, d.on_bad_image)
    sampler = train_sampler(cfg, index.labels[split["train"]], train_set)
    batch = cfg.trainer.batch_size
    train = make_loader(train_set, batch, shuffle=True, num_workers=workers, seed=cfg.seed, pin_memory=cuda,
                        sampler=sampler, persistent=drawn is None)  # workers that draw: reseeded per epoch
    val, test = (make_loader(evaluation_set(rows), batch, shuffle=False, num_workers=workers, pin_memory=cuda,
                             persistent=part == "val") if len(rows) else None
                 for part, rows in (("val", split["val"]), ("test", split.get("test", np.zeros(0, np.int64)))))
    transform = BatchTransform(m.input_size, m.mean, m.std, hflip=d.augment != "none", seed=cfg.seed,
                               interpolation=m.interpolation, cutout=d.cutout)
    return Loaders(train, val, test, transform, workers, cache)
