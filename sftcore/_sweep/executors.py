"""Where a sweep's cells run: local subprocesses (``--jobs N`` at a time) or Ray tasks.

Each cell is one ``python -m sftcore run --resume CELL_DIR`` process (the sweep created the run
directory, so a first start and a resume are the same command), with its output in
``CELL_DIR/sweep.log``. The processes run in their own sessions: a Ctrl-C at the terminal reaches
only the sweep, which passes each signal on once, so every cell saves its checkpoint and stops. A
cell also watches its parent: when the sweep is killed outright (SIGKILL), the cell saves and stops
by itself, and the sweep's rerun resumes it.
Ray is imported only by the Ray executor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sftcore._run import ownership
from sftcore._runtime.interrupt import PARENT_ENV
from sftcore.errors import ConfigError

LOG = "sweep.log"
POLL_S = 0.2
LOCK_WAIT_S = 30.0  # how long a cell waits for an orphan of a killed sweep to save and stop
INTERRUPT_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # what `sft run` exits with when stopped


@dataclass
class Job:
    """A cell to run: its run directory (absolute) and torch threads."""

    name: str
    run_dir: str
    threads: int


@dataclass
class Outcome:
    returncode: int | None  # None: never started, or Ray lost it
    seconds: float
    stopped: bool = False  # the sweep passed a stop signal to it
    started: bool = True  # False: stopped before it started (Ray)


def cell_argv(run_dir: str) -> list[str]:
    return [sys.executable, "-m", "sftcore", "run", "--resume", str(run_dir), "--no-progress"]


def cell_env(threads: int, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"  # the log shows each line as it happens
    env[PARENT_ENV] = str(os.getpid())  # the cell stops (saving its checkpoint) if this process dies
    return env


def start_cell(run_dir: str, threads: int, log, cwd: str | None = None) -> subprocess.Popen:
    """One cell's process, once its run directory is free: a cell that an earlier, killed sweep started
    stops by itself (it watches its parent) and is then resumed, not failed as "in use"."""
    ownership.wait_free(Path(run_dir), LOCK_WAIT_S)
    try:
        return subprocess.Popen(
            cell_argv(run_dir),
            env=cell_env(threads),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
        )
    except OSError as exc:
        log.close()
        raise ConfigError(f"cannot start a cell process: {exc.strerror or exc}") from None


def _open_log(run_dir: str):
    log = open(Path(run_dir) / LOG, "a", buffering=1)
    log.write(f"# sft sweep: {' '.join(cell_argv(run_dir)[1:])} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    return log


class Signals:
    """SIGINT/SIGTERM while a sweep runs: counted, and passed on by the executor's loop."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict = {}

    def __enter__(self) -> Signals:
        return self.install()

    def install(self) -> Signals:
        """(Again, after ``ray.init``, which sets a SIGTERM handler of its own.)"""
        import threading

        if threading.current_thread() is threading.main_thread():
            for num in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(num, lambda signum, _frame: self.received.append(signum))
                self._previous.setdefault(num, previous)
        return self

    def __exit__(self, *exc) -> None:
        for num, handler in self._previous.items():
            signal.signal(num, handler)

    @property
    def signum(self) -> int | None:
        return self.received[0] if self.received else None


def run_local(jobs: list[Job], parallel: int, signals: Signals, on_start: Callable, on_end: Callable) -> None:
    """Run ``jobs`` as subprocesses, ``parallel`` at a time; stop starting new ones on a signal."""
    pending = list(jobs)
    running: dict = {}  # Popen -> (job, log, start time)
    forwarded = 0
    while running or (pending and not signals.received):
        while pending and len(running) < parallel and not signals.received:
            job = pending.pop(0)
            log = _open_log(job.run_dir)
            proc = start_cell(job.run_dir, job.threads, log)
            running[proc] = (job, log, time.perf_counter())
            on_start(job)
        for signum in signals.received[forwarded:]:
            for proc in running:
                _kill(proc.pid, signum)
        forwarded = len(signals.received)
        for proc in [p for p in running if p.poll() is not None]:
            job, log, t0 = running.pop(proc)
            log.close()
            on_end(job, Outcome(proc.returncode, time.perf_counter() - t0, stopped=bool(signals.received)))
        if running:
            time.sleep(POLL_S)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


