"""`sft run --nproc N`: the one-machine shortcut for `torchrun --standalone --nproc_per_node N -m sftcore run`.

The config is checked here first, so a mistake prints one line before any process starts, and
the run directory is named here, so that every rank (and a later --resume) agrees on it.
torchrun's own failure report is replaced by the workers' one-line `sft:` messages.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .errors import ConfigError


def launch(nproc: int, config, overrides, out, resume, force, progress) -> int:
    from . import config as cfgmod
    from .plugins import get_registry
    from .runner import new_run_path

    if resume is None:
        cfg = cfgmod.resolve(cfgmod.load(config, overrides), get_registry())
        if out is None:
            out = str(new_run_path(cfg["name"]))
    args = ["run"]
    if resume is not None:
        args += ["--resume", str(resume)]
    else:
        args += ([str(config)] if config is not None else []) + [a for o in overrides for a in ("--set", o)]
        args += ["--out", str(out)] + (["--force"] if force else [])
    args += ["--progress" if progress else "--no-progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sftcore", *args]
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the cores out instead of letting torchrun warn and pick 1
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    try:
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise ConfigError(f"cannot start torchrun: {exc.strerror or exc}") from None
    said: set[str] = set()
    other: list[str] = []
    try:
        for line in proc.stderr:
            if line.startswith("sft: "):
                if line not in said:  # every rank reports the same error: print it once
                    said.add(line)
                    sys.stderr.write(line)
            elif not _torchrun_noise(line):
                other.append(line)
                if progress or not line.strip().startswith(("[", "W", "I", "E")):
                    sys.stderr.write(line)
        code = proc.wait()
    except KeyboardInterrupt:  # torchrun forwards the signal; wait for the ranks to save and exit
        code = proc.wait()
    if code and not said:
        sys.stderr.write("".join(other[-20:]))
    if any(line.startswith("sft: interrupted") for line in said):
        return 130
    if any(line.startswith("sft: error") for line in said):
        return 2
    return code


def _torchrun_noise(line: str) -> bool:
    """torchrun's warnings and its failure summary, which repeat what the workers already said."""
    noise = ("torch.distributed", "ChildFailedError", "Root Cause", "Failures:", "<NO_OTHER_FAILURES>",
             "=====", "------", "  time      :", "  host      :", "  rank      :", "  exitcode  :",
             "  error_file:", "  traceback :", "Traceback", "  File ", "    ", "[W", "W1", "I1", "E1",
             "Setting OMP_NUM_THREADS", "*****", "sftcore run FAILED", "  warnings.warn")
    return line.lstrip().startswith(noise) or line.startswith(noise) or not line.strip()
