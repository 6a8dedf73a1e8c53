"""Owning a run directory: one writer at a time, a marker saying sftcore made it, the config it started with.

- ``.sft-lock``: an OS lock (``flock``) held by the process that writes the run (rank 0 under
  torchrun) for the run's whole life, with its pid inside. The OS drops it when that process
  ends, however it ends (SIGKILL too), so a lock is never left stale; the file itself stays.
- ``.sftcore-run``: JSON written into every run directory sftcore creates (sftcore version,
  creation time, the resolved config the run started with). ``--force`` replaces only
  directories that have it (or a run made before it existed: ``config.yaml`` next to
  ``summary.json`` or ``metrics.jsonl``), and ``--resume`` compares ``config.yaml`` with it.
- ``config-changes.jsonl``: one line per ``--resume --allow-config-change`` that changed the config.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftcore._fileio import storage
from sftcore._rundir import checkpoints
from sftcore.errors import ConfigError, SftError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

from sftcore._rundir.layout import (  # noqa: F401  (the names the lock and marker go by here too)
    CHANGES,
    CHECKPOINTS,
    CONFIG,
    LOCK,
    MARKER,
    METRICS,
    PREDICTIONS,
    RUN_FILES,
    SUMMARY,
    made_by_sftcore,
)

_MISSING = object()


class Busy(ConfigError):
    """The run directory's lock is held by another process."""


