"""What a run's diagnostics cost beside its training, for the quickstart (``python -m mlabel_exp.run``: smallcnn on the
embedded 4,000-image synthetic set, 20 epochs, 800 validation images) and for a smoke run (``trainer=smoke``), both
run in this process through ``experiment.train.train`` as the command runs them, one after the other.

Timed in each run: the training (``Trainer.fit``: every epoch, validation included) and the diagnostics step at its end
(``record.log_diagnostics``: the pass of galleries, calibration, confusion and AP intervals, the activation maps, and
their logging into the run), with its two parts; the ratio diagnostics / training is the figure. The smoke run's whole
time is printed too (from ``train`` called to its return: the data set's index and hashes, the model, two short
epochs, the closing files, the pyfunc model and report.html). Data sets are generated once into the benchmark cache,
untimed; the MLflow store and outputs go to a temporary folder.

    .venv/bin/python benchmarks/bench_diagnostics_cost.py              # the whole quickstart: ~3-5 min on 2 cores
    .venv/bin/python benchmarks/bench_diagnostics_cost.py --epochs 3   # a shorter quickstart, its training scaled to 20
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import _common

QUICKSTART_EPOCHS = 20  # the quickstart's trainer.epochs (conf: config.TrainerConfig)


@contextlib.contextmanager
def timed(owner, name: str, times: dict, key: str):
    """``owner.name`` wrapped so that each call adds its wall time to ``times[key]`` and this process's CPU time (every
    thread) to ``times[key + " cpu"]``: on a shared machine the CPU time says what the work itself took."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return real(*args, **kwargs)
        finally:
            times[key] = times.get(key, 0.0) + time.perf_counter() - start
            times[f"{key} cpu"] = times.get(f"{key} cpu", 0.0) + time.process_time() - cpu

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, real)


def one_run(tmp: Path, *overrides: str) -> dict:
    """One run as ``python -m mlabel_exp.run <overrides>``: its seconds of training, diagnostics (and their pass and
    maps), the whole call, and the epochs it trained."""
    from mlabel_exp.diagnostics import writer
    from mlabel_exp.experiment import record
    from mlabel_exp.experiment.train import train
    from mlabel_exp.training.trainer import Trainer
    from tests.conftest import compose_cfg

    times: dict = {}
    cfg = compose_cfg(f"data.cache_dir={_common.CACHE}", "trainer.progress=none",
                      f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", f"trainer.output_dir={tmp / 'out'}",
                      *overrides)
    _common.wait_for_quiet(20.0)
    with timed(Trainer, "fit", times, "training"), timed(record, "log_diagnostics", times, "diagnostics"), \
            timed(writer, "write_diagnostics", times, "pass"), timed(writer, "activation_maps", times, "maps"):
        start = time.perf_counter()
        outcome = train(cfg)
        times["run"] = time.perf_counter() - start
    return {**times, "epochs": outcome.epochs, "best": outcome.objective}


def line(name: str, r: dict, epochs: int | None = None) -> str:
    """The run's figures; ``epochs``: the training's to estimate from the epochs run (a shortened quickstart)."""
    scale = (epochs or r["epochs"]) / r["epochs"]
    training, cpu = r["training"] * scale, r["training cpu"] * scale
    estimated = f"; its {epochs} epochs estimated from {r['epochs']}: {training:.1f} s, CPU {cpu:.1f} s" if epochs else ""
    return (f"{name}: training {r['training']:.1f} s, CPU {r['training cpu']:.1f} s ({r['epochs']} epochs, best val mAP "
            f"{r['best']:.4f}){estimated}; diagnostics {r['diagnostics']:.1f} s, CPU {r['diagnostics cpu']:.1f} s (pass "
            f"{r['pass']:.1f} s, activation maps {r['maps']:.1f} s, the rest logging them); ratio diagnostics / training "
            f"{r['diagnostics'] / training:.3f}, in CPU time {r['diagnostics cpu'] / cpu:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=QUICKSTART_EPOCHS,
                        help="quickstart epochs to train (fewer: its training is scaled to 20 epochs)")
    args = parser.parse_args()
    print(_common.machine_line(), flush=True)
    print(_common.calibration_line(), flush=True)
    _common.dataset(4000)  # generated once, untimed (the quickstart's data set, in the benchmark cache)
    with tempfile.TemporaryDirectory() as tmp:
        quick = one_run(Path(tmp) / "quickstart", f"trainer.epochs={args.epochs}")
        print(line(f"quickstart (trainer.epochs={args.epochs})", quick,
                   QUICKSTART_EPOCHS if args.epochs < QUICKSTART_EPOCHS else None), flush=True)
        smoke = one_run(Path(tmp) / "smoke", "trainer=smoke")
        print(line("smoke (trainer=smoke)", smoke) + f"; the whole run {smoke['run']:.1f} s", flush=True)
    print(_common.quiet_line())


if __name__ == "__main__":
    main()
