"""The README's quickstart figure on this machine: ``python -m mlabel_exp.run`` (smallcnn on the embedded data set, 20
epochs) as a user runs it, timed from its output as it arrives: start-up (process start to the first training step),
training (first step to the final metrics, end-of-run thresholds and figures included) and the best val mAP.

    .venv/bin/python benchmarks/bench_quickstart.py               # the default run: ~2-3 min on 2 cores
    .venv/bin/python benchmarks/bench_quickstart.py --float32     # also trainer.amp=false (~3 min more)

With bfloat16 instructions in the CPU the default run trains in bfloat16 autocast (trainer.amp); ``--float32`` adds
the run every CPU without them makes. The data set is generated into the benchmark cache on first use (not timed),
and the MLflow store, checkpoints and Hydra folder go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

#: The README's figures, measured with this script: (training seconds, calibration resnet18 img/s) per precision.
README = {"bfloat16 autocast": (103.2, 122.0), "float32": (170.3, 122.0)}


def run(tmp: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "mlabel_exp.run", f"data.cache_dir={_common.CACHE}", "trainer.progress=log",
           f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", f"trainer.output_dir={tmp / 'out'}",
           f"hydra.run.dir={tmp / 'hydra'}", *extra]
    _common.wait_for_quiet(20.0)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=_common.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first_step = done = None
    precision = best = epoch = "?"
    for line in proc.stdout:
        now = time.perf_counter() - start
        if first_step is None and (m := re.search(r"training \S+ on \S+ \(([^)]+)\)", line)):
            first_step, precision = now, m.group(1)
        if m := re.match(r"best val mAP ([\d.]+) at epoch (\d+)", line):
            done, best, epoch = now, m.group(1), m.group(2)
    if proc.wait() != 0 or first_step is None or done is None:
        sys.exit(f"the run failed (exit {proc.returncode}): {' '.join(cmd)}")
    return {"precision": precision, "startup": first_step, "training": done - first_step,
            "total": time.perf_counter() - start, "best": best, "epoch": epoch}


def minutes(s: float) -> str:
    return f"{int(s // 60)} min {s % 60:04.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--float32", action="store_true", help="also time the run with trainer.amp=false")
    args = parser.parse_args()
    print(_common.machine_line(), flush=True)
    calibration = _common.calibration()
    print(_common.calibration_line(calibration), flush=True)
    _common.dataset(4000)  # generated once, untimed
    variants = [()] + ([("trainer.amp=false",)] if args.float32 else [])
    for extra in variants:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(Path(tmp), *extra)
        readme_s, readme_cal = README.get(r["precision"], (float("nan"), 1.0))
        expected = readme_s * readme_cal / calibration["resnet18_img_s"]
        print(f"quickstart{' ' + ' '.join(extra) if extra else ''} ({r['precision']}): best val mAP {r['best']} at epoch "
              f"{r['epoch']}; training {minutes(r['training'])} (first step to final metrics), start-up "
              f"{r['startup']:.1f} s, whole command {minutes(r['total'])}; README's figure scaled by the calibration: "
              f"{minutes(expected)} (ratio {r['training'] / expected:.2f})", flush=True)


if __name__ == "__main__":
    main()
