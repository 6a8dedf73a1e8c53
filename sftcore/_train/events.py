"""Calling the callbacks: in config order, on rank 0 unless a callback asks for every rank, and a
failing callback switched off with one warning line instead of losing the run."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from sftcore._plugins.contracts import Callback
from sftcore._runtime import distributed
from sftcore.errors import ConfigError, SftError

STEP_EVENTS = ("on_step_start", "on_step_end")


def _defines(callback: Callback, event: str) -> bool:
    return getattr(type(callback), event, None) is not getattr(Callback, event) or event in vars(callback)


def _warn(text: str) -> None:
    print(text, file=sys.stderr)


def _plain(value: Any) -> bool:
    """What a checkpoint holds and ``--resume`` reads back safely (``weights_only``): tensors, numbers,
    strings, None, and lists, tuples and dicts of them."""
    import torch

    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


class Events:
    """The run's callbacks as one: ``events("on_epoch_end", stage, record)`` tells each in turn."""

    def __init__(
        self,
        callbacks: list[tuple[str, Callback]],
        warn: Callable[[str], None] = _warn,
        observers: Sequence[Callback] = (),
    ):
        self.callbacks = callbacks  # (label, callback): every rank holds all, for their states
        main = distributed.is_main()
        watching = [(type(o).__name__, o) for o in observers]  # sftcore's own (epoch lines): no state to save
        self.active = [(label, cb) for label, cb in [*watching, *callbacks] if main or cb.all_ranks]
        self.per_step = any(_defines(cb, e) for _, cb in self.active for e in STEP_EVENTS)
        self.errors: list[str] = []
        self.warn = warn
        self._off: set[int] = set()

    def __call__(self, event: str, *args) -> None:
        stop = None
        for label, callback in self.active:
            if id(callback) in self._off or not _defines(callback, event):
                continue
            try:
                getattr(callback, event)(*args)
            except SftError as exc:  # a ConfigError by design stops the run with its line
                stop = exc
                break
            except Exception as exc:
                self._fail(label, callback, event, exc)
        if distributed.active() and event not in STEP_EVENTS:  # rank 0's stop ends every rank, not just its own
            text = distributed.broadcast_object(str(stop) if stop is not None else None)
            if text is not None and stop is None:
                raise ConfigError(text)
        if stop is not None:
            raise stop

    def _fail(self, label: str, callback: Callback, event: str, exc: Exception) -> None:
        self._off.add(id(callback))
        line = " ".join(f"callback {label} failed in {event}: {type(exc).__name__}: {exc}".split())
        self.errors.append(line)
        self.warn(f"sft: warning: {line}; it is off for the rest of the run")

    def state_dict(self) -> dict[str, dict]:
        """Each callback's state under its label; one that cannot give a safe state is switched off."""
        out = {}
        for label, callback in self.callbacks:
            if id(callback) in self._off:
                continue
            try:
                state = callback.state_dict()
                if not _plain(state):
                    raise TypeError(
                        f"state_dict() returned {type(state).__name__} holding something a checkpoint "
                        "cannot reload safely; keep to tensors, numbers, strings, lists and dicts"
                    )
            except Exception as exc:
                self._fail(label, callback, "state_dict", exc)
                continue
            out[f"{label} {type(callback).__name__}"] = state
        return out

    def load_state_dict(self, states: dict | list | None) -> None:
        """States by label (older checkpoints: a list in order); a callback not in the checkpoint starts afresh."""
        if isinstance(states, list):
            states = {f"{label} {type(cb).__name__}": s for (label, cb), s in zip(self.callbacks, states)}
        for label, callback in self.callbacks:
            state = (states or {}).get(f"{label} {type(callback).__name__}")
            if state is None:
                continue
            try:
                callback.load_state_dict(state)
            except Exception as exc:
                self._fail(label, callback, "load_state_dict", exc)


NO_EVENTS = Events([])
