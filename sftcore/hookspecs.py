"""The hooks a plugin may implement.

One ``register_<kind>(register)`` hook per kind of component in the kinds table
(``sftcore._plugins.kinds``; tests/test_architecture.py checks that the two agree), each receiving
``register(name, factory, description=None, override=False)``, which adds one component.
``factory`` is a callable or a lazy ``"module:attr"`` string, so that a plugin can register
components without importing torch (``sft list`` and ``sft --help`` stay fast). The contract of
each kind's factory and object is in ``sftcore.api``. ``register_commands(cli)`` adds ``sft``
commands.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("sftcore")
hookimpl = pluggy.HookimplMarker("sftcore")


@hookspec
def register_datasets(register):
    """Register datasets: ``factory(ctx: DatasetContext, **options) -> DataSplits``."""


@hookspec
def register_backbones(register):
    """Register backbones: ``factory(ctx: BackboneContext, **options) -> Backbone``."""


@hookspec
def register_regularizers(register):
    """Register regularizers: ``factory(**options) -> Regularizer``."""


@hookspec
def register_heads(register):
    """Register heads: ``factory(**options) -> HeadStrategy``."""


@hookspec
def register_param_groups(register):
    """Register param_groups: ``factory(**options) -> ParamGroups``."""


@hookspec
def register_optimizers(register):
    """Register optimizers: ``factory(param_groups: list[dict], **options) -> torch.optim.Optimizer``."""


@hookspec
def register_schedules(register):
    """Register schedules: ``factory(ctx: ScheduleContext, **options) -> Callable[[int], float]``."""


@hookspec
def register_callbacks(register):
    """Register callbacks: ``factory(**options) -> Callback``."""


@hookspec
def register_augmentations(register):
    """Register augmentations: ``factory(**options) -> Augmentation``."""


@hookspec
def register_adapters(register):
    """Register adapters: ``factory(**options) -> Adapter``."""


@hookspec
def register_scores(register):
    """Register scores: ``factory(**options) -> Score``."""


@hookspec
def register_commands(cli):
    """Add commands to ``sft``: ``cli`` is its click group (``@cli.command()``)."""
