"""Stopping on a signal: SIGTERM (how SLURM and every scheduler preempt a job) and SIGINT (Ctrl-C)
end a run cleanly instead of killing it mid-step.

    with StopSignals() as stop:
        ...                      # before the loop: a signal raises Interrupted at once
        stop.deferred = True     # in the loop: a signal only sets stop.signum; the loop finishes
        ...                      # its step, checkpoints it and raises stop.interrupted(...)

Inside the loop the handler only records the signal, so a step, an evaluation or a checkpoint
is never cut in half; the loop checks `stop.signum` after each step. A second signal while the
loop is finishing stops at once (the checkpoints on disk are still whole: they are written
atomically). Under submitit (hydra/launcher=slurm), SLURM sends SIGUSR2 (SIGUSR1 if so
configured) before the time limit and submitit's handler requeues the job: where a Python
handler holds SIGUSR1 or SIGUSR2, we take that signal too, checkpoint, then hand over to it.
Handlers are installed only in the main thread (Python allows no other) and restored after.
"""

from __future__ import annotations

import signal
import threading

NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}
# Taken only from a Python handler already installed (submitit's), and handed over to it after.
HANDED_OVER = [getattr(signal, s) for s in ("SIGUSR1", "SIGUSR2") if hasattr(signal, s)]
NAMES |= {s: f"{s.name} (a scheduler's warning before the time limit)" for s in HANDED_OVER}


class Interrupted(BaseException):
    """A run stopped by a signal (a BaseException, like KeyboardInterrupt, so that no `except
    Exception` swallows it); the command exits with `exit_status` (128 + the signal, the
    shell's convention: 143 for SIGTERM, 130 for Ctrl-C) after printing the message. `step`: the
    step the loop checkpointed before stopping; None if it stopped before the loop, or at once
    on a second signal."""

    def __init__(self, signum: int, message: str, step: int | None = None):
        super().__init__(message)
        self.signum, self.step = signum, step
        self.exit_status = 128 + signum


class StopSignals:
    def __init__(self):
        self.signum: int | None = None  # the signal received, once one is
        self.deferred = False  # True in the loop: record, do not raise
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.deferred and self.signum is None:
            self.signum = signum
            return
        raise Interrupted(signum, f"stopped by {NAMES.get(signum, signum)}")

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        wanted = [signal.SIGTERM, signal.SIGINT]
        wanted += [s for s in HANDED_OVER if callable(signal.getsignal(s))]
        for s in wanted:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def hand_over(self) -> None:
        """After the checkpoint of a SIGUSR1/2 stop: run the handler it replaced (submitit's,
        which requeues the job and exits)."""
        previous = self._previous.get(self.signum)
        if self.signum in HANDED_OVER and callable(previous):
            previous(self.signum, None)
