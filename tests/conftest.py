"""Shared fixtures: tiny hand-built data trees and a small synthetic data set.

The suite runs as on a CPU without bfloat16 instructions (float32 throughout) on every CPU, so that every machine runs
the same suite; ``make test`` then runs the tests marked ``precision`` again as on a CPU with them (bfloat16 autocast,
emulated where the instructions are missing). Both through $MLABEL_EXP_CPU_BF16 (training.precision.CPU_BF16_ENV),
which the processes the tests start inherit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("MLABEL_EXP_CPU_BF16", "0")  # training.precision.CPU_BF16_ENV, named here without importing torch


def write_tree(root: Path, image_ids, annotations: dict[str, str | bytes], size: int = 8) -> Path:
    """images/im<id>.jpg for each id and annotations/<name> with the given raw contents."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i in image_ids:
        Image.new("RGB", (size, size), (i * 7 % 256, 0, 0)).save(root / "images" / f"im{i}.jpg")
    for name, content in annotations.items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(root / "annotations" / name, mode, **({} if mode == "wb" else {"newline": ""})) as f:
            f.write(content)
    return root


def assert_labels_are_the_written_decisions(csv_path: Path, json_path: Path, classes: list[str],
                                            thresholds: list[float]) -> None:
    """Read back, in float64 and in float32: every label in a predictions CSV and JSON is exactly written probability
    >= written threshold; both files hold the same probabilities, and the JSON the thresholds given."""
    import json

    import pandas as pd

    payload = json.loads(json_path.read_text())
    assert list(payload["thresholds"].values()) == thresholds
    csv = pd.read_csv(csv_path, keep_default_na=False)
    records = [payload["predictions"][f] for f in csv["file"]]
    probs = np.array([[r["probabilities"][c] for c in classes] for r in records])
    assert np.array_equal(csv[classes].to_numpy(), probs)
    for p, t in ((probs, np.array(thresholds)), (probs.astype(np.float32), np.array(thresholds, dtype=np.float32))):
        expected = [[c for c, on in zip(classes, row) if on] for row in p >= t]
        assert [r["labels"] for r in records] == expected and [json.loads(s) for s in csv["labels"]] == expected


