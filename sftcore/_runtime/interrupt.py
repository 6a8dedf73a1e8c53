"""Ctrl-C and SIGTERM become a flag that the training loop checks between steps.

Stopping between steps (never inside ``optimizer.step()``) lets the loop save a consistent
mid-epoch checkpoint before it exits. In one process a second signal is not caught: Ctrl-C
twice stops at once. Under torchrun every signal is caught, because one stop often arrives
twice (SLURM signals torchrun and the workers, and torchrun passes it on).
SIGTERM is what SLURM and Kubernetes send before they kill a job.

A process started by ``sft sweep`` (``SFT_PARENT_PID`` in its environment) also stops this way when
its parent is gone: a sweep killed with SIGKILL leaves no cell running on as an orphan.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any, TypeAlias

    # what signal.signal takes and returns (typeshed's signal._HANDLER)
    _Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class StopSignals:
    """While active, SIGINT/SIGTERM set ``signum`` instead of stopping the process."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, catch_repeats: bool = False):
        self.signum: int | None = None
        self.catch_repeats = catch_repeats
        self._previous: dict[int, _Handler] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            nums = [n for n in (getattr(signal, name, None) for name in self.SIGNALS) if n is not None]
            for num in nums:
                self._previous[num] = signal.signal(num, self._handle)
            if hasattr(signal, "pthread_sigmask"):  # a parent may have blocked them (a Ray worker blocks SIGINT),
                signal.pthread_sigmask(signal.SIG_UNBLOCK, nums)  # and a blocked signal never reaches the handler
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
        if not self.catch_repeats:
            self._restore()  # the next one is handled the default way: Ctrl-C twice stops at once

    def _restore(self) -> None:
        for num, handler in self._previous.items():
            signal.signal(num, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()

    @property
    def name(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(cast(int, self.signum)).name


PARENT_ENV = "SFT_PARENT_PID"
WATCH_S = 0.25
_watching = False  # one watcher per process


def watch_parent(environ: dict | None = None) -> threading.Thread | None:
    """When ``SFT_PARENT_PID`` names this process's parent, a daemon thread sends this process SIGTERM
    once the parent is gone (its parent pid changes), so the run saves its checkpoint and stops."""
    global _watching
    wanted = (os.environ if environ is None else environ).pop(PARENT_ENV, "")  # not inherited by what this starts
    if _watching or not wanted.isdigit() or os.getppid() != int(wanted):  # a stale value names another process
        return None
    parent = int(wanted)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_S)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="sft-parent-watch", daemon=True)
    thread.start()
    _watching = True
    return thread