class Lock:
    """An exclusive ``flock`` on ``<run>/.sft-lock``; closing the descriptor releases it."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    def release(self, unlink: bool = False) -> None:
        if unlink:
            _remove(self.path)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock(run_dir: Path) -> Lock:
    """Own ``run_dir``, or one line naming the process that owns it."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        why = "it is a symbolic link: remove it" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise storage.StorageError(f"cannot lock run directory '{run_dir}' ({LOCK}: {why})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise storage.StorageError(f"cannot lock run directory '{run_dir}': {LOCK} is not a regular file; remove it")
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # no locks on this file system
                return Lock(path, None)
            raise Busy(
                f"run directory '{run_dir}' is in use by another sft run ({_owner(path)}); "
                "wait for it to finish or stop it, then try again"
            ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the lock holds without the pid
    return Lock(path, fd)


def wait_free(run_dir: Path, seconds: float, poll: float = 0.2) -> bool:
    """Whether ``run_dir``'s lock came free within ``seconds`` (it is not kept): a cell that a killed
    sweep started stops by itself within a second or two, and is then resumed rather than failed."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            lock(run_dir).release()
            return True
        except Busy:
            if time.monotonic() >= deadline:
                return False
        except ConfigError:
            return True  # not a lock question: the cell's own start says what is wrong
        time.sleep(poll)


def _owner(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def normal(cfg: dict) -> Any:
    """The config as config.yaml holds it, in JSON types: what a run's config is compared by."""
    import yaml

    from sftcore._config import resolve as cfgmod

    return json.loads(json.dumps(yaml.safe_load(cfgmod.dump(cfg)), default=str))


def changed_keys(old: Any, new: Any) -> list[str]:
    """Dotted keys (as --set takes them) whose values differ."""
    from sftcore._analysis.compare import flatten

    a, b = flatten(old), flatten(new)

    def same(x, y):
        return x is not _MISSING and y is not _MISSING and (type(x) is bool) == (type(y) is bool) and x == y

    return [k for k in dict.fromkeys([*a, *b]) if not same(a.get(k, _MISSING), b.get(k, _MISSING))]


def _remove(path: Path) -> None:
    """A file, a symlink (never followed) or a directory tree; gone already is fine."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise storage.StorageError(f"cannot remove '{path}': {exc.strerror or exc}") from None


@dataclass
class Claim:
    """A run directory this process owns: ``created`` if it made the directory itself."""

    path: Path
    lock: Lock
    created: bool = False
    fresh: bool = True  # a new run, not a resume
    had_lock_file: bool = False

    def release(self) -> None:
        self.lock.release()

    def discard(self) -> None:
        """Remove what this run wrote (and the directory, if it made it); only for a new run."""
        try:
            for name in RUN_FILES:
                _remove(self.path / name)
            storage.remove_partial_writes(self.path)
        finally:
            self.lock.release(unlink=not self.had_lock_file)
        if self.created:
            try:
                self.path.rmdir()  # only if empty: files someone else put there stay
            except OSError:
                pass


def _check_replaceable(path: Path, force: bool) -> None:
    if not any(p.name != LOCK for p in path.iterdir()):
        return
    if not made_by_sftcore(path):
        raise ConfigError(
            f"--out '{path}' is not empty and holds no sftcore run; choose a new or empty directory "
            "(--force replaces only a run directory that sftcore wrote)"
        )
    if not force:
        raise ConfigError(
            f"--out '{path}' already holds a run; choose a new directory, continue it with "
            f"`sft run --resume {path}`, or replace it with --force"
        )


def claim_new(path: Path, force: bool, cfg: dict) -> Claim:
    """Own ``path`` for a new run: lock it, clear an earlier run (``force``), write the marker and config.yaml."""
    from sftcore._config import resolve as cfgmod
    from sftcore._version import __version__

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out '{path}' is a file; choose a directory path")
    existed = path.is_dir()
    if existed:
        _check_replaceable(path, force)  # before touching anything
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory '{path}': {exc.strerror}") from None
    had_lock_file = (path / LOCK).exists()
    try:
        claim = Claim(path, lock(path), created=not existed, had_lock_file=had_lock_file)
    except Exception:
        if not existed:
            _rmdir_quiet(path)
        raise
    try:
        _check_replaceable(path, force)  # again, now that no one else can write here
    except BaseException:  # another run got here first: leave its files alone
        claim.lock.release(unlink=not had_lock_file)
        if not existed:
            _rmdir_quiet(path)
        raise
    try:
        for name in RUN_FILES:  # only what a run writes; other files stay
            _remove(path / name)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        storage.write_json(path / MARKER, {"sftcore": __version__, "created": created, "config": normal(cfg)})
        storage.write_text(path / CONFIG, cfgmod.dump(cfg))
    except BaseException:
        claim.discard()
        raise
    return claim


def _rmdir_quiet(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def claim_resume(run_dir: Path, cfg: dict, allow_change: bool) -> Claim:
    """Own ``run_dir`` to continue it; ``cfg`` (what config.yaml resolves to now) must be the run's own."""
    claim = Claim(Path(run_dir), lock(run_dir), fresh=False)
    try:
        storage.remove_partial_writes(claim.path)
        _check_config(claim.path, cfg, allow_change)
    except BaseException:
        claim.release()
        raise
    return claim


def _read_marker(run_dir: Path) -> dict | None:
    try:
        marker = json.loads((run_dir / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"'{run_dir / MARKER}' cannot be read ({getattr(exc, 'strerror', None) or exc}); start a new run"
        ) from None
    return marker if isinstance(marker, dict) else None


def _check_config(run_dir: Path, cfg: dict, allow_change: bool) -> None:
    from sftcore._version import __version__

    now, marker = normal(cfg), _read_marker(run_dir)
    if marker is None or "config" not in marker:  # a run made before the marker: record its config from now on
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        storage.write_json(run_dir / MARKER, {"sftcore": __version__, "created": created, "config": now})
        return
    # `rank:` lists candidates for `sft rank`; the run never reads it, so an edit of it changes nothing here
    changed = [k for k in changed_keys(_current_form(marker["config"]), now) if k.split(".")[0] != "rank"]
    if not changed:
        return
    if not allow_change:
        keys = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise ConfigError(
            f"--resume '{run_dir}': config.yaml differs from the config the run started with ({keys}); "
            "restore it, start a new run, or pass --allow-config-change to continue with the change"
        )
    from sftcore._analysis.compare import flatten

    old, new = flatten(marker["config"]), flatten(now)
    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "changed": {k: [old.get(k), new.get(k)] for k in changed},
    }
    path = run_dir / CHANGES
    before = path.read_text() if path.is_file() else ""
    record["retrained"] = _invalidate(run_dir, changed)
    storage.write_text(path, before + json.dumps(record) + "\n")
    storage.write_json(run_dir / MARKER, {**marker, "config": now})


def _current_form(started: dict) -> dict:
    """The config the run started with, resolved by this sftcore: keys added since (``callbacks: []``, an
    optimizer option with a default) then count as unchanged, and only a real edit differs."""
    from sftcore._config import resolve as cfgmod
    from sftcore._plugins.manager import get_registry

    try:
        return normal(cfgmod.resolve(copy.deepcopy(started), get_registry()))
    except SftError:  # it no longer resolves (a plugin gone): compare it as written
        return started


def _invalidate(run_dir: Path, changed: list[str]) -> list[str]:
    """Remove the checkpoints of every stage a config change touches, so those stages train again
    under the new config (a finished or half-trained stage would otherwise keep the old one)."""
    stages = {
        "pretrain": ["pretrain", "finetune", "baseline"],
        "finetune": ["finetune", "baseline"],
        "baseline": ["baseline"],
    }
    touched: list[str] = []
    for key in changed:
        top = key.split(".")[0]
        if top != "name":  # anything outside the stages (backbone, seeds, ...) touches every stage
            touched += stages.get(top, stages["pretrain"])
    touched = [s for s in stages["pretrain"] if s in touched]
    for stage in touched:
        for path in checkpoints.stage_files(run_dir, stage):
            _remove(path)
    _remove(run_dir / SUMMARY)
    return touched


def has_progress(run_dir: Path) -> bool:
    """A checkpoint or a logged epoch exists: a failed run keeps its directory from then on."""
    ckpt = Path(run_dir) / CHECKPOINTS
    if ckpt.is_dir() and any(not p.name.startswith(".") for p in ckpt.iterdir()):
        return True
    metrics = Path(run_dir) / METRICS
    try:
        return metrics.is_file() and bool(metrics.read_text().strip())
    except OSError:
        return True
