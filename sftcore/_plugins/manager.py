"""The one PluginManager: entry-point discovery, load isolation, and the component registry.

Every plugin, the built-ins included, comes from the ``sftcore`` entry-point group. A plugin
that fails to import or register becomes one warning line and an entry in ``sft plugins``;
``SFTCORE_STRICT_PLUGINS=1`` makes it fatal. ``SFTCORE_LOAD_PLUGINS=a,b`` loads only the
named third-party plugins (entry-point or distribution names; empty string: none).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from sftcore import hookspecs
from sftcore.errors import PluginError

from .kinds import KIND_TABLE
from .registry import Registry, suggest

GROUP = "sftcore"
HOOKS = {kind.name: kind.hook for kind in KIND_TABLE}
OTHER_HOOKS = ("register_commands",)

pm = pluggy.PluginManager("sftcore")
pm.add_hookspecs(hookspecs)


@dataclass
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self, registry: Registry | None = None) -> dict:
        out = {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "components": registry.by_plugin(self.name) if registry else {},
            "error": "; ".join(self.errors) or None,
        }
        return out


_infos: dict[str, PluginInfo] = {}
_loaded = False
_registry: Registry | None = None


def _strict() -> bool:
    return os.environ.get("SFTCORE_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes", "on")


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _report(info: PluginInfo, message: str, consequence: str = "continuing without it") -> None:
    message = " ".join(message.split())  # one line, whatever the exception text looked like
    if message in info.errors:  # the registry is rebuilt after plugin changes: say it once
        return
    info.errors.append(message)
    if _strict():
        raise PluginError(f"plugin '{info.name}' {message} (SFTCORE_STRICT_PLUGINS is set)")
    print(f"sft: warning: plugin '{info.name}' {message}; {consequence} (see `sft plugins`)", file=sys.stderr)


def _check_hook_names(info: PluginInfo, plugin: Any) -> None:
    """pluggy ignores a misspelt hook; we report it (pytest does too, llm and datasette don't)."""
    known = {*HOOKS.values(), *OTHER_HOOKS}
    for attr in dir(plugin):
        if pm.parse_hookimpl_opts(plugin, attr) is None:
            continue
        if attr in known:
            info.hooks.append(attr)
        else:
            _report(info, f"implements unknown hook '{attr}'{suggest(attr, known)}", "ignoring that hook")


def register_plugin(
    plugin: Any, name: str, distribution: str | None = None, version: str | None = None, builtin: bool = False
) -> PluginInfo:
    """Register a plugin object (a module or instance with ``@hookimpl`` functions)."""
    global _registry
    info = PluginInfo(name, distribution, version, builtin)
    if pm.has_plugin(name):
        _report(info, f"could not be registered: the name '{name}' is taken by another plugin")
        return info
    _infos[name] = info
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # pluggy validation: bad hook arguments, duplicate name
        _report(info, f"could not be registered: {type(exc).__name__}: {exc}")
        return info
    _check_hook_names(info, plugin)
    _registry = None
    return info


def unregister_plugin(name: str) -> None:
    global _registry
    if pm.has_plugin(name):
        pm.unregister(name=name)
    _infos.pop(name, None)
    _registry = None


def _wanted(ep: metadata.EntryPoint, dist_name: str | None) -> bool:
    allow = os.environ.get("SFTCORE_LOAD_PLUGINS")
    if allow is None:
        return True
    names = {_norm(n) for n in allow.split(",") if n.strip()}
    return _norm(ep.name) in names or (dist_name is not None and _norm(dist_name) in names)


def load_plugins() -> None:
    """Load every plugin of the entry-point group once per process."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    seen: dict[str, str | None] = {}
    entry_points = sorted(
        metadata.entry_points(group=GROUP), key=lambda ep: (getattr(ep.dist, "name", "") != "sftcore", ep.name)
    )
    for ep in entry_points:
        dist = getattr(ep, "dist", None)
        dist_name = dist.name if dist else None
        if ep.name in seen:
            if seen[ep.name] != dist_name:  # the same distribution twice on sys.path is fine
                print(
                    f"sft: warning: entry point '{ep.name}' of {dist_name} is ignored: distribution "
                    f"{seen[ep.name]} already provides a plugin of that name",
                    file=sys.stderr,
                )
            continue
        seen[ep.name] = dist_name
        builtin = dist_name == "sftcore"
        if not builtin and not _wanted(ep, dist_name):
            continue
        version = dist.version if dist else None
        try:
            plugin = ep.load()
        except Exception as exc:
            info = PluginInfo(ep.name, dist_name, version, builtin)
            _infos[ep.name] = info
            _report(info, f"failed to import ({ep.value}): {type(exc).__name__}: {exc}")
            continue
        register_plugin(plugin, ep.name, dist_name, version, builtin)


def _each_plugin(hook_name: str):
    """``(info, caller)`` for every plugin implementing ``hook_name``: those marked ``tryfirst`` first,
    ``trylast`` last, and otherwise the built-ins, then the rest by name (not by when they were
    registered, so a clash always names the same winner). ``caller`` is pluggy's own hook caller
    narrowed to that one plugin: tracing and call monitoring see every call, and one plugin's failure
    is reported without losing the others' components."""
    impls = getattr(pm.hook, hook_name).get_hookimpls()

    def order(impl) -> tuple:
        info = _infos.get(impl.plugin_name)
        return (0 if impl.tryfirst else 2 if impl.trylast else 1, not (info and info.builtin), impl.plugin_name)

    names = [impl.plugin_name for impl in sorted(impls, key=order)]
    for name in names:
        others = [pm.get_plugin(n) for n in names if n != name]
        info = _infos.get(name) or PluginInfo(name)
        yield info, pm.subset_hook_caller(hook_name, remove_plugins=others)


def _build_registry() -> Registry:
    registry = Registry()
    for kind, hook_name in HOOKS.items():
        for info, caller in _each_plugin(hook_name):
            pending: list[tuple] = []

            def register(name, factory, description=None, override=False, _pending=pending):
                _pending.append((name, factory, description, override))

            try:
                caller(register=register)
            except Exception as exc:
                _report(info, f"raised in {hook_name}: {type(exc).__name__}: {exc}")
                continue
            for name, factory, description, override in pending:
                try:
                    registry.register(kind, info.name, name, factory, description, override)
                except PluginError as exc:
                    _report(info, f"could not register: {exc}", "skipped that component")
    return registry


def add_commands(cli) -> None:
    """Every plugin's ``register_commands(cli)``; a command may not replace a built-in one."""
    load_plugins()
    for info, caller in _each_plugin("register_commands"):
        before = dict(cli.commands)
        try:
            caller(cli=cli)
        except Exception as exc:
            _report(info, f"raised in register_commands: {type(exc).__name__}: {exc}")
        for name, command in before.items():
            if cli.commands.get(name) is not command:
                cli.commands[name] = command
                ours = getattr(command.callback, "__module__", "").startswith("sftcore.")
                _report(
                    info,
                    f"tried to replace the command 'sft {name}'",
                    "keeping sftcore's" if ours else "keeping the one registered first",
                )


def get_registry() -> Registry:
    """All registered components (loads plugins on first use)."""
    global _registry
    load_plugins()
    if _registry is None:
        _registry = _build_registry()
    return _registry


def plugin_info(name: str) -> PluginInfo | None:
    """The load record of the plugin registered as ``name``, if any."""
    return _infos.get(name)


def plugin_infos() -> list[dict]:
    registry = get_registry()
    return [info.as_dict(registry) for info in sorted(_infos.values(), key=lambda i: (not i.builtin, i.name))]
