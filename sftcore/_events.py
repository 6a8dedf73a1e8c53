"""Calling the callbacks: in config order, on rank 0 unless a callback asks for every rank, and a
failing callback switched off with one warning line instead of losing the run."""

from __future__ import annotations

import sys
from typing import Callable

from . import _distributed as distributed
from .api import Callback
from .errors import SftError

STEP_EVENTS = ("on_step_start", "on_step_end")


def _defines(callback: Callback, event: str) -> bool:
    return getattr(type(callback), event, None) is not getattr(Callback, event)


def _warn(text: str) -> None:
    print(text, file=sys.stderr)


class Events:
    """The run's callbacks as one: ``events("on_epoch_end", stage, record)`` tells each in turn."""

    def __init__(self, callbacks: list[tuple[str, Callback]], warn: Callable[[str], None] = _warn,
                 observers: list[Callback] = ()):
        self.callbacks = callbacks  # (label, callback): every rank holds all, for their states
        main = distributed.is_main()
        watching = [(type(o).__name__, o) for o in observers]  # sftcore's own (epoch lines): no state to save
        self.active = [(label, cb) for label, cb in [*watching, *callbacks] if main or cb.all_ranks]
        self.per_step = any(_defines(cb, e) for _, cb in self.active for e in STEP_EVENTS)
        self.errors: list[str] = []
        self.warn = warn
        self._off: set[int] = set()

    def __call__(self, event: str, *args) -> None:
        for label, callback in self.active:
            if id(callback) in self._off or not _defines(callback, event):
                continue
            try:
                getattr(callback, event)(*args)
            except SftError:  # a ConfigError by design stops the run with its line; Interrupted goes on up
                raise
            except Exception as exc:
                self._off.add(id(callback))
                line = " ".join(f"callback {label} failed in {event}: {type(exc).__name__}: {exc}".split())
                self.errors.append(line)
                self.warn(f"sft: warning: {line}; it is off for the rest of the run")

    def state_dict(self) -> list[dict]:
        return [callback.state_dict() for _, callback in self.callbacks]

    def load_state_dict(self, states: list[dict] | None) -> None:
        for (_, callback), state in zip(self.callbacks, states or []):
            callback.load_state_dict(state)


NO_EVENTS = Events([])
