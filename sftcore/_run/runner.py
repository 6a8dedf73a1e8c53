"""`sft run` and ``sftcore.run``: resolve the config, own the run directory, run the pipeline, write the summary."""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sftcore._analysis.report import results_table
from sftcore._config import resolve as cfgmod
from sftcore._config.schema import STAGES, RunConfig
from sftcore._fileio import storage
from sftcore._plugins import components
from sftcore._plugins.contracts import Callback
from sftcore._plugins.manager import get_registry
from sftcore._run import ownership
from sftcore._rundir import layout as rundir
from sftcore._rundir.outputs import EpochLines
from sftcore._runtime import distributed
from sftcore._runtime.device import resolve_performance
from sftcore._runtime.interrupt import StopSignals, watch_parent
from sftcore._train.events import Events
from sftcore.errors import ConfigError, Interrupted, SftError, TrainingError, show

from .pipeline import Pipeline


def check_batch_sizes(config: RunConfig, world: int) -> None:
    """``batch_size`` is global: each of ``world`` processes needs at least 2 examples of every batch."""
    for stage in STAGES:
        scfg = getattr(config, stage)
        if world > 1 and scfg is not None and scfg.batch_size < 2 * world:
            raise ConfigError(
                f"config: {stage}.batch_size is {scfg.batch_size}, the global batch of "
                f"{world} processes; each needs at least 2 examples: use {2 * world} or more"
            )


def check_run_args(config, overrides, out, force: bool, resume, allow_config_change: bool) -> None:
    """`sft run`'s options that contradict each other, refused in one line before anything starts."""
    if resume is not None and (config is not None or overrides or out is not None or force):
        raise ConfigError("--resume takes the run's own config.yaml; drop CONFIG, --set, --seeds, --out and --force")
    if resume is None and allow_config_change:
        raise ConfigError("--allow-config-change goes with --resume RUN_DIR; a new run takes any config")


def check_run_name(name: str) -> None:
    """``name`` becomes one folder, ``runs/<name>-<time>``: it must not lead anywhere else."""
    from pathlib import PureWindowsPath

    name = str(name)
    if (
        not name
        or any(c in name for c in ("/", "\\", "\0"))
        or name.startswith(".")
        or Path(name).is_absolute()
        or PureWindowsPath(name).drive
    ):
        raise ConfigError(
            f"config: name {show(name)} names the run directory runs/<name>-<time>, so it must be one "
            "folder name: no '/', '\\', NUL, '..' or leading '.'; change name, or pass --out DIR"
        )


def new_run_path(name: str) -> Path:
    """``runs/<name>-<timestamp>``, numbered if taken (not created here)."""
    check_run_name(name)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{name}-{stamp}"
    i = 1
    while path.exists():
        i += 1
        path = Path("runs") / f"{name}-{stamp}-{i}"
    return path


def _run_dir(out, config: RunConfig, force: bool) -> ownership.Claim:
    """A new run directory, owned (locked) by this process; an existing run in ``out`` is replaced only with
    ``force``, and a directory sftcore did not write never is."""
    path = new_run_path(config.name) if out is None else Path(out)
    return ownership.claim_new(path, force, config.raw)


@dataclass
class Listeners:
    """Who hears about the run: ``echo`` gets the stage lines and the results table, ``epoch_echo`` one line
    per epoch, ``callbacks`` every event after the config's own callbacks; ``progress``: tqdm bars."""

    echo: Callable[[str], None] | None = None
    epoch_echo: Callable[[str], None] | None = None
    callbacks: Sequence[Callback] = ()
    progress: bool | None = None


def run(
    config=None,
    *,
    out=None,
    overrides=(),
    progress=None,
    echo=None,
    resume=None,
    force=False,
    allow_config_change=False,
    callbacks: Sequence[Callback] = (),
    epoch_echo=None,
) -> dict:
    """Resolve the config, run every stage, write the run directory, return the summary.

    ``resume=RUN_DIR`` continues an interrupted run from its checkpoints with its own config, which must
    be the config the run started with unless ``allow_config_change`` (the change is recorded in the run's
    config-changes.jsonl); ``force=True`` replaces an earlier run in ``out``.
    """
    registry = get_registry()
    check_run_args(config, overrides, out, force, resume, allow_config_change)
    if resume is not None:
        resolved = _resumed_config(Path(resume), registry)
    else:
        resolved = RunConfig.of(cfgmod.resolve(cfgmod.load(config, overrides), registry))
    resolve_performance(resolved)  # joins torchrun's process group; a device error leaves no empty run directory
    listeners = Listeners(echo, epoch_echo, tuple(callbacks), progress)
    try:
        check_batch_sizes(resolved, distributed.world_size())
        summary = _run(
            resolved, Path(resume) if resume is not None else None, out, force, listeners, allow_config_change
        )
        distributed.barrier()  # rank 0 writes last; no rank leaves the group before it is done
        return summary
    finally:
        distributed.teardown()


