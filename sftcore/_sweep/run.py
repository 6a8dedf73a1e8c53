"""`sft sweep`: expand a sweep file into cells, run them, keep sweep.json current, aggregate at the end.

A sweep directory holds ``sweep.yaml`` (the sweep as given, its base path made absolute),
``sweep.json`` (every cell's overrides, status, run directory, error line and seconds, then the
aggregation), ``sweep.csv`` and ``cells/<cell>/``, each an ordinary run directory. The sweep
creates each cell's run directory before the cell starts, so every cell process is
``sft run --resume CELL_DIR``: a first start and a continuation are the same. Running the sweep
again on its directory skips finished cells, continues interrupted ones and, with
``--retry-failed``, starts failed ones over.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sftcore._fileio import storage
from sftcore._run import ownership
from sftcore._rundir import layout as rundir
from sftcore._runtime import held_warnings
from sftcore.errors import ConfigError, Interrupted, SftError, show

from .executors import INTERRUPT_CODES, LOG, Job, Outcome, Signals, check_address, ray_available, run_local, run_ray
from .spec import Cell, Sweep, expand, flow, load_sweep

EXECUTORS = ("local", "ray")
FINISHED, FAILED, INTERRUPTED, PENDING, RUNNING = "finished", "failed", "interrupted", "pending", "running"


class CellsFailed(SftError):
    """The sweep ran to its end but some cells failed: exit 1, so a script notices."""

    exit_code = 1


@dataclass
class Options:
    out: str | None = None
    resume: str | None = None
    jobs: int = 1
    executor: str = "local"
    address: str | None = None
    gpus_per_cell: float = 0
    cpus_per_cell: int | None = None
    retry_failed: bool = False
    dry_run: bool = False
    reference: str | None = None


@dataclass
class State:
    """The sweep directory's sweep.json, kept current as cells start and end."""

    path: Path
    sweep: Sweep
    options: Options
    cells: list[dict] = field(default_factory=list)
    aggregate: dict | None = None

    def write(self) -> None:
        storage.write_json(
            self.path / rundir.SWEEP,
            {
                "name": self.sweep.name,
                "sweep_file": str(self.sweep.source) if self.sweep.source else None,
                "executor": self.options.executor,
                "jobs": self.options.jobs,
                "varied_keys": list(self.sweep.grid),
                "reference": self.sweep.reference,
                "spec": self.sweep.spec(),
                "cells": self.cells,
                "aggregate": self.aggregate,
            },
        )


def check_options(opts: Options) -> None:
    if opts.jobs < 1:
        raise ConfigError(f"--jobs must be 1 or more, got {opts.jobs}")
    if opts.executor not in EXECUTORS:
        raise ConfigError(f"--executor must be local or ray, not {show(opts.executor)}")
    if opts.gpus_per_cell < 0 or (opts.cpus_per_cell is not None and opts.cpus_per_cell < 1):
        raise ConfigError("--gpus-per-cell must be 0 or more and --cpus-per-cell 1 or more")
    if opts.executor != "ray" and (opts.address or opts.gpus_per_cell):
        raise ConfigError("--address and --gpus-per-cell go with --executor ray")
    if opts.executor == "ray" and not ray_available():
        raise ConfigError("--executor ray needs Ray: pip install 'sftcore[ray]'")
    if opts.executor == "ray" and opts.address:
        check_address(opts.address)


def _sweep_file(path, opts: Options) -> Path:
    if opts.resume is None:
        if path is None:
            raise ConfigError("give a sweep file (sft sweep SWEEP.yaml) or --resume SWEEP_DIR")
        return Path(path)
    if path is not None or opts.out is not None:
        raise ConfigError("--resume takes the sweep's own sweep.yaml; drop SWEEP_FILE and --out")
    if not (Path(opts.resume) / "sweep.yaml").is_file():
        raise ConfigError(
            f"--resume '{opts.resume}' is not a sweep directory (it has no sweep.yaml); "
            "pass the directory an earlier `sft sweep` printed"
        )
    return Path(opts.resume) / "sweep.yaml"


def sweep(path=None, opts: Options | None = None, echo: Callable[[str], None] = print) -> dict:
    """Run (or continue) a sweep; returns sweep.json's content. Every check comes before any cell runs."""
    from sftcore._plugins.manager import get_registry

    opts = opts or Options()
    check_options(opts)
    spec = load_sweep(_sweep_file(path, opts), opts.reference)
    cells = expand(spec, get_registry())
    if any(cell.config.get("checkpoints") is False for cell in cells):
        raise ConfigError(
            "sweep: checkpoints: false; a sweep continues its cells from their checkpoints, so leave checkpoints on"
        )
    if opts.dry_run:
        for cell in cells:
            echo(f"{cell.name}  {' '.join(cell.set_args())}")
        echo(f"{len(cells)} cells, {_seed_text(cells)} each; nothing was run (--dry-run)")
        return {"cells": [{"index": c.index, "name": c.name, "overrides": c.overrides} for c in cells]}
    given = opts.resume or opts.out
    where = Path(given) if given else _new_sweep_path(spec.name)
    lock = _claim(where, spec)
    held_warnings.release()  # the sweep's input is checked: what a library warns about now is news
    try:
        return _run(State(where, spec, opts), cells, echo)
    finally:
        lock.release()


