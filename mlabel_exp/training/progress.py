"""How training shows its progress: a bar or log lines per epoch, and, once, how long the run will take."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

import torch

log = logging.getLogger(__name__)


class Progress:
    """A tqdm bar on a terminal, plain log lines elsewhere (logs, SLURM), or nothing."""

    def __init__(self, mode: str, total: int, desc: str, every: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.total, self.desc, self.every = mode, total, desc, max(1, every)
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def step(self, i: int, loss: Callable[[], float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if i % self.every == 0:
                self.bar.set_postfix(loss=f"{loss():.4f}")
        elif self.mode == "log" and (i % self.every == 0 or i == self.total):
            log.info("%s step %d/%d loss %.4f", self.desc, i, self.total, loss())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class RunEstimate:
    """Said once, after the first steps of a run of a minute or more: about how long an epoch and the rest of the run
    take, with the faster options when a CPU run would take over an hour. The first step is left out (one-off allocations and warm-up);
    a validation batch is counted as a third of a training step (a forward pass, no backward)."""

    LONG_CPU_RUN_S = 3600

    def __init__(self, device: torch.device, train_steps: int, val_steps: int, epochs_left: int,
                 min_steps: int = 3, min_seconds: float = 5.0):
        self.device, self.train_steps, self.val_steps, self.epochs_left = device, train_steps, val_steps, epochs_left
        self.min_steps, self.min_seconds = min_steps, min_seconds
        self.since = None
        self.done = epochs_left < 1 or train_steps < 2

    def step(self, i: int) -> None:
        """After training step ``i`` of the epoch (steps of skipped batches are not counted)."""
        if self.done:
            return
        now = time.perf_counter()
        if self.since is None:
            self.since, self.timed = now, 0
            return
        self.timed += 1
        timed = self.timed
        if (timed < self.min_steps or now - self.since < self.min_seconds) and i < self.train_steps:
            return
        self.done = True
        per_step = (now - self.since) / timed
        epoch = per_step * (self.train_steps + self.val_steps / 3)
        run = epoch * self.epochs_left
        if run < 60:  # a short run needs no forecast
            return
        log.info("estimated %s per epoch, %s for the %d epoch(s) to go (early stopping may end it sooner)",
                 duration(epoch), duration(run), self.epochs_left)
        if self.device.type == "cpu" and run > self.LONG_CPU_RUN_S:
            log.warning("this CPU run would take about %s: a GPU (trainer.device=cuda), a smaller model.input_size or "
                        "model (model=resnet18, model=smallcnn) is faster; trainer=smoke checks the set-up in seconds",
                        duration(run))
