"""Stop requests: signals become a request to stop at the next step boundary, and a scheduler's preemption is told
apart from a person's stop (the same command continues a preempted run)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager

log = logging.getLogger(__name__)

def scheduler_job() -> str | None:
    """The scheduler's id of this job, which a requeued job keeps: SLURM's job id (array job and task for an array
    task), or the submitit local executor's; None outside a scheduler."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm:{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}"
    if env.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"local:{env['SUBMITIT_LOCAL_JOB_ID']}"
    return None


def preemption_signals() -> tuple[int, ...]:
    """Signals that mean "the scheduler takes the machine back": SIGUSR2 (what the SLURM preset and submitit ask for
    before the time limit), and SIGTERM under SLURM (preemption, scancel). A preempted run is continued by the same
    command; a plain SIGTERM or Ctrl-C elsewhere is a person's stop (resume=<id> continues it)."""
    usr2 = (signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ()
    return usr2 + ((signal.SIGTERM,) if "SLURM_JOB_ID" in os.environ else ())


class StopRequest:
    """Set by a signal (or by code): training stops at the next step boundary. ``signum`` says which signal asked
    first, for the exit status (128 + signal); ``preempted`` whether it was the scheduler's; ``previous`` the handler
    that signal had before ours (submitit's requeue), to call once the run has stopped cleanly."""

    def __init__(self):
        self._event = threading.Event()
        self.signum: int = signal.SIGINT
        self.preempted = False
        self.previous = None

    def set(self, signum: int = signal.SIGINT, preempted: bool = False, previous=None) -> None:
        if self._event.is_set():
            return
        self.signum, self.preempted, self.previous = signum, preempted, previous
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def hand_over(self) -> None:
        """Give a preemption signal to the handler it had before ours, now that the run has stopped cleanly: submitit's
        checkpoints its job and requeues it (then exits), instead of interrupting a training step."""
        if self.preempted and callable(self.previous) and self.previous is not signal.default_int_handler:
            self.previous(self.signum, None)


@contextmanager
def stop_on_signals(stop: StopRequest):
    """SIGINT, SIGTERM and SIGUSR2 ask training to stop at the next step boundary; a second Ctrl-C aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, *(s for s in preemption_signals() if s != signal.SIGTERM))
    previous = {s: signal.getsignal(s) for s in signals}
    preemption, owner = preemption_signals(), os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked DataLoader worker, signalled with its process group: its parent stops
            return
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set(signum, signum in preemption, previous[signum])
        then = ("preempted: the same command continues this run" if signum in preemption else
                "Ctrl-C again to abort now")
        log.warning("%s received: stopping at the next step and writing a checkpoint (%s)",
                    signal.Signals(signum).name, then)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