def _seed_text(cells: list[Cell]) -> str:
    from sftcore._config.resolve import seed_list

    return f"{len(seed_list(cells[0].config))} seed(s)"


def _new_sweep_path(name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = Path("runs") / "sweeps" / f"{name}-{stamp}", 1
    while path.exists():
        i += 1
        path = Path("runs") / "sweeps" / f"{name}-{stamp}-{i}"
    return path


def _claim(where: Path, spec: Sweep) -> ownership.Lock:
    """Own the sweep directory: a new one, or one that ran this same sweep (its spec unchanged)."""
    if where.exists() and not where.is_dir():
        raise ConfigError(f"--out '{where}' is a file; pass a directory path")
    known = where / rundir.SWEEP
    if where.is_dir() and any(p.name != ownership.LOCK for p in where.iterdir()) and not known.is_file():
        raise ConfigError(f"--out '{where}' is not empty and holds no sweep; choose a new or empty directory")
    if known.is_file():
        try:
            before = json.loads(known.read_text())["spec"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"'{known}' cannot be read; start the sweep in a new directory") from None
        if before != spec.spec():
            changed = [k for k in ("base", "grid", "seeds") if before.get(k) != spec.spec()[k]]
            raise ConfigError(
                f"'{where}' ran a different sweep ({', '.join(changed)} changed); continue it with "
                f"`sft sweep --resume {where}` or choose a new --out"
            )
    try:
        (where / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create sweep directory '{where}': {exc.strerror}") from None
    lock = ownership.lock(where)
    if not (where / "sweep.yaml").is_file():
        import yaml

        storage.write_text(where / "sweep.yaml", yaml.safe_dump(spec.as_written(), sort_keys=False))
    return lock


def _previous(where: Path) -> dict[str, dict]:
    try:
        return {c["name"]: c for c in json.loads((where / rundir.SWEEP).read_text())["cells"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _prepare(state: State, cell: Cell, before: dict | None) -> str:
    """The cell's status before this sweep runs it, creating (or, for a failed retry, replacing) its run
    directory: finished and (without --retry-failed) failed cells are not run again."""
    run_dir = state.path / "cells" / cell.name
    if (run_dir / rundir.SUMMARY).is_file():
        return FINISHED
    was = (before or {}).get("status")
    if was == FAILED and not state.options.retry_failed:
        return FAILED
    if not rundir.is_run(run_dir) or was == FAILED:
        claim = ownership.claim_new(run_dir, force=True, cfg=cell.config)  # force: only a run sftcore wrote
        claim.release()
        return PENDING
    return INTERRUPTED if was != PENDING else PENDING


def _record(cell: Cell, status: str, before: dict | None) -> dict:
    keep = before or {}
    return {
        "index": cell.index,
        "name": cell.name,
        "overrides": cell.overrides,
        "set": cell.set_args(),
        "status": status,
        "run_dir": f"cells/{cell.name}",
        "error": keep.get("error") if status == FAILED else None,  # a cell run again has no error yet
        "seconds": keep.get("seconds"),
        "returncode": keep.get("returncode"),
    }


def _run(state: State, cells: list[Cell], echo) -> dict:
    before = _previous(state.path)
    state.cells = [_record(c, _prepare(state, c, before.get(c.name)), before.get(c.name)) for c in cells]
    state.write()
    todo = [r for r in state.cells if r["status"] in (PENDING, INTERRUPTED)]
    skipped = len(state.cells) - len(todo)
    echo(
        f"sweep {state.sweep.name}: {len(cells)} cells, {len(todo)} to run"
        + (f" ({skipped} finished or failed: skipped)" if skipped else "")
        + f"; {_threads_text(state.options)}; directory {state.path}"
    )
    signals = _execute(state, todo, echo)
    return _finish(state, signals, echo)


def _threads(opts: Options) -> int:
    """Each cell's torch threads (its OMP_NUM_THREADS): --cpus-per-cell, else the cores shared by --jobs."""
    return opts.cpus_per_cell or max(1, (os.cpu_count() or 1) // opts.jobs)


def _threads_text(opts: Options) -> str:
    """Said in the sweep's first line: a user's own OMP_NUM_THREADS does not reach the cells."""
    threads, given = _threads(opts), os.environ.get("OMP_NUM_THREADS")
    ignored = f" (not OMP_NUM_THREADS={given}: --cpus-per-cell sets it)" if given and given != str(threads) else ""
    return f"{threads} thread(s) per cell{ignored}"


def _execute(state: State, todo: list[dict], echo) -> Signals:
    opts, total = state.options, len(state.cells)
    threads = _threads(opts)
    by_name = {r["name"]: r for r in state.cells}
    jobs = [Job(r["name"], str((state.path / r["run_dir"]).resolve()), threads) for r in todo]

    def on_start(job: Job) -> None:
        record = by_name[job.name]
        record["status"] = RUNNING
        state.write()
        echo(f"[{record['index'] + 1}/{total}] start  {job.name}")

    def on_end(job: Job, outcome: Outcome) -> None:
        record = by_name[job.name]
        record.update(_status(Path(job.run_dir), outcome))
        state.write()
        said = record["status"] + (f" in {record['seconds']:.1f} s" if record["seconds"] is not None else "")
        echo(
            f"[{record['index'] + 1}/{total}] {said}  {job.name}" + (f": {record['error']}" if record["error"] else "")
        )

    with Signals() as signals:
        if opts.executor == "ray":
            run_ray(jobs, {"address": opts.address, "gpus": opts.gpus_per_cell}, signals, on_start, on_end)
        else:
            run_local(jobs, opts.jobs, signals, on_start, on_end)
    return signals


def _status(run_dir: Path, outcome: Outcome) -> dict:
    code = outcome.returncode
    if not outcome.started:
        return {"status": PENDING, "error": None, "seconds": None, "returncode": None}
    if (run_dir / rundir.SUMMARY).is_file() and code in (0, None):
        status, error = FINISHED, None
    elif code in INTERRUPT_CODES or (outcome.stopped and (code is None or code < 0)):
        status, error = INTERRUPTED, None
    else:
        status = FAILED
        error = _error_line(run_dir) or (f"exited with code {code}" if code is not None else "lost by the executor")
    return {"status": status, "error": error, "seconds": round(outcome.seconds, 3), "returncode": code}


def _error_line(run_dir: Path) -> str | None:
    """The cell's last `sft: ...` line in this attempt of its log (the one line a failed run prints)."""
    try:
        text = (run_dir / LOG).read_text(errors="replace")
    except OSError:
        return None
    attempt = text.rsplit("# sft sweep: ", 1)[-1]
    lines = [line.strip() for line in attempt.splitlines() if line.startswith("sft: ")]
    return lines[-1][:500] if lines else None


def _finish(state: State, signals: Signals, echo) -> dict:
    state.aggregate = _aggregate(state)
    _write_csv(state)
    state.write()
    if state.aggregate is not None and state.aggregate.get("table"):
        echo(state.aggregate["table"])
    counts = {s: sum(r["status"] == s for r in state.cells) for s in (FINISHED, FAILED, INTERRUPTED, PENDING)}
    echo(f"sweep directory: {state.path} ({', '.join(f'{n} {s}' for s, n in counts.items() if n)})")
    if signals.signum is not None:
        import signal as signal_module

        name = "Ctrl-C" if signals.signum == signal_module.SIGINT else signal_module.Signals(signals.signum).name
        raise Interrupted(
            f"{name}: every running cell saved its progress; continue with: sft sweep --resume {state.path}",
            signals.signum,
        )
    if counts[FAILED]:
        raise CellsFailed(
            f"{counts[FAILED]} of {len(state.cells)} cells failed (their errors are in "
            f"{state.path / 'sweep.json'}); run them again with: "
            f"sft sweep --resume {state.path} --retry-failed"
        )
    return json.loads((state.path / rundir.SWEEP).read_text())


def _aggregate(state: State) -> dict | None:
    """sftcore._analysis.aggregate's result for the cells (the table too); None when that module is absent."""
    try:
        from sftcore._analysis.aggregate import aggregate, csv_rows, table
    except ImportError:
        return None
    dirs = [state.path / r["run_dir"] for r in state.cells if rundir.is_run(state.path / r["run_dir"])]
    try:
        result = aggregate(dirs, reference=state.sweep.reference, varied=list(state.sweep.grid))
    except SftError as exc:  # the cells ran: keep sweep.json and say why there is no table
        return {"error": str(exc), "table": f"no results table: {exc}"}
    return {**result, "table": table(result), "csv": csv_rows(result)}


def _write_csv(state: State) -> None:
    """sweep.csv: the aggregation's rows, or (without it) one row per cell and its status."""
    rows = (state.aggregate or {}).pop("csv", None)
    if rows is None:
        rows = [
            {
                "cell": r["name"],
                **{k: flow(v) for k, v in r["overrides"].items()},
                "status": r["status"],
                "seconds": r["seconds"],
                "error": r["error"],
            }
            for r in state.cells
        ]
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(state.path / "sweep.csv", buffer.getvalue())
