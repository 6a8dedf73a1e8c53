"""What a run writes besides checkpoints: metrics.jsonl, predictions/<stage>.json, and the lines it prints."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sftcore._fileio import storage
from sftcore._plugins.contracts import Callback, StageInfo

from . import layout

if TYPE_CHECKING:  # pragma: no cover
    import torch


class MetricsLog:
    """``metrics.jsonl``: one JSON line per epoch per stage."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            storage.append_text(path, "")

    def write(self, record: dict) -> None:
        if self.path is not None:
            storage.append_text(self.path, json.dumps(record) + "\n")

    def keep(self, stage: str, epochs: int) -> None:
        """Drop ``stage``'s lines after epoch ``epochs`` (and any line cut short by a kill): a resumed
        stage writes them again, so each epoch appears once."""
        if self.path is None:
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("stage") != stage or record.get("epoch", 0) <= epochs:
                kept.append(line + "\n")
        storage.write_text(self.path, "".join(kept))


def _six_decimals(probabilities: torch.Tensor) -> list[list[float]]:
    """Probabilities cut (not rounded) to 6 decimals: the file stays small, and an example's top-k
    never sums above 1, as rounding each of them up could make it."""
    return [[math.floor(p * 1e6) / 1e6 for p in row] for row in probabilities.double().tolist()]


def write_predictions(run_dir: Path, tag: str, classes: list[str], ev: dict) -> None:
    """predictions/<tag>.json, for `sft plot`'s confusion matrix, top-5 accuracy and calibration."""
    storage.make_dir(run_dir / layout.PREDICTIONS)
    storage.write_json(
        layout.predictions_file(run_dir, tag),
        {
            "stage": tag,
            "classes": classes,
            "targets": ev["targets"].tolist(),
            "predicted": ev["predicted"].tolist(),
            # the k = min(5, classes) most probable classes of each example: top-5 accuracy, calibration
            "top_k": ev["top_k"].tolist(),
            "top_k_probability": _six_decimals(ev["top_k_probability"]),
        },
        indent=None,
    )


def epoch_line(stage: StageInfo, record: dict) -> str:
    """One epoch as one line: stage, epoch, losses, accuracies, seconds."""
    parts = [
        f"{stage.name} epoch {record['epoch']}/{stage.epochs}:",
        f"loss {record['train_loss']:.4f}",
        f"train_acc {record['train_accuracy']:.3f}",
    ]
    if record.get("val_loss") is not None:
        parts += [f"val_loss {record['val_loss']:.4f}", f"val_acc {record['val_accuracy']:.3f}"]
    return " ".join(parts) + f" ({record['seconds']:.1f} s)"


class EpochLines(Callback):
    """Prints one line per epoch through ``echo`` (the CLI: to stderr, below the progress bar if any)."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo

    def on_epoch_end(self, stage: StageInfo, record: dict) -> None:
        self.echo(epoch_line(stage, record))
