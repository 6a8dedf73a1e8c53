"""The ``csv`` callback: the epoch records of every stage as one CSV file."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import cast

from sftcore.api import Callback, RunInfo, StageInfo, check_run_file

COLUMNS = (
    "stage",
    "seed",
    "epoch",
    "train_loss",
    "train_accuracy",
    "penalty",
    "val_loss",
    "val_accuracy",
    "lr",
    "trainable_params",
    "seconds",
)


def _cell(value) -> str:
    return "" if value is None else str(value)


def _line(record: dict, stage_name: str) -> str:
    out = io.StringIO()
    row = [stage_name if key == "stage" else _cell(record.get(key)) for key in COLUMNS]
    csv.writer(out, lineterminator="\n").writerow(row)
    return out.getvalue()


def _epoch(row: dict) -> int | None:
    try:
        return int(row.get("epoch") or "")
    except ValueError:
        return None


class CSVLog(Callback):
    """One CSV row per epoch of every stage, written to ``path`` in the run directory.

    The columns are fixed: stage (the stage's name, e.g. ``finetune-seed1``), seed, epoch,
    train_loss, train_accuracy, penalty, val_loss, val_accuracy, lr, trainable_params, seconds; a
    value a stage does not have (no validation data, no regularizer) is an empty cell. Each row is
    appended and flushed when its epoch ends. A resumed stage first rewrites its rows from the
    restored history, so the rows of epochs that are trained again are not kept twice. A run
    without a run directory writes nothing.
    """

    def __init__(self, path: str = "metrics.csv"):
        self.validate_options("config: callback csv", path)
        self.path_option = path
        self.path: Path | None = None

    @staticmethod
    def validate_options(where: str, path: str = "metrics.csv") -> None:
        """path: a file inside the run directory, none of the run's own files (it would replace them)."""
        check_run_file(path, f"{where}.path")

    # ------------------------------------------------------------------ events
    def on_run_start(self, run: RunInfo) -> None:
        self.path = None if run.run_dir is None else Path(run.run_dir) / self.path_option
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not run.resumed or not self.path.exists():  # a new run starts a new file
            self._rewrite([])

    def on_stage_start(self, stage: StageInfo) -> None:
        """Drop this stage's rows after its restored history (they are trained again); a restored epoch
        the file lacks (the process was killed between metrics.jsonl and this file) is filled in from
        the history."""
        if self._target(stage) is None:
            return
        rows = self._read()
        done = len(stage.history)
        mine = {
            _epoch(row): _line_of(row)
            for row in rows
            if row["stage"] == stage.name and cast(int, _epoch(row)) <= done  # _read keeps rows with an epoch
        }
        lines = [_line_of(row) for row in rows if row["stage"] != stage.name]
        for i, record in enumerate(stage.history, 1):
            lines.append(mine.get(record.get("epoch", i)) or _line(record, stage.name))
        self._rewrite(lines)

    def on_epoch_end(self, stage: StageInfo, record: dict) -> None:
        path = self._target(stage)
        if path is None:
            return
        if not path.exists() or path.stat().st_size == 0:
            self._rewrite([])
        with path.open("a", newline="") as f:
            f.write(_line(record, stage.name))
            f.flush()

    # ------------------------------------------------------------------ the file
    def _target(self, stage: StageInfo) -> Path | None:
        if self.path is None and stage.run is not None and stage.run.run_dir is not None:
            self.path = Path(stage.run.run_dir) / self.path_option  # on_run_start was not called
            self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path

    def _read(self) -> list[dict]:
        """The well-formed rows of the file: a row cut short by a kill is dropped."""
        assert self.path is not None  # read only once _target found the file
        try:
            with self.path.open(newline="") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        if text and not text.endswith("\n"):  # the last row was cut short
            text = text[: text.rfind("\n") + 1]
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or tuple(rows[0]) != COLUMNS:
            return []
        parsed = [dict(zip(COLUMNS, row)) for row in rows[1:] if len(row) == len(COLUMNS)]
        return [row for row in parsed if _epoch(row) is not None]

    def _rewrite(self, lines: list[str]) -> None:
        """Header and ``lines``, written to a temporary file and renamed over the old one."""
        assert self.path is not None  # written only once on_run_start or _target set the file
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(COLUMNS)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as f:
            f.write(header.getvalue() + "".join(lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _line_of(row: dict) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([row.get(key, "") for key in COLUMNS])
    return out.getvalue()
