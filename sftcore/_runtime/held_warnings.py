"""Python warnings raised while a command checks its input are held back, so that a user's mistake is one
line (``sft: error: ...``), not that line behind a library's UserWarning. Once the checks pass (the pipeline
calls ``release`` before it trains; `sft sweep` and `sft rank` once their input is checked) or the command
ends, the held warnings are shown as usual; when it ends with a user's mistake (an ``SftError`` other than a
training failure or an interruption) they are dropped (``sft --debug`` shows them with the traceback)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

from sftcore.errors import Interrupted, SftError, TrainingError

_held: list[tuple] | None = None  # None: warnings go straight through


@contextlib.contextmanager
def held(show_on_error: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Hold warnings for the duration (or until ``release``); nested uses share the outer one.
    ``show_on_error`` is asked when a user error ends it (``--debug`` is known only once the command runs)."""
    global _held
    if _held is not None:
        yield
        return
    previous = warnings.showwarning

    def hold(message, category, filename, lineno, file=None, line=None):
        if _held is None:
            previous(message, category, filename, lineno, file, line)
        else:
            _held.append((message, category, filename, lineno, file, line))

    _held, warnings.showwarning = [], hold
    keep = True
    try:
        yield
    except (TrainingError, Interrupted):  # not a mistake in the input: a warning may explain it
        raise
    except SftError:  # a mistake in the input, found before any work: its one line is what matters
        keep = show_on_error()
        raise
    finally:
        kept, _held = _held or [], None
        warnings.showwarning = previous
        for args in kept if keep else []:
            previous(*args)


def release() -> None:
    """The checks passed: show what was held, and let later warnings through as they come."""
    global _held
    kept, _held = _held, None
    for args in kept or []:
        warnings.showwarning(*args)
