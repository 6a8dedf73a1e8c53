"""Files in a run directory: written atomically, read without running code.

A write goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
the target, so a run killed at any moment leaves either the old file or the new one, never half
of one. Reads use ``torch.load(weights_only=True)``: a crafted pickle cannot run code.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftcore.errors import ConfigError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _umask_mode()


class StorageError(ConfigError):
    """A file of the run, or one the config names, could not be written or read."""


def output_file(path, force: bool, option: str | None = "--out", make_folder: bool = False, hint: str = "") -> Path:
    """Where a command may write a file the user named, checked before any work: absent, or (with ``force``) a
    regular file; never a folder, a symbolic link, a device or a FIFO (the atomic write renames over its target,
    which would replace such a thing with a regular file). Its folder must exist unless ``make_folder``.
    ``option`` names the option that gave the path (None: a default path), ``hint`` ends a folder's message."""
    p = Path(path)
    named = f"{option} '{p}'" if option else f"'{p}'"
    if p.is_symlink():
        raise StorageError(f"{named} is a symbolic link; give the path of a regular file")
    if p.is_dir():
        raise StorageError(f"{named} is a folder; give a file path{hint}")
    if p.exists() and not p.is_file():
        raise StorageError(f"{named} is not a regular file (a device or a FIFO); give the path of a file")
    if p.exists() and not force:
        raise StorageError(f"{named} already exists; pass --force to overwrite it, or choose another path")
    if not make_folder and not p.parent.is_dir():
        raise StorageError(f"{named}: folder '{p.parent}' not found; create it first")
    return p


def _write(path: Path, fill: Callable[[Any], None], binary: bool) -> None:
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _MODE)  # mkstemp makes owner-only files; a run's files get the usual umask mode
        with os.fdopen(fd, "wb" if binary else "w") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except (OSError, _WriterFailed) as exc:
        raise StorageError(
            f"cannot write '{path}': {_hint(exc)}; the previous version of the file is unchanged"
        ) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


class _WriterFailed(Exception):
    """torch's zip writer failed (it raises RuntimeError, not OSError, for a full disk at some sizes)."""


# what torch's PytorchStreamWriter says when the write under it failed
_WRITER_FAILURES = ("PytorchStreamWriter failed", "unexpected pos", "file write failed", "write failed")


def _hint(exc: BaseException) -> str:
    """One line for a failed write, whatever layer raised it."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or isinstance(exc, _WriterFailed):
        return (
            "the disk is full" if code == errno.ENOSPC else "the file system refused the write (disk full?)"
        ) + "; free space, then resume the run"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied; make the folder writable"
    if code == errno.EROFS:
        return "the file system is read-only; write the run elsewhere"
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).splitlines()[0][:200]


def append_text(path: Path, text: str) -> None:
    """Append to a log file (metrics.jsonl) with one-line errors; a cut-short line is dropped on resume."""
    try:
        with Path(path).open("a") as f:
            f.write(text)
    except OSError as exc:
        raise StorageError(f"cannot write '{path}': {_hint(exc)}") from None


def make_dir(path: Path) -> None:
    """``mkdir -p`` with one-line errors."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create '{path}': {_hint(exc)}") from None


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible on Windows, where it is skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_partial_writes(folder: Path) -> None:
    """Temporary files of writes that a kill cut short (the targets themselves are intact)."""
    for tmp in Path(folder).rglob(".*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def write_text(path: Path, text: str) -> None:
    _write(path, lambda f: f.write(text), binary=False)


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, indent=indent) + "\n")


def write_bytes(path: Path, data: bytes) -> None:
    _write(path, lambda f: f.write(data), binary=True)


def save(obj: Any, path: Path) -> None:
    """``torch.save`` made atomic."""
    import torch

    def fill(f) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            if any(s in str(exc) for s in _WRITER_FAILURES):
                raise _WriterFailed(str(exc)) from None
            raise

    _write(path, fill, binary=True)


def load(path: Path, what: str, fix: str, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors: missing, truncated, corrupt, or unsafe."""
    import pickle
    import zipfile

    import torch

    from .reader import regular

    path = Path(path)
    if path.exists() and not path.is_dir():
        regular(path, what, fix)  # a FIFO would block the read forever, /dev/zero never end it
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise StorageError(f"{what} '{path}' not found; {fix}") from None
    except IsADirectoryError:
        raise StorageError(f"{what} '{path}' is a directory, not a file; {fix}") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:  # weights_only refused to import a callable: the file would run or build arbitrary objects
            name = found.group(1) or found.group(2)
            raise StorageError(
                f"{what} '{path}' was not loaded: it refers to {name}, which is not a tensor or a "
                f"plain container, and could run code; {fix}"
            ) from None
        raise StorageError(
            f"{what} '{path}' is truncated or corrupt, or is a pickle that is not plain tensors (not loaded); {fix}"
        ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        IndexError,
        KeyError,
        TypeError,
        AttributeError,
    ) as exc:  # random bytes can derail the unpickler anywhere
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise StorageError(f"{what} '{path}' is truncated or corrupt ({first}); {fix}") from None