def _resumed_config(run_dir: Path, registry) -> RunConfig:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--resume '{run_dir}' is a file; pass the run directory an earlier `sft run` printed")
    if not rundir.is_run(run_dir):
        raise ConfigError(
            f"--resume '{run_dir}' is not a run directory (it has no config.yaml); "
            "pass the directory an earlier `sft run` printed"
        )
    raw = cfgmod.load(run_dir / rundir.CONFIG)
    if isinstance(raw, dict):  # a run from before seeds existed ran one seed: keep it at one
        raw.setdefault("seeds", 1)
        raw.setdefault("pretrain_per_seed", False)
    config = RunConfig.of(cfgmod.resolve(raw, registry))
    if not config.checkpoints:
        raise ConfigError(
            f"--resume '{run_dir}': that run had checkpoints: false, so there is nothing to "
            "continue from; start it again"
        )
    return config


def _events(config: RunConfig, listeners: Listeners) -> Events:
    """The config's callbacks, then the Python caller's; the epoch lines first (not saved: no state)."""
    registry = get_registry()
    made = [
        (f"'{c.name}' (callbacks[{i}])", components.build(registry, "callbacks", c.entry(), f"callbacks[{i}]"))
        for i, c in enumerate(config.callbacks)
    ]
    made += [(f"{type(cb).__name__} (sftcore.run callbacks[{i}])", cb) for i, cb in enumerate(listeners.callbacks)]
    for label, callback in made:
        if not isinstance(callback, Callback):
            raise ConfigError(f"callback {label} is a {type(callback).__name__}, not a sftcore.api.Callback")
    lines = [EpochLines(listeners.epoch_echo)] if listeners.epoch_echo is not None else []
    return Events(made, observers=lines)


def _claim(config: RunConfig, resume: Path | None, out, force: bool, allow_change: bool):
    """Rank 0 owns the run directory (lock, marker, config.yaml); every rank learns its path, or rank 0's error."""
    claim = None
    if distributed.is_main():
        try:
            claim = (
                _run_dir(out, config, force)
                if resume is None
                else ownership.claim_resume(resume, config.raw, allow_change)
            )
            if config.checkpoints:
                storage.make_dir(claim.path / rundir.CHECKPOINTS)
        except SftError as exc:
            if claim is not None and claim.fresh:
                claim.discard()
            elif claim is not None:
                claim.release()
            distributed.broadcast_object(str(exc))  # the other ranks stop with the same line
            raise
    made = distributed.broadcast_object(str(claim.path) if claim is not None else None)
    if not isinstance(made, str) or not Path(made).is_dir():
        raise ConfigError(made if isinstance(made, str) else "rank 0 could not create the run directory")
    return Path(made), claim


def _run(
    config: RunConfig, resume: Path | None, out, force: bool, listeners: Listeners, allow_change: bool = False
) -> dict:
    run_dir, claim = _claim(config, resume, out, force, allow_change)
    echo, progress = listeners.echo, listeners.progress
    if not distributed.is_main():
        echo, progress = None, False
    if progress is None:
        import sys

        progress = echo is not None and sys.stderr.isatty()

    def write(summary: dict) -> None:
        if claim is not None:
            storage.write_json(run_dir / rundir.SUMMARY, summary)

    try:
        summary = _pipeline(config, run_dir, resume is not None, progress, echo, _events(config, listeners), write)
        if claim is not None:
            (run_dir / rundir.FAILED).unlink(missing_ok=True)  # a resumed run that finished is no longer failed
    except SftError as exc:
        # a new run that failed before it trained (a dataset error, say) leaves nothing behind, so the corrected
        # config can go to the same --out; an interrupted one stays for --resume; one that failed while training
        # (a NaN loss) keeps its evidence, marked failed
        if claim is not None and isinstance(exc, TrainingError):
            storage.write_json(run_dir / rundir.FAILED, {"error": str(exc), "label": exc.label})
        elif (
            claim is not None
            and claim.fresh
            and not isinstance(exc, Interrupted)
            and not ownership.has_progress(run_dir)
        ):
            claim.discard()
        raise
    finally:
        if claim is not None:
            claim.release()
    if echo is not None:
        echo(results_table(summary))
        echo(f"run directory: {run_dir}")
    return summary


def _pipeline(config: RunConfig, run_dir: Path, resume: bool, progress, echo, events: Events, write) -> dict:
    again = f"resume with: sft run --resume {run_dir}" if config.checkpoints else "start the run again"
    try:
        with StopSignals(catch_repeats=distributed.active()) as stop:
            watch_parent()
            return Pipeline(config, run_dir, progress, echo, resume=resume, stop=stop, events=events).run(write)
    except KeyboardInterrupt:  # outside the training loop (loading data, evaluating): nothing half-written
        raise Interrupted(f"Ctrl-C; every finished stage and epoch is saved; {again}", signal.SIGINT) from None
    except Interrupted as exc:
        raise Interrupted(f"{exc}; {again}", exc.exit_code - 128) from None