# --------------------------------------------------------------------------- Ray
def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


CONNECT_S = 5.0


def check_address(address: str) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) that nothing answers on is one line before anything is
    written: ``ray.init`` itself retries for many minutes. Other forms (``auto``) are left to Ray."""
    import socket

    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"--address {address}: nothing answers there ({why}); start the cluster with "
            "`ray start --head` and pass the address it prints, or drop --address for a local "
            "instance"
        ) from None


STOP = ".sft-sweep-stop"  # written into a cell's run directory (the shared path) when the sweep is stopped


def _ray_cell(run_dir: str, threads: int, cwd: str) -> dict:
    """A Ray task: one cell's process on whichever node Ray chose (the run directory on a shared path), in
    the sweep's working directory when that node has it, so relative dataset paths mean what they did.
    A stop reaches it as a file in the run directory (Ray's own cancel is not delivered while the task
    waits on a process): the cell is then told to save and stop, or, not yet started, is not started."""
    stop = Path(run_dir) / STOP
    if stop.exists():
        return {"returncode": None, "seconds": 0.0, "started": False}
    log = _open_log(run_dir)
    t0 = time.perf_counter()
    proc = start_cell(run_dir, threads, log, cwd=cwd if os.path.isdir(cwd) else None)
    told = False
    try:
        while proc.poll() is None:
            if not told and stop.exists():
                told = True
                _kill(proc.pid, signal.SIGINT)
            time.sleep(POLL_S)
    except KeyboardInterrupt:  # a cancel after all: the same clean stop
        _kill(proc.pid, signal.SIGINT)
        proc.wait()
    finally:
        log.close()
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - t0, "started": True}


def run_ray(jobs: list[Job], ray_opts: dict, signals: Signals, on_start: Callable, on_end: Callable) -> None:
    """One Ray task per cell, with ``num_cpus`` = its threads and ``num_gpus`` from ``ray_opts``."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(
                address=ray_opts.get("address"), include_dashboard=False, log_to_driver=False, configure_logging=False
            )
        except Exception as exc:  # a wrong --address, a cluster that is gone
            where = ray_opts.get("address") or "a new local instance"
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"--executor ray: cannot connect to Ray at {where}: {why}") from None
    signals.install()
    for job in jobs:
        _remove(Path(job.run_dir) / STOP)  # left by a sweep that was killed
    try:
        task = ray.remote(_ray_cell)
        refs = {}
        for job in jobs:
            ref = task.options(
                num_cpus=job.threads, num_gpus=ray_opts.get("gpus", 0), name=f"sft-sweep-{job.name}"
            ).remote(job.run_dir, job.threads, os.getcwd())
            refs[ref] = (job, time.perf_counter())
            on_start(job)
        _wait_ray(ray, refs, signals, on_end)
    finally:
        if started_here:
            ray.shutdown()


def _wait_ray(ray, refs: dict, signals: Signals, on_end: Callable) -> None:
    stopped = False
    while refs:
        if signals.received and not stopped:
            stopped = True
            for job, _ in refs.values():
                _touch(Path(job.run_dir) / STOP)
        done, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_S * 5)
        for ref in done:
            job, t0 = refs.pop(ref)
            try:
                result = ray.get(ref)
                outcome = Outcome(result["returncode"], result["seconds"], stopped=stopped, started=result["started"])
            except Exception:  # the task or its node was lost: the run directory says how far it got
                outcome = Outcome(None, time.perf_counter() - t0, stopped=stopped)
            _remove(Path(job.run_dir) / STOP)
            on_end(job, outcome)


def _touch(path: Path) -> None:
    try:
        path.write_text("stop\n")
    except OSError:
        pass


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
