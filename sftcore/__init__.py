"""sftcore: pretrain on a source task, finetune on a few-label target task, and say whether it helped.

Plugins implement the hooks in :mod:`sftcore.hookspecs` with :data:`hookimpl` and return the
objects described in :mod:`sftcore.api`.
"""

from ._version import __version__
from .hookspecs import hookimpl

__all__ = ["hookimpl", "run", "load", "__version__"]


def load(path, stage=None, device="cpu"):
    """A trained stage's model from a run directory (``stage``: default finetune, else baseline, else pretrain;
    ``finetune-seed1`` for another seed) or a model file ``checkpoints/<stage>.pt``, needing only the
    backbone's plugin: ``.module``, ``.classes``, ``.transform(images)``, ``.predict(images, top_k=5)``."""
    from ._inference.load import load as _load

    return _load(path, stage, device)


def run(
    config=None,
    *,
    out=None,
    overrides=(),
    progress=None,
    resume=None,
    force=False,
    allow_config_change=False,
    echo=None,
    callbacks=(),
):
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
