"""The ``tensorboard`` callback: epoch scalars through ``torch.utils.tensorboard``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from sftcore.api import Callback, RunInfo, StageInfo
from sftcore.errors import ConfigError, show

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# record key -> scalar tag
SCALARS = (
    ("train_loss", "train/loss"),
    ("train_accuracy", "train/accuracy"),
    ("val_loss", "val/loss"),
    ("val_accuracy", "val/accuracy"),
    ("lr", "lr"),
    ("penalty", "penalty"),
)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TensorBoardLog(Callback):
    """TensorBoard scalars per epoch (step = epoch), one log folder per stage: ``tensorboard --logdir``.

    Tags: ``train/loss``, ``train/accuracy``, ``val/loss`` and ``val/accuracy`` (when the stage has
    validation data), ``lr``, and ``penalty`` (with regularizers). By default the folders are
    ``<run directory>/tensorboard/<stage>`` (``finetune``, ``finetune-seed1``, ...). With ``log_dir``
    they are ``<log_dir>/<run directory's name>/<stage>``, so that several runs can share one
    ``log_dir``; a relative ``log_dir`` is relative to the current directory. Every stage's writer
    starts with ``purge_step`` = the first epoch it trains, so a resumed stage discards the events
    of the epochs it trains again, and a stage run afresh those of an older run. A run without a run
    directory writes nothing. Needs the ``tensorboard`` package (``pip install 'sftcore[tensorboard]'``).
    """

    def __init__(self, log_dir: str | None = None):
        self.validate_options("config: callback tensorboard", log_dir)
        self.log_dir = log_dir
        self.writers: dict[str, SummaryWriter] = {}

    @staticmethod
    def validate_options(where: str, log_dir: str | None = None) -> None:
        if log_dir is not None and (not isinstance(log_dir, str) or not log_dir.strip() or "\0" in log_dir):
            raise ConfigError(f"{where}.log_dir must be a folder path or null, got {show(log_dir)}")
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("callback tensorboard needs the tensorboard package: pip install 'sftcore[tensorboard]'")

    def folder(self, stage: StageInfo) -> Path | None:
        """Where the stage's events go (None: nowhere)."""
        run_dir = stage.run.run_dir if stage.run is not None else None
        if run_dir is None:
            return None
        if self.log_dir is None:
            return Path(run_dir) / "tensorboard" / stage.name
        return Path(self.log_dir).expanduser() / Path(run_dir).name / stage.name

    # ------------------------------------------------------------------ events
    def on_stage_start(self, stage: StageInfo) -> None:
        self._close(stage.name)
        folder = self.folder(stage)
        if folder is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        # events at steps >= purge_step in the folder's older files are discarded by TensorBoard
        self.writers[stage.name] = SummaryWriter(str(folder), purge_step=len(stage.history) + 1)

    def on_epoch_end(self, stage: StageInfo, record: dict) -> None:
        writer = self.writers.get(stage.name)
        if writer is None:
            return
        epoch = int(record.get("epoch", len(stage.history)))
        for key, tag in SCALARS:
            value = record.get(key)
            if _number(value):
                writer.add_scalar(tag, float(value), global_step=epoch)
        writer.flush()  # an epoch shows up at once, and a kill loses nothing already logged

    def on_stage_end(self, stage: StageInfo, result: dict) -> None:
        self._close(stage.name)

    def on_run_end(self, run: RunInfo, summary: dict) -> None:
        for name in list(self.writers):
            self._close(name)

    def _close(self, name: str) -> None:
        writer = self.writers.pop(name, None)
        if writer is not None:
            writer.close()
