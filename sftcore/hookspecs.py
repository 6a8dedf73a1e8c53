"""The hooks a plugin may implement.

One ``register_<kind>(register)`` hook per kind of component in ``sftcore._kinds`` (datasets,
backbones, regularizers, heads, param_groups, optimizers, schedules, callbacks, augmentations), each receiving
``register(name, factory, description=None, override=False)``, which adds one component.
``factory`` is a callable or a lazy ``"module:attr"`` string, so that a plugin can register
components without importing torch (``sft list`` and ``sft --help`` stay fast). The contract of
each kind's factory and object is in ``sftcore.api``. ``register_commands(cli)`` adds ``sft``
commands.
"""

import pluggy

from ._kinds import KIND_TABLE

hookspec = pluggy.HookspecMarker("sftcore")
hookimpl = pluggy.HookimplMarker("sftcore")


def _register_spec(kind):
    def spec(register):
        pass

    spec.__name__ = spec.__qualname__ = kind.hook
    spec.__doc__ = f"Register {kind.name}: ``{kind.contract}``."
    return hookspec(spec)


for _kind in KIND_TABLE:
    globals()[_kind.hook] = _register_spec(_kind)


@hookspec
def register_commands(cli):
    """Add commands to ``sft``: ``cli`` is its click group (``@cli.command()``)."""
