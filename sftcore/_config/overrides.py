"""``--set key.path=value`` overrides applied to a raw config, and configs made plain for YAML."""

from __future__ import annotations

import copy
import os
from typing import Any

from sftcore._fileio.yaml_reader import YamlRefused, parse_yaml
from sftcore.errors import ConfigError, show


def parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {show(text)} must look like key.path=value, e.g. finetune.epochs=5")
    try:
        parsed = parse_yaml(value) if value.strip() else None
    except YamlRefused as exc:
        raise ConfigError(f"--set {show(key.strip())}: the value is refused: {exc}") from None
    except yaml.YAMLError as exc:
        if "appears twice" in str(getattr(exc, "problem", "")):  # not a plain string either: say so
            raise ConfigError(f"--set {show(key.strip())}: {getattr(exc, 'problem', exc)}") from None
        parsed = value  # not YAML: the text itself (`--set name=a: b`)
    return key.strip().split("."), parsed


def apply_override(config: dict, path: list[str], value: Any) -> None:
    node: Any = config
    for i, part in enumerate(path[:-1]):
        nxt = _child(node, part, path[: i + 1])
        if nxt is None or isinstance(nxt, str):
            # `backbone=lenet` style shorthand becomes a mapping once a sub-key is set
            nxt = {"name": nxt} if isinstance(nxt, str) else {}
            _set(node, part, nxt, path[: i + 1])
        node = nxt
    _set(node, path[-1], value, path)


def _child(node: Any, part: str, where: list[str]) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if isinstance(node, dict):
        return node.get(part)
    raise ConfigError(f"--set {'.'.join(where)}: '{'.'.join(where[:-1])}' is not a mapping")


def _set(node: Any, part: str, value: Any, where: list[str]) -> None:
    if isinstance(node, list):
        node[_index(node, part, where)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"--set {'.'.join(where)}: '{'.'.join(where[:-1])}' is not a mapping")


def _index(node: list, part: str, where: list[str]) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"--set {'.'.join(where)}: '{part}' is not an index of a list of {len(node)}")
    return int(part)


def _plain(value: Any) -> Any:
    """A deep copy in YAML's own types: paths become strings, tuples lists (the config is saved as YAML)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return copy.deepcopy(value)
