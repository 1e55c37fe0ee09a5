"""Start-up cost of the CLI: ``python -m mlabel_exp.run --help`` and ``--cfg job`` (which should not
import torch), and the time from launch to the first training step of a smoke run.

Each command runs in a fresh subprocess from the project root; one untimed run first (bytecode and
file caches warm), then the median of 5. Whether torch was imported is read from ``-X importtime``
in a separate run (that flag slows the import down). The smoke run writes its MLflow store, Hydra
folder and checkpoints in a temporary folder; its first step is the first "step 1/" log line
(PYTHONUNBUFFERED=1). It is run once against a new store (schema creation included) and twice
against the existing one. Each group of runs starts at a quiet moment (another process may share the
CPU; at most 20 s of waiting each).

    .venv/bin/python benchmarks/bench_startup.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

RUNS = 5
TARGET_S = 1.5
HEAVY = ("torch", "torchvision", "mlflow", "torchmetrics", "matplotlib", "pandas", "numpy", "PIL", "hydra",
         "omegaconf", "mlabel_exp")


def run_cmd(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=_common.REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def top_imports(args: list[str]) -> dict[str, float]:
    """Cumulative import seconds of the top-level packages the command imported (``-X importtime``)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=_common.REPO, check=True,
                          capture_output=True, text=True)
    out = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if name.startswith(" ") and not name.startswith("  "):  # top level: a single space of indent
            top = name.strip().split(".")[0]
            if cumulative.strip().isdigit():
                out[top] = out.get(top, 0.0) + int(cumulative) / 1e6
    return out


def first_step(args: list[str], env: dict) -> tuple[float, float]:
    """(seconds to the first "step 1/" line, seconds to exit) of a training command."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=_common.REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first, tail = None, []
    for line in proc.stdout:
        tail = (tail + [line])[-30:]
        if first is None and "step 1/" in line:
            first = time.perf_counter() - start
    if proc.wait() != 0 or first is None:
        sys.exit(f"smoke run failed ({proc.returncode}) or printed no 'step 1/' line:\n{''.join(tail)}")
    return first, time.perf_counter() - start


def main() -> None:
    print(_common.machine_line())
    print(_common.calibration_line(), flush=True)
    results = {}
    for label, args in (("--help", ["-m", "mlabel_exp.run", "--help"]),
                        ("--cfg job", ["-m", "mlabel_exp.run", "--cfg", "job"]),
                        ("bare interpreter", ["-c", "pass"]),
                        ("import torch", ["-c", "import torch"])):
        run_cmd(args)  # warm-up
        _common.wait_for_quiet()
        times = [run_cmd(args) for _ in range(RUNS)]
        results[label] = statistics.median(times)
        line = f"{label}: median {results[label]:.2f} s of {RUNS} (min {min(times):.2f}, max {max(times):.2f})"
        if label.startswith("-"):
            imports = top_imports(args)
            heavy = ", ".join(f"{k} {imports[k]:.2f} s" for k in HEAVY if k in imports)
            line += f"; torch imported: {'YES' if 'torch' in imports else 'no'} (imports: {heavy})"
        print(line)

    root = _common.dataset(4000)  # the smoke run's default data set, generated before any timing
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        timings = []
        for k in range(3):
            args = ["-m", "mlabel_exp.run", "trainer=smoke", f"data.cache_dir={_common.CACHE}",
                    f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db", f"hydra.run.dir={tmp}/hydra/run{k}"]
            _common.wait_for_quiet()
            timings.append(first_step(args, env))
        print(f"smoke run (trainer=smoke, {root.name}, smallcnn): first 'step 1/' after "
              f"{timings[0][0]:.2f} s with a new MLflow store, "
              f"{statistics.median(t[0] for t in timings[1:]):.2f} s with an existing one (median of 2: "
              f"{', '.join(f'{t[0]:.2f}' for t in timings[1:])}); whole run {timings[0][1]:.2f} s / "
              f"{statistics.median(t[1] for t in timings[1:]):.2f} s")

    print(_common.quiet_line())
    worst = max(results["--help"], results["--cfg job"])
    print(f"target < {TARGET_S} s: {'met' if worst < TARGET_S else 'NOT met'}")
    print(f"ratio (slower of --help and --cfg job) / target: {worst / TARGET_S:.2f} of {TARGET_S} s "
          f"(--help {results['--help']:.2f} s, --cfg job {results['--cfg job']:.2f} s; python -c pass "
          f"{results['bare interpreter']:.2f} s, import torch {results['import torch']:.2f} s)")


if __name__ == "__main__":
    main()
