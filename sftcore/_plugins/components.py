"""Components from their config entries: checked when a config is resolved, built when a run needs
them, by the same functions. A factory's ConfigError gets the config path in front, so a plugin
need not know where it was configured."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any

from sftcore.errors import ConfigError, OptionError


def entry(value: Any, path: str) -> dict:
    """A component is `name` or a mapping with a `name` key plus its options."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):
        if not isinstance(value.get("name"), str):
            raise ConfigError(f"config: {path} needs a 'name' (a string), e.g. {path}: {{name: ...}}")
        return dict(value)
    kind = "null" if value is None else type(value).__name__
    raise ConfigError(f"config: {path} must be a name or a mapping with 'name', got {kind}")


def options(value: dict, runner_keys=()) -> dict:
    """The options a factory receives: everything but ``name`` (and keys the runner consumes)."""
    return {k: v for k, v in value.items() if k != "name" and k not in runner_keys}


@contextmanager
def located(path: str):
    """A ConfigError raised inside gets ``config: <path>: `` in front, unless it already names a place."""
    try:
        yield
    except OptionError as exc:  # check_option without where: the option, named under the entry's path
        raise ConfigError(f"config: {path}.{exc.option} {exc.problem}") from None
    except ConfigError as exc:
        text = str(exc)
        if text.startswith("config:"):
            raise
        raise ConfigError(f"config: {path}: {text}") from None


def lookup(registry, kind: str, name: str, path: str):
    with located(path):
        return registry.get(kind, name)


def check(value: Any, kind: str, path: str, registry, *, fill: bool = False, runner_keys=()) -> dict:
    """The entry with its name and options checked against the factory (``fill``: every option with a
    default written out, as a resolved optimizer shows its lr); without a registry, only its shape."""
    value = entry(value, path)
    if registry is None:
        return value
    comp = lookup(registry, kind, value["name"], path)
    given = options(value, runner_keys)
    comp.check_options(given, f"config: {path}")
    with located(path):
        comp.validate(given, f"config: {path}")
    if fill:
        value = {"name": value["name"], **copy.deepcopy(comp.defaults()), **given}  # never the factory's own list
    return value


def build(registry, kind: str, value: dict, path: str, *args: Any, runner_keys=()) -> Any:
    """The object the entry describes: its factory called with ``args`` (the kind's context) and the options,
    checked against the kind's contract where sftcore.api declares a class for it (before anything trains:
    heads, regularizers and param_groups are built when the config is resolved)."""
    comp = lookup(registry, kind, value["name"], path)
    with located(path):
        made = comp.create(*args, where=f"config: {path}", **options(value, runner_keys))
    contract = _contract(kind)
    if contract is not None and not isinstance(made, contract):
        from sftcore.errors import PluginError

        raise PluginError(
            f"{kind[:-1] if kind != 'param_groups' else kind} '{comp.name}' (plugin '{comp.plugin}') returned "
            f"{type(made).__name__}, not sftcore.api.{contract.__name__} ({path})"
        )
    return made


def _contract(kind: str) -> type | None:
    """The class a factory of ``kind`` must return (the others: checked where they are used, as for datasets)."""
    from . import contracts

    return {
        "regularizers": contracts.Regularizer,
        "heads": contracts.HeadStrategy,
        "param_groups": contracts.ParamGroups,
        "scores": contracts.Score,
        "adapters": contracts.Adapter,
    }.get(kind)


def build_augmentation(registry, value: Any, path: str):
    """One augmentation, checked to be an ``sftcore.api.Augmentation`` (the loop reads its attributes)."""
    from sftcore.errors import PluginError

    from .contracts import Augmentation

    value = entry(value, path)
    made = build(registry, "augmentations", value, path)
    if not isinstance(made, Augmentation):
        comp = registry.get("augmentations", value["name"])
        raise PluginError(
            f"augmentation '{comp.name}' (plugin '{comp.plugin}') returned {type(made).__name__}, "
            f"not an sftcore.api.Augmentation ({path})"
        )
    return made


def build_backbone(entry: dict, registry, seed: int, random_init: bool = False):
    """The backbone a config entry describes, its random init drawn from ``seed``; `sft predict` rebuilds a
    run's model with it too."""
    import torch

    from sftcore.errors import PluginError

    from .contracts import Backbone, BackboneContext

    torch.manual_seed(seed)
    backbone = build(registry, "backbones", entry, "backbone", BackboneContext(seed=seed, random_init=random_init))
    if not isinstance(backbone, Backbone):
        comp = registry.get("backbones", entry["name"])
        raise PluginError(
            f"backbone '{comp.name}' (plugin '{comp.plugin}') returned "
            f"{type(backbone).__name__}, not sftcore.api.Backbone"
        )
    return backbone
