"""A run's output folder: created, and held by its process for as long as it runs, so that two live processes
never write one folder and a live run is never resumed."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from mlabel_exp.errors import ConfigError
from mlabel_exp.fsutil import Busy, exclusive
from mlabel_exp.runtime import distributed

RUN_LOCK = ".run.lock"  # held by a training process in its output folder for as long as it runs


@contextmanager
def output_folder(out: Path):
    """The run's output folder ``out``, created and held (RUN_LOCK) while it runs: two live processes never write
    one folder, and a live run is never resumed (resume.why_not). DDP ranks share their rank 0's folder and lock."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the output folder {out} ({e.strerror}): set trainer.output_dir "
                          "(or hydra.run.dir) to a writable location") from e
    if not distributed.is_main():
        yield out
        return
    try:
        with exclusive(out / RUN_LOCK):
            yield out
    except Busy:
        raise ConfigError(f"{out} is in use by another live run (it holds {out / RUN_LOCK}): give this run its own "
                          "trainer.output_dir, or wait for that run to end") from None
