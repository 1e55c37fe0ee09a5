"""Peak memory (RSS) of indexing the 20,000-image set, and of one training epoch on it.

Each runs in a fresh subprocess, so the peaks are separate. Peaks come from getrusage: the process's
own peak, and for the epoch also the largest DataLoader worker's (RUSAGE_CHILDREN after the workers
have exited). Worker pages shared with the parent (fork: torch's libraries, the dataset object) are
counted in both, so main + worker overstates the machine's total. The epoch is a real run:
``train(cfg)`` with smallcnn at 64 px, one epoch, MLflow to a temporary store, checkpoints, figures.

    .venv/bin/python benchmarks/bench_memory.py [--num-images 20000]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

RESULT = "RESULT "


def peak_mib(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def child_index(args, tmp: Path) -> dict:
    from mlabel_exp.data import build_index

    root = _common.dataset(args.num_images)
    before, _ = _common.rss_mib()
    start = time.perf_counter()
    index = build_index(root)
    return {"rss_before": before, "peak": peak_mib(), "seconds": time.perf_counter() - start,
            "labels_mib": index.labels.nbytes / 2**20, "images": len(index)}


def child_epoch(args, tmp: Path) -> dict:
    import torch  # noqa: F401

    from mlabel_exp.run import train
    from tests.conftest import compose_cfg

    before, _ = _common.rss_mib()
    cfg = compose_cfg(f"data.cache_dir={_common.CACHE}", f"data.synthetic.num_images={args.num_images}",
                      "trainer.epochs=1", f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
                      f"trainer.output_dir={tmp / 'out'}")
    start = time.perf_counter()
    train(cfg)
    return {"rss_before": before, "peak": peak_mib(), "worker_peak": peak_mib(resource.RUSAGE_CHILDREN),
            "seconds": time.perf_counter() - start, "workers": _workers()}


def _workers() -> int:
    from mlabel_exp.data import default_workers

    return default_workers(-1)


def measure(mode: str, args, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--num-images", str(args.num_images), "--tmp", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_common.REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"child {mode} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=20000)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        fn = {"index": child_index, "epoch": child_epoch}[args.child]
        print(RESULT + json.dumps(fn(args, Path(args.tmp))), flush=True)
        return

    print(_common.machine_line())
    root = _common.dataset(args.num_images)
    _common.warm_page_cache(root)
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        index = measure("index", args, Path(tmp))
        epoch = measure("epoch", args, Path(tmp))
    print(f"indexing {index['images']} images: peak RSS {index['peak']:.0f} MiB, of which "
          f"{index['peak'] - index['rss_before']:.1f} MiB above the process after its imports "
          f"({index['rss_before']:.0f} MiB); label matrix {index['labels_mib']:.2f} MiB; {index['seconds']:.2f} s")
    print(f"one training epoch (train(cfg), smallcnn 64 px, batch 32, {epoch['workers']} workers, "
          f"{epoch['seconds']:.0f} s): peak RSS main process {epoch['peak']:.0f} MiB "
          f"({epoch['rss_before']:.0f} MiB after importing torch), largest worker {epoch['worker_peak']:.0f} MiB")
    print(f"peak RSS (MiB): index {index['peak']:.0f}, epoch main {epoch['peak']:.0f}, "
          f"epoch largest worker {epoch['worker_peak']:.0f}")


if __name__ == "__main__":
    main()
