"""The hooks a plugin may implement. Each receives a ``register`` callback.

``register(name, factory, description=None, override=False)`` adds one component.
``factory`` is a callable or a lazy ``"module:attr"`` string, so that a plugin can
register components without importing torch (``sft list`` and ``sft --help`` stay fast).
The contract of each kind's factory and object is in ``sftcore.api``.
"""

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
    """Register head-transfer strategies: ``factory(**options) -> HeadStrategy``."""
