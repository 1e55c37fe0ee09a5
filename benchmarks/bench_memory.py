"""Peak memory (RSS) of indexing the 20,000-image set, and of one training epoch on it.

Each runs in a fresh subprocess, so the peaks are separate. The process's own peak RSS comes from
getrusage. DataLoader workers are forked, so their RSS counts pages shared with the main process
(torch's libraries, the dataset object) and RUSAGE_CHILDREN is no help (a child that execs, such as
``git rev-parse``, reports the parent's RSS); so a thread samples /proc every 0.5 s instead: each
worker's peak RSS and private memory (USS), and the peak of the proportional set size (PSS) summed
over the main process and its workers, which is what the run costs the machine. The epoch is a real
run: ``train(cfg)`` with smallcnn at 64 px, one epoch, MLflow to a temporary store, checkpoints,
figures, pyfunc model. A third subprocess only imports what train(cfg) imports, to show how much of
the peak is code.

    .venv/bin/python benchmarks/bench_memory.py [--num-images 20000]
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common

RESULT = "RESULT "
MIB = 1024  # /proc and getrusage speak KiB


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


def _rollup(pid: int) -> dict[str, float]:
    """Rss, Pss and USS (private clean + dirty) of a process in MiB; {} if it has gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                    out[key] = int(value.split()[0]) / MIB
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return {"rss": out["Rss"], "pss": out["Pss"], "uss": out["Private_Clean"] + out["Private_Dirty"]}


def _python_children(pid: int) -> list[int]:
    """Child processes that are Python (DataLoader workers), not ``git`` and the like."""
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except FileNotFoundError:
            pass
    out = []
    for k in kids:
        try:
            with open(f"/proc/{k}/comm") as f:
                if f.read().startswith(("python", "pt_data_worker")):
                    out.append(k)
        except FileNotFoundError:
            pass
    return out


class Sampler(threading.Thread):
    """Every ``period`` s: per-worker peak RSS/USS and the peak PSS of main + workers together."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period, self.stop = period, threading.Event()
        self.worker_rss = self.worker_uss = self.total_pss = self.main_pss = 0.0
        self.workers_seen: set[int] = set()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(self.period):
            main = _rollup(me)
            total = main.get("pss", 0.0)
            self.main_pss = max(self.main_pss, total)
            for pid in _python_children(me):
                r = _rollup(pid)
                if r:
                    self.workers_seen.add(pid)
                    self.worker_rss = max(self.worker_rss, r["rss"])
                    self.worker_uss = max(self.worker_uss, r["uss"])
                    total += r["pss"]
            self.total_pss = max(self.total_pss, total)


def child_index(args, tmp: Path) -> dict:
    from mlabel_exp.data.formats.folder import build_index

    root = _common.dataset(args.num_images)
    before, _ = _common.rss_mib()
    start = time.perf_counter()
    index = build_index(root)
    return {"rss_before": before, "peak": peak_mib(), "seconds": time.perf_counter() - start,
            "labels_mib": index.labels.nbytes / 2**20, "images": len(index)}


def child_imports(args, tmp: Path) -> dict:
    """RSS of the code alone: everything train(cfg) imports, nothing run."""
    import torch  # noqa: F401

    after_torch, _ = _common.rss_mib()
    for mod in ("mlabel_exp.run", "mlabel_exp.training.trainer", "mlabel_exp.tracking.runs", "mlabel_exp.render.figures",
                "mlabel_exp.experiment.record", "mlflow", "mlflow.pyfunc", "matplotlib.pyplot", "pandas",
                "iterstrat.ml_stratifiers"):
        __import__(mod)
    return {"after_torch": after_torch, "after_all": _common.rss_mib()[0]}


def child_epoch(args, tmp: Path) -> dict:
    import torch  # noqa: F401

    from mlabel_exp.data.loaders import default_workers
    from mlabel_exp.experiment.train import train
    from tests.conftest import compose_cfg

    before, _ = _common.rss_mib()
    cfg = compose_cfg(f"data.cache_dir={_common.CACHE}", f"data.synthetic.num_images={args.num_images}",
                      "trainer.epochs=1", f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
                      f"trainer.output_dir={tmp / 'out'}")
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    return {"rss_before": before, "peak": peak_mib(), "rss_after": _common.rss_mib()[0], "seconds": seconds,
            "workers": default_workers(-1), "workers_seen": len(sampler.workers_seen),
            "worker_rss": sampler.worker_rss, "worker_uss": sampler.worker_uss,
            "main_pss": sampler.main_pss, "total_pss": sampler.total_pss}


def measure(mode: str, args, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--num-images", str(args.num_images), "--tmp", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_common.REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"child {mode} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def main() -> None:
    args = _common.child_process_args(__doc__, 20000)
    if args.child:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        fn = {"index": child_index, "imports": child_imports, "epoch": child_epoch}[args.child]
        print(RESULT + json.dumps(fn(args, Path(args.tmp))), flush=True)
        return

    print(_common.machine_line())
    print(_common.calibration_line(), flush=True)
    root = _common.dataset(args.num_images)
    _common.warm_page_cache(root)
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        index = measure("index", args, Path(tmp))
        imports = measure("imports", args, Path(tmp))
        epoch = measure("epoch", args, Path(tmp))
    print(f"indexing {index['images']} images: peak RSS {index['peak']:.0f} MiB, of which "
          f"{index['peak'] - index['rss_before']:.1f} MiB above the process after its imports "
          f"({index['rss_before']:.0f} MiB); label matrix {index['labels_mib']:.2f} MiB; {index['seconds']:.2f} s")
    print(f"code alone: RSS {imports['after_torch']:.0f} MiB after import torch, {imports['after_all']:.0f} MiB "
          f"after everything train(cfg) imports (mlflow, torchmetrics, matplotlib, pandas, ...)")
    print(f"one training epoch (train(cfg), smallcnn 64 px, batch 32, {epoch['workers']} workers per loader, "
          f"{epoch['workers_seen']} worker processes seen, {epoch['seconds']:.0f} s): main process peak RSS "
          f"{epoch['peak']:.0f} MiB ({epoch['rss_before']:.0f} before train(), {epoch['rss_after']:.0f} after); "
          f"largest worker RSS {epoch['worker_rss']:.0f} MiB (private {epoch['worker_uss']:.0f} MiB, the rest "
          f"shared with the main process); main + workers PSS peak {epoch['total_pss']:.0f} MiB")
    print(f"peak memory (MiB): index RSS {index['peak']:.0f}; epoch main RSS {epoch['peak']:.0f}, "
          f"main + workers PSS {epoch['total_pss']:.0f}")


if __name__ == "__main__":
    main()
