"""The public plugin API: what a component's factory returns and what it is handed.

Importing this module does not import torch, so a plugin module may import it at the top
and still keep ``sft list`` fast. Tensors and modules appear in annotations only. The classes live in
sftcore._plugins.contracts (so that the core imports them from below); this module is their public face.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._data.images import (  # noqa: F401
    decode_image,
    fits_in_memory,
    image_shape_for,
    images_from_files,
    splits_from_files,
    stratified_split,
)
from ._fileio.reader import open_image  # noqa: F401  (re-exported)
from ._fileio.reader import read_text as _read_text
from ._plugins.contracts import (  # noqa: F401  (re-exported)
    MAX_SEED,
    STAGES,
    Adapter,
    Augment,
    Augmentation,
    AugmentBatch,
    Backbone,
    BackboneContext,
    Callback,
    Checkpoint,
    DatasetContext,
    DataSplits,
    FileSet,
    HeadStrategy,
    ImageSet,
    ParamGroups,
    Regularizer,
    RunInfo,
    ScheduleContext,
    Score,
    StageInfo,
    Step,
    TrainContext,
    check_option,
    fit_logistic,
    freeze,
    suggest,
    unfreeze,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._train.model import TransferModel

__all__ = [
    "as_checkpoint",
    "check_run_file",
    "Augment",
    "ImageSet",
    "FileSet",
    "DataSplits",
    "DatasetContext",
    "BackboneContext",
    "Backbone",
    "TrainContext",
    "Step",
    "Regularizer",
    "HeadStrategy",
    "freeze",
    "unfreeze",
    "Checkpoint",
    "read_checkpoint",
    "check_option",
    "fit_logistic",
    "open_image",
    "read_text",
    "decode_image",
    "image_shape_for",
    "images_from_files",
    "splits_from_files",
    "fits_in_memory",
    "stratified_split",
    "suggest",
    "ParamGroups",
    "ScheduleContext",
    "Callback",
    "RunInfo",
    "StageInfo",
    "TransferModel",
    "Augmentation",
    "AugmentBatch",
    "Score",
    "Adapter",
]


def __getattr__(name: str):
    """``TransferModel`` (what ``ctx.model`` is) without importing torch when this module is imported."""
    if name == "TransferModel":
        from ._train.model import TransferModel

        return TransferModel
    raise AttributeError(f"module 'sftcore.api' has no attribute {name!r}")


def read_text(path, what: str) -> str:
    """A text file a plugin did not write (a manifest table, an annotation list): a regular file of at most
    64 MiB, UTF-8; anything else is one line naming ``what``."""
    return _read_text(path, what)


def read_checkpoint(path: str) -> Checkpoint:
    """Read a sftcore model file, so that a backbone can start from an earlier run's weights."""
    from ._rundir import checkpoints

    state = checkpoints.read_model_file(path, "config: weights file", "use checkpoints/<stage>.pt from an earlier run")
    parts = checkpoints.as_checkpoint(state)
    if parts is None:
        return Checkpoint({}, {}, state.get("classes"), state.get("mean"), state.get("std"))
    return parts


def check_run_file(value: Any, where: str) -> str:
    """A file a component writes into the run directory, as a user named it (a callback's ``path`` option):
    a relative path inside the run directory, none of the run's own files (config.yaml, metrics.jsonl, ...);
    else one line. Call it from ``validate_options`` so a bad path fails before anything trains."""
    from ._rundir import layout

    return layout.check_run_file(value, where)


def as_checkpoint(raw: Any) -> Checkpoint | None:
    """The parts of a sftcore model file that is already loaded (``torch.load``), or None when ``raw`` is not one:
    a backbone plugin that reads weights files of several kinds asks this instead of parsing sftcore's format."""
    from ._rundir import checkpoints

    return checkpoints.as_checkpoint(raw)
