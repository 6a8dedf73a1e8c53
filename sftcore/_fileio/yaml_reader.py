"""Reading YAML that sftcore did not write: strict (no duplicate keys, no alias bombs, no self-reference, YAML 1.2
floats), every failure one line."""

from __future__ import annotations

import os
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from sftcore.errors import ConfigError, show

# A config is a few hundred values. A document whose tree, with every alias expanded, holds more
# nodes than this is refused before it is built: a YAML alias bomb ("billion laughs") expands a few
# hundred bytes into billions of values, which then hang any code that walks or prints them.
MAX_YAML_NODES = 100_000
MAX_YAML_BYTES = 1 << 20  # a config or sweep file is a few KB: a larger one is refused before it is parsed


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
        kids = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
            if isinstance(node, yaml.SequenceNode)
            else []
        )
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
                aliased = _has_alias(node)
                why = " with its aliases expanded" if aliased else ""
                raise YamlRefused(
                    f"it holds over {MAX_YAML_NODES:,} values{why}{' (an alias bomb?)' if aliased else ''}; "
                    "a config needs a few hundred"
                )
            return self.construct_document(node)

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {show(key)} appears twice in one mapping (first at line {seen[key]}); keep one",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def _has_alias(root) -> bool:
    """Whether some node appears twice in the tree (an alias): a large document without one is just large."""
    import yaml

    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return True
        seen.add(id(node))
        stack.extend(
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
            if isinstance(node, yaml.SequenceNode)
            else []
        )
    return False


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
        kids = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
            if isinstance(node, yaml.SequenceNode)
            else []
        )
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

    from .reader import read_text

    p = Path(path)
    if not p.exists() or p.is_dir():
        raise ConfigError(f"config file '{p}' not found; pass an existing YAML file or omit it for the default")
    text = read_text(p, "config file", limit=MAX_YAML_BYTES)  # a regular file, UTF-8, bounded: else one line
    try:
        data = _parse(text, _yaml_loader())
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


def parse_yaml(text: str):
    """One YAML value from text, read as strictly as a file (``--set`` values, sweep grids)."""
    return _parse(text, _yaml_loader())
