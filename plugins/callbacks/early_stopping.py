"""The ``early_stopping`` callback, decided from a stage's epoch history alone."""

from __future__ import annotations

import math

from sftcore.api import Callback, StageInfo, check_option
from sftcore.errors import ConfigError, show

MONITORS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
MODES = ("auto", "min", "max")
STAGES = ("pretrain", "finetune", "baseline")


class EarlyStopping(Callback):
    """Stop a stage when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``mode: auto`` minimises a monitor whose name contains ``loss`` and maximises the others. An
    epoch improves when its value beats the best so far by more than ``min_delta``; after
    ``patience`` epochs in a row without an improvement the stage ends (after that epoch). The
    decision is made from the stage's history alone, so a resumed stage stops exactly where the
    uninterrupted one would have. ``stages`` limits it to some of pretrain, finetune, baseline.
    It composes with the stage's ``select``: the epochs trained up to the stop are what ``select:
    best`` picks from, and ``select: last`` keeps the epoch it stopped at. Monitoring ``val_*``
    needs validation data in the stage (``dataset.val_fraction`` above 0).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        patience: int = 5,
        min_delta: float = 0.0,
        stages: list[str] | None = None,
    ):
        self.validate_options("config: callback early_stopping", monitor, mode, patience, min_delta, stages)
        self.monitor = monitor
        self.minimize = ("loss" in monitor) if mode == "auto" else mode == "min"
        self.patience = patience
        self.min_delta = float(min_delta)
        self.stages = None if stages is None else tuple(stages)

    @staticmethod
    def validate_options(
        where: str,
        monitor: str = "val_loss",
        mode: str = "auto",
        patience: int = 5,
        min_delta: float = 0.0,
        stages: list[str] | None = None,
    ) -> None:
        check_option("monitor", monitor, str, choices=MONITORS, where=where)
        check_option("mode", mode, str, choices=MODES, where=where)
        check_option("patience", patience, int, low=1, where=where)
        check_option("min_delta", min_delta, float, low=0.0, where=where)
        if stages is not None and (
            not isinstance(stages, list) or not stages or not all(isinstance(s, str) and s in STAGES for s in stages)
        ):
            raise ConfigError(
                f"{where}.stages must be null (every stage) or a non-empty list of "
                f"{', '.join(STAGES)}, got {show(stages)}"
            )

    def applies(self, stage: StageInfo) -> bool:
        return self.stages is None or stage.stage in self.stages

    def on_stage_start(self, stage: StageInfo) -> None:
        if self.applies(stage) and self.monitor.startswith("val_") and not stage.has_validation:
            raise ConfigError(
                f"config: callbacks early_stopping monitors {self.monitor} but stage {stage.stage} has no "
                f"validation data; set its dataset.val_fraction above 0, or monitor: "
                f"{self.monitor.replace('val_', 'train_', 1)}"
            )

    def epochs_without_improvement(self, history: list[dict]) -> int:
        """How many of the last epochs of ``history`` did not improve on the best before them."""
        best, since = None, 0
        for record in history:
            value = record.get(self.monitor)
            finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if finite and (
                best is None or (value < best - self.min_delta if self.minimize else value > best + self.min_delta)
            ):
                best, since = value, 0
            else:
                since += 1
        return since

    def on_epoch_end(self, stage: StageInfo, record: dict) -> None:
        if not self.applies(stage):
            return
        history = list(stage.history)
        if not history or history[-1].get("epoch") != record.get("epoch"):  # the loop appends it first
            history.append(record)
        if self.epochs_without_improvement(history) >= self.patience:
            stage.request_stop(
                f"early_stopping: {self.monitor} did not improve by more than {self.min_delta} "
                f"for {self.patience} epochs"
            )