def huge_png(width: int = 12000, height: int = 12000) -> bytes:
    """A black 1-bit PNG of width x height, built row by row without decoding anything: ~20 KB for 12000 x 12000,
    which Pillow would decode to width * height bytes (mode "1"), and three times that as RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, z = bytes(1 + (width + 7) // 8), zlib.compressobj(9)  # filter byte 0, then the packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def raw_tiff(array: np.ndarray, photometric: int, extra_samples: tuple[int, ...] = ()) -> bytes:
    """An uncompressed little-endian TIFF of ``array`` (H x W or H x W x bands, uint8 or uint16), its tags written by
    hand: Pillow writes 8-bit RGB and greyscale and 16-bit greyscale (mode "I;16"), but neither 16-bit RGB nor a stack
    of bands. ``photometric``: tag 262 (1 grey, 2 RGB); ``extra_samples``: tag 338 (0 unspecified, 2 alpha)."""
    import struct

    a = np.ascontiguousarray(array if array.ndim == 3 else array[..., None])
    (h, w, bands), bits = a.shape, a.dtype.itemsize * 8
    pixels = a.astype(a.dtype.newbyteorder("<")).tobytes()
    tags = [(256, w), (257, h), (258, [bits] * bands), (259, 1), (262, photometric), (273, None), (277, bands),
            (278, h), (279, len(pixels)), (284, 1)] + ([(338, list(extra_samples))] if extra_samples else [])
    ifd_end = 8 + 2 + 12 * len(tags) + 4
    arrays = {tag: struct.pack(f"<{len(v)}H", *v) for tag, v in tags if isinstance(v, list) and len(v) > 2}
    at, offsets = ifd_end, {}
    for tag, blob in arrays.items():
        offsets[tag], at = at, at + len(blob)
    entries = b""
    for tag, value in tags:
        if tag in arrays:
            entries += struct.pack("<HHII", tag, 3, len(value), offsets[tag])
        elif isinstance(value, list):  # one or two shorts fit in the entry
            entries += struct.pack("<HHI", tag, 3, len(value)) + struct.pack(f"<{len(value)}H", *value).ljust(4, b"\0")
        else:  # a long: the strip's offset (after the arrays) or the value
            entries += struct.pack("<HHII", tag, 4, 1, at if tag == 273 else value)
    return b"II*\0" + struct.pack("<IH", 8, len(tags)) + entries + b"\0" * 4 + b"".join(arrays.values()) + pixels


def peak_memory_growth(fn) -> tuple[object, int]:
    """(fn(), how far this process's peak resident memory rose above its resident memory before, in bytes). Linux
    only: the peak (VmHWM) is reset through /proc/self/clear_refs; skips the test elsewhere."""
    import re

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")
    before = status("VmRSS")
    result = fn()
    return result, status("VmHWM") - before


@pytest.fixture(autouse=True)
def project_root_in_tmp(tmp_path, monkeypatch):
    """Runs started in-process write their default outputs/ under the test's tmp folder, not the checkout."""
    monkeypatch.setenv("MLABEL_EXP_ROOT", str(tmp_path / "project"))


@pytest.fixture
def tree(tmp_path):
    return lambda ids, ann, **kw: write_tree(tmp_path / "data", ids, ann, **kw)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A 300-image synthetic data set in the real layout, shared by the session."""
    from mlabel_exp.data.synthetic import SyntheticSpec, generate

    return generate(tmp_path_factory.mktemp("synthetic"), SyntheticSpec(num_images=300, image_size=64, seed=3))


def brute_force_labels(root: Path, classes: list[str], ids: np.ndarray) -> np.ndarray:
    """Reference multi-hot matrix: the obvious nested loop over annotation files."""
    out = np.zeros((len(ids), len(classes)), dtype=np.uint8)
    for c, name in enumerate(classes):
        listed = {int(t) for t in (root / "annotations" / f"{name}.txt").read_text().split()}
        for r, i in enumerate(ids):
            out[r, c] = int(int(i) in listed)
    return out


def compose_cfg(*overrides, command: str = "run"):
    """The composed config, exactly as `python -m mlabel_exp.<command> <overrides>` would see it (run or search)."""
    from hydra import compose, initialize_config_dir

    from mlabel_exp.config import CONF_DIR, Config, SearchJobConfig, register

    register(SearchJobConfig if command == "search" else Config)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="search" if command == "search" else "config", overrides=list(overrides))
    finally:
        register()


_STORE_TEMPLATE: list[Path] = []


def migrated_store(db: Path) -> Path:
    """An empty MLflow SQLite store at ``db``, copied from one this test process migrated once: a new store's first
    client runs MLflow's schema migrations (seconds), and most tests only need a store to write to. Tests of store
    creation itself (concurrent first use, a wrong path) open their own."""
    import atexit
    import shutil
    import tempfile

    if not _STORE_TEMPLATE:
        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="mlflow-store-template-"))
        atexit.register(shutil.rmtree, folder, True)
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        _STORE_TEMPLATE.append(folder / "mlflow.db")
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_STORE_TEMPLATE[0], db)
    return db


def tiny_overrides(tmp: Path, *extra: str, store: bool = True) -> list[str]:
    """A seconds-long run: 80 synthetic 32 px images, smoke trainer, everything under ``tmp`` (its MLflow store a copy
    of a migrated empty one: ``migrated_store``).

    Pinned to the CPU, also on a GPU host: tests compare runs bit for bit (same seed twice, resume against an
    uninterrupted run, cache on/off), which CUDA kernels do not promise. CUDA runs are tested where a GPU is
    (tests/test_accelerated.py). No pyfunc model is logged unless a test asks (``tracking.log_model=true``), and no
    diagnostics are drawn (``diagnostics.enabled=true``: seconds of figures a run; tests/test_run.py's test split run
    draws them).
    """
    if store:  # store=False: a test of what is opened (a run that fails first must not create a store)
        migrated_store(tmp / "mlruns" / "mlflow.db")
    return ["trainer=smoke", "trainer.device=cpu", "data.synthetic.num_images=80", "data.synthetic.image_size=32",
            "model.input_size=32", "data.num_workers=0", f"data.cache_dir={tmp / 'cache'}",
            f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", "tracking.experiment=mlabel-exp",
            "tracking.log_model=false", "diagnostics.enabled=false", *extra]


def mlflow_runs(tmp: Path, experiment: str = "mlabel-exp"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return out


@pytest.fixture(scope="session")
def _stand_in_hub(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("torch_home")


@pytest.fixture
def imagenet_weights(_stand_in_hub, monkeypatch):
    """TORCH_HOME holding stand-ins for torchvision's DEFAULT ImageNet weights: state dicts of torchvision's own
    architectures (random values, seed 0) under the exact hub-cache file names. ``place(*models)`` writes the ones
    asked for, once a session; returns {model: file}."""
    import torch
    import torchvision

    from mlabel_exp.fsutil import save_atomic
    from mlabel_exp.models.backbones import REGISTRY
    from mlabel_exp.models.weights import hub_file

    monkeypatch.setenv("TORCH_HOME", str(_stand_in_hub))

    def place(*models: str) -> dict[str, Path]:
        files = {}
        for name in models:
            arch = REGISTRY[name].arch
            file = files[name] = hub_file(torchvision.models.get_model_weights(arch).DEFAULT)
            if not file.exists():
                torch.manual_seed(0)
                kwargs = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
                file.parent.mkdir(parents=True, exist_ok=True)
                save_atomic(torchvision.models.get_model(arch, weights=None, **kwargs).state_dict(), file)
        return files

    return place


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """An empty TORCH_HOME and every download failing as it does offline (in this process and in the processes it
    starts: an https proxy on a closed port refuses every connection at once)."""
    import urllib.error
    import urllib.request

    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the markers
def pytest_collection_modifyitems(items):
    """Tests that train or start processes first: in several processes (pytest-xdist) the long ones then start early
    and the quick ones fill in at the end, instead of a minute-long test starting last. Under ``--dist loadgroup``
    (make test) the tests that share a module-scoped fixture (a run trained once for the module) go to one process,
    next to each other, so that it is trained once; every other test goes wherever a process is free."""
    def shares_module_fixture(item) -> bool:
        defs = getattr(item, "_fixtureinfo", None)
        return bool(defs) and any(d.scope == "module" for ds in defs.name2fixturedefs.values() for d in ds)

    grouped = {item.module.__name__ for item in items if shares_module_fixture(item)}
    trains = {item.module.__name__ for item in items
              if item.module.__name__ in grouped and item.get_closest_marker("integration")}
    for item in items:
        if item.module.__name__ in grouped and shares_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # a module's grouped tests keep their order and stay together (its fixture is torn down when another module's
    # test comes between them)
    items.sort(key=lambda item: (item.module.__name__ not in trains if shares_module_fixture(item)
                                 else item.get_closest_marker("integration") is None))
