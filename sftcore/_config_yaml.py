"""Reading a config: strict YAML (no duplicate keys, no alias bombs, YAML 1.2 floats) and ``--set`` overrides."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError, show


# A config is a few hundred values. A document whose tree, with every alias expanded, holds more
# nodes than this is refused before it is built: a YAML alias bomb ("billion laughs") expands a few
# hundred bytes into billions of values, which then hang any code that walks or prints them.
MAX_YAML_NODES = 100_000


class YamlRefused(ConfigError):
    """A YAML document that is well-formed but refused: too large once aliases expand, or recursive."""


def _expanded_size(root) -> int:
    """How many nodes the document holds with every alias expanded, counted without expanding.

    Aliases share one node object, so the size is computed once per node (memoised) and the walk
    takes time linear in the text, however large the expansion. Stops as soon as the limit is passed.
    """
    import yaml

    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            sizes[id(node)] = 1 + sum(sizes.get(id(k), 0) for k in kids)
            if sizes[id(node)] > MAX_YAML_NODES:
                return sizes[id(node)]
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def _yaml_loader():
    """PyYAML's safe loader, strict: ``1e-3`` is a float (YAML 1.2) instead of a string, a key given
    twice in one mapping is an error (PyYAML keeps the last one silently), and a document that
    expands past MAX_YAML_NODES through aliases, or refers to itself, is refused before it is built."""
    import yaml

    class Loader(yaml.SafeLoader):
        def get_single_data(self):
            node = self.get_single_node()
            if node is None:
                return None
            if _recursive(node):
                raise YamlRefused("an alias refers to the mapping or list that contains it")
            if _expanded_size(node) > MAX_YAML_NODES:
                raise YamlRefused(f"with its aliases expanded it holds over {MAX_YAML_NODES:,} values (an alias "
                                  "bomb?); a config needs a few hundred")
            return self.construct_document(node)

        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {show(key)} appears twice in one mapping (first at line {seen[key]}); "
                        "keep one", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def _recursive(root) -> bool:
    """Whether a node contains itself (``a: &x [*x]``), which no config needs and no walk survives."""
    import yaml

    state: dict[int, bool] = {}  # False: on the current path; True: done
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            state[id(node)] = True
            continue
        if state.get(id(node)) is False:
            return True
        if id(node) in state:
            continue
        state[id(node)] = False
        stack.append((node, True))
        kids = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
        stack.extend((k, False) for k in kids)
    return False


def _parse(text: str, loader):
    """``yaml.load`` with PyYAML's failures that are not YAMLError (deep nesting, a huge integer) as one."""
    import yaml

    try:
        return yaml.load(text, Loader=loader)
    except RecursionError:
        raise YamlRefused("it nests mappings or lists too deeply") from None
    except ValueError as exc:  # int() of more digits than Python converts
        raise YamlRefused(f"a value cannot be read ({str(exc)[:80]})") from None


def load_yaml(path: str | os.PathLike) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found; pass an existing YAML file or omit it for the default")
    try:
        data = _parse(p.read_text(), _yaml_loader())
    except YamlRefused as exc:
        raise ConfigError(f"config file '{p}' is refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{p}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, not a {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {show(text)} must look like key.path=value, e.g. finetune.epochs=5")
    try:
        parsed = _parse(value, _yaml_loader()) if value.strip() else None
    except YamlRefused as exc:
        raise ConfigError(f"--set {show(key.strip())}: the value is refused: {exc}") from None
    except yaml.YAMLError as exc:
        if "appears twice" in str(getattr(exc, "problem", "")):  # not a plain string either: say so
            raise ConfigError(f"--set {show(key.strip())}: {exc.problem}") from None
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
