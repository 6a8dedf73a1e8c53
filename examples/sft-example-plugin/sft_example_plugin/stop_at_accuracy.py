"""``stop_at_accuracy``: a callback that ends a stage once an accuracy reaches a threshold."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sftcore.api import Callback, RunInfo, StageInfo, check_option

#: the accuracies an epoch record holds (a line of metrics.jsonl)
MONITORS = ("train_accuracy", "val_accuracy")
FILE = "stopped_at.json"


class StopAtAccuracy(Callback):
    """Stop a stage once train (or val) accuracy reaches a threshold; stopped_at.json lists the epochs

    After each epoch, if ``record[monitor] >= threshold``, the stage is asked to stop
    (``stage.request_stop``): it ends after that epoch, and its result says why (``stopped_early``).
    Reaching the threshold in the stage's last epoch is no stop: the stage ends there anyway. A
    stage without validation data has no ``val_accuracy`` and is never stopped by it; nor is a
    stage another callback already stopped.

    Each stop also rewrites ``stopped_at.json`` in the run directory: ``{stage name: epoch}`` for
    every stage this callback stopped so far in the run (``finetune``, ``finetune-seed1``, ...).
    The decision follows from the epoch record alone, so the callback keeps no state and a resumed
    run stops where the interrupted one would have.
    """

    WHERE = "config: callback stop_at_accuracy"

    def __init__(self, threshold: float = 0.99, monitor: str = "train_accuracy"):
        checked = self.validate_options(self.WHERE, threshold, monitor)
        self.threshold, self.monitor = checked["threshold"], checked["monitor"]
        self.run_dir: Path | None = None

    @staticmethod
    def validate_options(where: str, threshold: float = 0.99, monitor: str = "train_accuracy") -> dict:
        """threshold a number in (0, 1]; monitor train_accuracy or val_accuracy."""
        return {"threshold": check_option("threshold", threshold, float, low=0.0, low_open=True, high=1.0,
                                          where=where),
                "monitor": check_option("monitor", monitor, str, choices=MONITORS, where=where)}

    # ------------------------------------------------------------------ events
    def on_run_start(self, run: RunInfo) -> None:
        self.run_dir = None if run.run_dir is None else Path(run.run_dir)
        if self.run_dir is not None and not run.resumed:  # a new run lists only its own stops
            (self.run_dir / FILE).unlink(missing_ok=True)

    def on_epoch_end(self, stage: StageInfo, record: dict) -> None:
        value = record.get(self.monitor)
        epoch = int(record.get("epoch", len(stage.history)))
        if value is None or value < self.threshold or epoch >= stage.epochs or stage.stop_reason is not None:
            return
        stage.request_stop(f"{self.monitor} {value:.4f} >= {self.threshold:g} (stop_at_accuracy)")
        self._write(stage, epoch)

    # ------------------------------------------------------------------ the file
    def _write(self, stage: StageInfo, epoch: int) -> None:
        run_dir = self.run_dir
        if run_dir is None and stage.run is not None and stage.run.run_dir is not None:
            run_dir = self.run_dir = Path(stage.run.run_dir)  # on_run_start was not called
        if run_dir is None:  # a run without a run directory: nothing to write
            return
        path = run_dir / FILE
        try:
            stopped = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):  # none yet, or cut short by a kill
            stopped = {}
        if not isinstance(stopped, dict):
            stopped = {}
        stopped[stage.name] = epoch
        tmp = path.with_name(f".{FILE}.tmp")
        tmp.write_text(json.dumps(stopped, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)  # never a half-written file
