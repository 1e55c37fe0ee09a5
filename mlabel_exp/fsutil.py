"""File-system helpers every module may use: atomic writes, a cross-process file lock, per-epoch seeds.

A leaf: it imports nothing of ours, so anything can depend on it without a cycle.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` then rename over ``path``: a crash or kill mid-write keeps the previous file, and the temporary
    file never outlives the call."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Text or bytes to ``path``, atomically."""
    return _replace_atomically(path, lambda tmp: tmp.write_bytes(data if isinstance(data, bytes) else data.encode()))


def save_atomic(obj, path: Path) -> Path:
    """``torch.save`` to ``path``, atomically (checkpoints of several hundred MB are written while a job may be killed)."""
    import torch

    return _replace_atomically(path, lambda tmp: torch.save(obj, tmp))


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` across processes (sweep jobs, DDP ranks), from the maintained ``filelock``
    package (a dependency of torch): portable, and released if the holder dies."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The one seed of (run seed, epoch, rank): shuffling, worker augmentation and flips of an epoch depend on
    nothing else, so a resumed run draws what an uninterrupted one would."""
    return (seed * 100_003 + epoch) * 1_009 + rank
