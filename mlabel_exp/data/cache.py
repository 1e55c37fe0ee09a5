"""Decoded-image cache: every image of a data root decoded and resized once, kept as one uint8 array on disk.

Small images cost more to decode than to copy: a 128 px JPEG takes ~0.3 ms to decode and resize, a
row of this array microseconds. The array (N x 3 x S x S, in index order) is memory-mapped, so the
operating system's page cache holds it and every DataLoader worker shares it. It is keyed by the data
set's content (file names, sizes and modification times), the decode size and the decoder version:
a changed image gives a new key, never a stale pixel. Built under a file lock (a sweep's or DDP run's
jobs build it once), into a temporary file renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlabel_exp.data.images import image_steps, load_image
from mlabel_exp.data.index import DatasetIndex
from mlabel_exp.errors import DataError
from mlabel_exp.fsutil import file_lock, write_atomic

log = logging.getLogger(__name__)

VERSION = 1  # bump when decoding or resizing changes: old caches are then ignored
DISK_MARGIN = 1 << 30  # free disk left over after a cache is written, bytes


def fingerprint(index: DatasetIndex, size: int, interpolation: str = "bilinear") -> str:
    """A key that tells different files apart and changes when any of them changes: the resolved data root, and per
    image its name, size, modification and change times and inode (a copy that keeps names, sizes and times, as
    ``cp -p`` or ``rsync -a`` make, still has other inodes and change times), plus the decode size and the resize's
    interpolation (bilinear, the default, keeps the keys caches had before there was a choice)."""
    resize = "" if interpolation == "bilinear" else f" interpolation={interpolation}"
    h = hashlib.sha256(f"v{VERSION} size={size}{resize} n={len(index)} root={Path(index.root).resolve()}\n".encode())
    for name, path in zip(index.files, index.paths()):  # name: the file name in the folder format, as ever
        st = path.stat()
        h.update(f"{name} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_dev}:{st.st_ino}\n".encode())
    return h.hexdigest()[:24]


def nbytes(n_images: int, size: int) -> int:
    return n_images * 3 * size * size


@dataclass
class DecodedCache:
    """A built cache: ``array`` is opened lazily per process, so a DataLoader worker maps it instead of receiving a copy."""

    path: Path
    size: int
    bad: dict[int, str]  # index row -> decoding error; those rows hold zeros

    def __post_init__(self):
        self._array = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getstate__(self):  # pickled into spawned workers: the path, not the pixels
        return {k: v for k, v in self.__dict__.items() if k != "_array"} | {"_array": None}


def open_or_build(index: DatasetIndex, size: int, cache_dir: str | Path, *, threads: int = 2,
                  required: bool = False, interpolation: str = "bilinear") -> DecodedCache | None:
    """The cache of ``index`` at ``size`` px (resized with ``interpolation``), built on first use; None (with a
    warning) when the disk lacks room, or a DataError when ``required``."""
    key = fingerprint(index, size, interpolation)
    folder = Path(cache_dir).expanduser() / "decoded"
    final, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the decoded-image cache folder {folder} ({e.strerror}): set data.cache_dir "
                        "to a writable folder, or data.decoded_cache=off") from e
    with file_lock(folder / f".{key}.lock"):
        if final.is_file() and meta_path.is_file():
            if json.loads(meta_path.read_text()).get("root") == str(Path(index.root).resolve()):
                return _opened(final, meta_path, size)
            log.warning("decoded cache %s was built from another data root: rebuilding it", final)
        need, free = nbytes(len(index), size), shutil.disk_usage(folder).free
        if need + DISK_MARGIN > free:
            msg = (f"the decoded-image cache needs {need / 2**30:.2f} GiB (+1 GiB margin) in {folder}, which has "
                   f"{free / 2**30:.2f} GiB free: set data.cache_dir to a larger disk, a smaller data.decoded_cache_size, "
                   "or data.decoded_cache=off")
            if required:
                raise DataError(msg)
            log.warning("%s; training without it", msg)
            return None
        for stale in folder.glob(f".{key}.tmp-*.npy"):  # left by a build that was killed (we hold the lock)
            stale.unlink(missing_ok=True)
        log.info("decoding %d images once into %s (%.2f GiB, %d px)", len(index), final, need / 2**30, size)
        tmp = folder / f".{key}.tmp-{os.getpid()}.npy"
        try:
            bad = _build(tmp, index.paths(), size, threads, interpolation)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        write_atomic(meta_path, json.dumps({"version": VERSION, "size": size, "root": str(Path(index.root).resolve()),
                                            "images": len(index), "bad": {str(r): e for r, e in bad.items()}}))
        return _opened(final, meta_path, size)


def _opened(final: Path, meta_path: Path, size: int) -> DecodedCache:
    meta = json.loads(meta_path.read_text())
    return DecodedCache(final, size, {int(r): e for r, e in meta["bad"].items()})


def _build(tmp: Path, paths: list[Path], size: int, threads: int, interpolation: str) -> dict[int, str]:
    """Decode every image into a fresh array; Pillow and torch release the GIL, so threads decode in parallel."""
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size))
    steps = image_steps(size, interpolation=interpolation)  # exactly what the per-epoch pipeline's workers make (stateless: shared by threads)
    if hasattr(os, "posix_fallocate"):  # reserve the blocks now: a full disk is an OSError here, not a SIGBUS later
        with open(tmp, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, tmp.stat().st_size)

    def fill(rows: range) -> dict[int, str]:
        bad = {}
        for r in rows:
            try:
                array[r] = steps(load_image(paths[r])).numpy()
            except Exception as e:  # noted and zero-filled; training skips and reports the image
                bad[r] = f"{type(e).__name__}: {e}"
        return bad

    chunk = 256
    bad: dict[int, str] = {}
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for part in pool.map(fill, [range(i, min(i + chunk, len(paths))) for i in range(0, len(paths), chunk)]):
            bad.update(part)
    array.flush()
    del array
    return bad


HASH_BYTES = 16  # blake2b-128 of a file's bytes: tells changed files apart (the decoded cache's key only says *that*)


def content_hashes(index: DatasetIndex, cache_dir: str | Path, *, threads: int = 2) -> np.ndarray:
    """blake2b-128 of each image file's bytes (rows of ``index`` x HASH_BYTES, uint8): what a run's data digest and a
    resume's data check compare, so that replaced pixels count as changed data. Kept in ``<cache_dir>/hashes/`` per
    data root, with the size, times and inode each file had (as ``fingerprint`` reads them): a file is read again only
    when one of them changed. A read-only cache folder costs every run the reading, nothing else."""
    root = Path(index.root).resolve()
    if Path(index.image_dir).resolve() != root / "images":  # other formats: keyed by their image folder
        root = Path(index.image_dir).resolve()
    folder = Path(cache_dir).expanduser() / "hashes"
    path = folder / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json"
    try:
        with file_lock(folder / f".{path.stem}.lock"):  # jobs of a sweep read each file once between them
            return _hashes(index, path, threads, keep=True)
    except OSError as e:
        log.debug("content hashes not kept in %s: %s", folder, e)
        return _hashes(index, path, threads, keep=False)


def _hashes(index: DatasetIndex, path: Path, threads: int, keep: bool) -> np.ndarray:
    try:
        known = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError):
        known = {}
    out = np.zeros((len(index), HASH_BYTES), dtype=np.uint8)
    folder = str(index.image_dir)
    paths = [os.path.join(folder, name) for name in index.files]  # strings: Path objects cost 3x the stat calls
    stats, todo = [], []
    for r, p in enumerate(paths):
        try:
            st = os.stat(p)
            stat = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        except OSError:
            stat = None  # gone or unreadable: zeros, never kept
        stats.append(stat)
        entry = known.get(index.files[r])
        if stat is not None and entry is not None and entry[:4] == stat:
            out[r] = np.frombuffer(bytes.fromhex(entry[4]), dtype=np.uint8)
        elif stat is not None:
            todo.append(r)

    def read(r: int) -> tuple[int, bytes | None]:
        try:  # hashlib releases the GIL: threads hash in parallel
            return r, hashlib.blake2b(Path(paths[r]).read_bytes(), digest_size=HASH_BYTES).digest()
        except OSError:
            return r, None

    if todo:
        log.info("hashing the content of %d image file(s) in %s (once: kept in %s)", len(todo), index.root, path.parent)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for r, digest in pool.map(read, todo):
                if digest is None:
                    stats[r] = None
                else:
                    out[r] = np.frombuffer(digest, dtype=np.uint8)
    gone = any(stat is None and name in known for name, stat in zip(index.files, stats))
    if keep and (todo or gone):  # other indexes' files of this root (another image_pattern) stay while they exist
        files = {name: entry for name, entry in known.items() if os.path.isfile(os.path.join(folder, name))}
        files |= {name: [*stat, out[r].tobytes().hex()] for r, (name, stat) in enumerate(zip(index.files, stats))
                  if stat is not None}
        write_atomic(path, json.dumps({"version": 1, "root": str(Path(index.root).resolve()), "files": files}))
    return out


def pays_off(n_images: int, size: int, epochs: int, cache_dir: str | Path) -> tuple[bool, str]:
    """``data.decoded_cache=auto``: cache when images are read more than once and the array stays in memory
    (at most half the RAM) and on disk (at most half the free space). Returns (decision, reason)."""
    need = nbytes(n_images, size)
    if epochs < 2:
        return False, "one epoch reads every image once"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > ram / 2:
        return False, f"{need / 2**30:.1f} GiB would not stay in the page cache ({ram / 2**30:.0f} GiB RAM)"
    folder = Path(cache_dir).expanduser()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > free / 2:
        return False, f"{need / 2**30:.1f} GiB is over half the free disk in {folder} ({free / 2**30:.1f} GiB)"
    return True, f"{need / 2**30:.2f} GiB for {n_images} images at {size} px"
