"""File-system helpers every module may use: atomic writes, shared bytes, a cross-process file lock, per-epoch seeds.

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


def share_bytes(copy: Path, original: Path) -> bool:
    """Make ``original`` a hard link to ``copy``, an identical copy another tool made of it (MLflow's artifact store):
    the bytes then sit on disk once and both paths still work; deleting either leaves the other whole. False, with
    ``original`` untouched, where they cannot share (sizes differ, another file system, no hard links)."""
    copy, original = Path(copy), Path(original)
    if copy.stat().st_size != original.stat().st_size:
        return False
    if os.path.samefile(copy, original):
        return True
    tmp = original.with_name(f".{original.name}.link-{os.getpid()}")
    try:
        os.link(copy, tmp)
        os.replace(tmp, original)
    except OSError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` across processes (sweep jobs, DDP ranks), from the maintained ``filelock``
    package (a dependency of torch): portable, and released if the holder dies."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


class Busy(Exception):
    """Another live process holds the lock."""


@contextmanager
def exclusive(path: Path):
    """Hold the lock on ``path`` while the block runs, or raise Busy at once if a live process holds it. The OS
    releases it when its holder dies, so a held lock means a live holder."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise Busy(str(path)) from None
    try:
        yield
    finally:
        lock.release()


def is_held(path: Path) -> bool:
    """True while a live process holds the lock on ``path`` (see ``exclusive``)."""
    if not Path(path).exists():
        return False
    try:
        with exclusive(path):
            return False
    except Busy:
        return True


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The one seed of (run seed, epoch, rank): shuffling, worker augmentation and flips of an epoch depend on
    nothing else, so a resumed run draws what an uninterrupted one would."""
    return (seed * 100_003 + epoch) * 1_009 + rank
