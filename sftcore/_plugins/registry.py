"""Components by kind and name, each tagged with the plugin that registered it."""

from __future__ import annotations

import builtins
import fnmatch
import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sftcore.errors import ConfigError, PluginError, show

from .contracts import suggest
from .kinds import BY_NAME, KINDS

SINGULAR = {name: kind.singular for name, kind in BY_NAME.items()}


@dataclass
class Component:
    kind: str
    name: str
    factory: Callable[..., Any] | str
    plugin: str
    description: str
    override: bool = False  # registered to replace a component of another plugin

    def load(self) -> Callable[..., Any]:
        """Resolve a lazy ``"module:attr"`` factory (imports happen here, not at listing)."""
        if isinstance(self.factory, str):
            module, _, attr = self.factory.partition(":")
            try:
                obj: Any = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as exc:
                raise PluginError(
                    f"{SINGULAR[self.kind]} '{self.name}' of plugin '{self.plugin}' cannot be "
                    f"loaded from '{self.factory}': {type(exc).__name__}: {exc}"
                ) from None
            self.factory = obj
        assert not isinstance(self.factory, str)
        return self.factory

    def _option_params(self) -> list[inspect.Parameter]:
        """The factory's parameters less the context argument a kind's factory takes first."""
        params = list(inspect.signature(self.load()).parameters.values())
        if (
            BY_NAME[self.kind].context
            and params
            and params[0].kind
            in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            )
        ):
            params = params[1:]
        return params

    def option_names(self) -> tuple[list[str], bool]:
        """The keyword options the factory accepts, and whether it takes ``**kwargs``."""
        params = self._option_params()
        names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return names, any(p.kind is p.VAR_KEYWORD for p in params)

    def options(self) -> list[dict]:
        """Each keyword option: name, default (absent when required) and annotation, in signature order."""
        out = []
        for p in self._option_params():
            if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                continue
            option = {"name": p.name}
            if p.default is not p.empty:
                option["default"] = p.default
            if p.annotation is not p.empty:
                option["type"] = (
                    p.annotation
                    if isinstance(p.annotation, str)
                    else getattr(p.annotation, "__name__", str(p.annotation))
                )
            out.append(option)
        return out

    def defaults(self) -> dict:
        """The options that have defaults, with them: what a resolved config fills in."""
        return {o["name"]: o["default"] for o in self.options() if "default" in o}

    def doc(self) -> str:
        """The factory's whole docstring (`sft list KIND NAME`), or the one-line description."""
        factory = self.load()
        while isinstance(factory, functools.partial):
            factory = factory.func
        return inspect.cleandoc(factory.__doc__) if factory.__doc__ else self.description

    def check_options(self, options: dict, where: str) -> None:
        names, open_ended = self.option_names()
        if open_ended:
            return
        for key in options:
            if key not in names:
                raise ConfigError(
                    f"{where}: {SINGULAR[self.kind]} '{self.name}' has no option {show(key)}"
                    f"{suggest(key, names)}; its options are: {', '.join(names) or '(none)'}"
                )

    def validate(self, options: dict, where: str) -> None:
        """Run the factory's ``validate_options(where, **options)``, if it has one (sftcore.api.check_option):
        bad option values of datasets and backbones then fail when the config is resolved, not
        after pretraining when the finetune dataset is built."""
        check = getattr(self.load(), "validate_options", None)
        if callable(check):
            check(where, **options)

    def create(self, *args: Any, where: str = "", **options: Any) -> Any:
        self.check_options(options, where or f"{SINGULAR[self.kind]} {self.name}")
        return self.load()(*args, **options)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "plugin": self.plugin, "description": self.description}


def describe(factory: Any, description: str | None) -> str:
    """The first line of the explicit description, else of the factory's own docstring (not inherited)."""
    if not description and not isinstance(factory, str):
        while isinstance(factory, functools.partial):
            factory = factory.func
        description = factory.__doc__
    if not description or not description.strip():
        return ""
    return description.strip().splitlines()[0].strip()


@dataclass
class Registry:
    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def register(
        self, kind: str, plugin: str, name: str, factory, description: str | None = None, override: bool = False
    ) -> Component:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}' registered a {SINGULAR[kind]} with an empty or non-string name")
        if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
            raise PluginError(
                f"plugin '{plugin}' registered {SINGULAR[kind]} '{name}' with a factory that is neither "
                "callable nor a 'module:attr' string"
            )
        text = describe(factory, description)
        if not text:
            raise PluginError(f"plugin '{plugin}' registered {SINGULAR[kind]} '{name}' without a description")
        existing = self.components[kind].get(name)
        if existing is not None and existing.override and not override:
            return existing  # the overriding plugin was called first: it wins whatever the order
        if existing is not None and (not override or existing.override):
            raise PluginError(
                f"{SINGULAR[kind]} '{name}' is registered by both plugin '{existing.plugin}' and plugin "
                f"'{plugin}'; rename one, or pass override=True in the one meant to replace the other"
            )
        component = Component(kind, name, factory, plugin, text, override)
        self.components[kind][name] = component
        return component

    def get(self, kind: str, name: str) -> Component:
        try:
            return self.components[kind][name]
        except KeyError:
            names = sorted(self.components[kind])
            raise ConfigError(
                f"unknown {SINGULAR[kind]} {show(name)}{suggest(name, names)}; available: "
                f"{', '.join(names) or '(none)'} (see `sft list {kind}`)"
            ) from None

    def list(self, kind: str | None = None, pattern: str | None = None) -> dict[str, list[Component]]:
        kinds = [kind] if kind else list(KINDS)
        out = {}
        for k in kinds:
            items = sorted(self.components[k].values(), key=lambda c: c.name)
            if pattern:
                items = [c for c in items if fnmatch.fnmatchcase(c.name, pattern)]
            out[k] = items
        return out

    def by_plugin(self, plugin: str) -> dict[str, builtins.list[str]]:
        return {k: sorted(c.name for c in v.values() if c.plugin == plugin) for k, v in self.components.items()}
