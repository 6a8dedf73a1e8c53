"""Ctrl-C and SIGTERM become a flag that the training loop checks between steps.

Stopping between steps (never inside ``optimizer.step()``) lets the loop save a consistent
mid-epoch checkpoint before it exits. In one process a second signal is not caught: Ctrl-C
twice stops at once. Under torchrun every signal is caught, because one stop often arrives
twice (SLURM signals torchrun and the workers, and torchrun passes it on).
SIGTERM is what SLURM and Kubernetes send before they kill a job.
"""

from __future__ import annotations

import signal
import threading
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
