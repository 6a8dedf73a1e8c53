"""`sft run --nproc N`: the one-machine shortcut for `torchrun --standalone --nproc_per_node N -m sftcore run`.

The config is checked here first, so a mistake prints one line before any process starts, and
the run directory is named here, so that every rank (and a later --resume) agrees on it.
torchrun runs in its own session: Ctrl-C or SIGTERM reach it once, through this process, and
it passes them on to the workers, which save and stop at the same step. torchrun's own failure
report is replaced by the workers' one-line `sft:` messages.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from sftcore.errors import ConfigError

EPOCH_LINE = re.compile(r"^\S+ epoch \d+/\d+: loss ")  # sftcore._rundir.outputs.epoch_line


def _relay(stderr) -> tuple[list[str], list[str]]:
    """Read torchrun's stderr until it and every worker have exited: sftcore's error lines once (every rank
    reports the same), rank 0's epoch lines as a single process prints them; returns (said, other)."""
    said: list[str] = []
    other: list[str] = []
    for line in stderr:
        if line.startswith("sft: "):
            if line not in said:
                said.append(line)
                sys.stderr.write(line)
        elif EPOCH_LINE.match(line):
            sys.stderr.write(line)
            sys.stderr.flush()
        elif not _torchrun_noise(line):
            other.append(line)
    return said, other


def launch(nproc: int, config, overrides, out, resume, force, progress, allow_config_change=False) -> int:
    args = _worker_args(nproc, config, overrides, out, resume, force, allow_config_change)
    args.append("--progress" if progress else "--no-progress")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "sftcore"]
    cmd += args
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the cores out instead of letting torchrun warn and pick 1
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    piped = not progress  # progress bars need the terminal itself
    try:
        proc = subprocess.Popen(
            cmd, env=env, stderr=subprocess.PIPE if piped else None, text=True, start_new_session=True
        )
    except OSError as exc:
        raise ConfigError(f"cannot start torchrun: {exc.strerror or exc}") from None
    received: list[int] = []

    def forward(signum, _frame):
        if not received:  # once: torchrun passes it to every worker
            received.append(signum)
            try:
                os.kill(proc.pid, signum)
            except OSError:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        said, other = _relay(proc.stderr) if piped else ([], [])
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code and not said:
        sys.stderr.write("".join(other[-20:]))
    stopped = [line for line in said if line.startswith("sft: interrupted")]
    if stopped:
        return 128 + (signal.SIGTERM if "SIGTERM" in stopped[0] else signal.SIGINT)
    if any(line.startswith("sft: error") for line in said):
        return 2
    if received and code:
        return 128 + received[0]
    return code


def _worker_args(nproc: int, config, overrides, out, resume, force, allow_config_change) -> list[str]:
    """The workers' `sft run` arguments: the config checked, and the run directory named, here."""
    from sftcore._config import resolve as cfgmod
    from sftcore._config.schema import RunConfig
    from sftcore._plugins.manager import get_registry

    from .runner import check_batch_sizes, check_run_args, new_run_path

    check_run_args(config, overrides, out, force, resume, allow_config_change)
    if resume is not None:
        return ["run", "--resume", str(resume), *(["--allow-config-change"] if allow_config_change else [])]
    resolved = RunConfig.of(cfgmod.resolve(cfgmod.load(config, overrides), get_registry()))
    check_batch_sizes(resolved, nproc)
    out = out if out is not None else str(new_run_path(resolved.name))
    return [
        "run",
        *([str(config)] if config is not None else []),
        *[a for o in overrides for a in ("--set", o)],
        "--out",
        str(out),
        *(["--force"] if force else []),
    ]


def _torchrun_noise(line: str) -> bool:
    """torchrun's warnings and its failure summary, which repeat what the workers already said."""
    text = line.strip()
    noise = (
        "torch.distributed",
        "ChildFailedError",
        "Root Cause",
        "Failures:",
        "<NO_OTHER_FAILURES>",
        "=====",
        "------",
        "time      :",
        "host      :",
        "rank      :",
        "exitcode  :",
        "error_file:",
        "traceback :",
        "Traceback",
        "File ",
        "[W",
        "W1",
        "I1",
        "E1",
        "Setting OMP_NUM_THREADS",
        "*****",
        "sftcore FAILED",
        "warnings.warn",
        "[0]:",
        "[1]:",
        "raise ",
        "return ",
        "^",
    )
    return not text or text.startswith(noise) or line.startswith("    ")
