"""sftcore: pretrain on a source task, finetune on a few-label target task, and say whether it helped.

Plugins implement the hooks in :mod:`sftcore.hookspecs` with :data:`hookimpl` and return the
objects described in :mod:`sftcore.api`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from ._inference.load import Model, Prediction
    from .api import Callback

__all__ = ["hookimpl", "run", "rank", "load", "Model", "Prediction", "__version__"]


def __getattr__(name: str):
    """``Model`` and ``Prediction`` (what ``load`` and ``Model.predict`` return) without importing torch here."""
    if name in ("Model", "Prediction"):
        from ._inference import load as module

        return getattr(module, name)
    raise AttributeError(f"module 'sftcore' has no attribute {name!r}")


def load(path: str | os.PathLike, stage: str | None = None, device: str = "cpu") -> Model:
    """A trained stage's model from a run directory (``stage``: default finetune, else baseline, else pretrain;
    ``finetune-seed1`` for another seed) or a model file ``checkpoints/<stage>.pt``, needing only the
    backbone's plugin: ``.module``, ``.classes``, ``.transform(images)``, ``.predict(images, top_k=5)``."""
    from ._inference.load import load as _load

    return _load(path, stage, device)


def run(
    config: dict | str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    progress: bool | None = None,
    resume: str | os.PathLike | None = None,
    force: bool = False,
    allow_config_change: bool = False,
    echo: Callable[[str], Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Run the pipeline a config describes (a dict, a YAML path, or None for the default); returns the summary.

    ``resume=RUN_DIR`` continues an interrupted run with its own config.yaml (edited since the run started:
    refused unless ``allow_config_change``, then recorded); ``force=True`` replaces an earlier run in ``out``.
    Nothing is printed unless ``echo`` is given: ``echo=print`` receives what `sft run` prints, one line
    per epoch included (``progress=True`` adds tqdm bars). ``callbacks`` are ``sftcore.api.Callback``
    objects told of every event after those of the config's ``callbacks:``.
    """
    from ._run.runner import run as _run

    return _run(
        config,
        out=out,
        overrides=overrides,
        progress=progress,
        resume=resume,
        force=force,
        allow_config_change=allow_config_change,
        echo=echo,
        epoch_echo=echo,
        callbacks=callbacks,
    )


def rank(
    config: dict | str | os.PathLike | None = None,
    *,
    candidates: Sequence[Any] = (),
    scores: Sequence[str] | str | None = None,
    by: str = "logme",
    out: str | os.PathLike | None = None,
    force: bool = False,
    seed: int | None = None,
    overrides: Sequence[str] = (),
    echo: Callable[[str], Any] | None = None,
    top: int | None = None,
) -> dict[str, Any]:
    """Rank candidate backbones on the config's finetune training split before any training (`sft rank`).
    With ``top``, also writes ``sweep.yaml`` (``sweep_file``), finetuning the ``top`` best: `sft sweep` runs it.

    ``candidates``: run directories, weights files, backbone names or entries (dicts, or YAML flow strings).
    Returns ``{by, scores, seed, target, rows, out}``, the rows best first by ``by``; writes rank.json and
    rank.csv into ``out`` (default a new folder under runs/). See docs/ranking.md.
    """
    from ._rank.rank import rank as _rank

    return _rank(
        config,
        candidates,
        overrides=overrides,
        scores=scores,
        by=by,
        out=out,
        force=force,
        seed=seed,
        echo=echo,
        top=top,
    )
