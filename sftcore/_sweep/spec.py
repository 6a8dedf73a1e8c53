"""The sweep file and its cells: a base config, a grid of ``--set`` keys to value lists, seeds.

Every cell's config is resolved before any cell runs, so a mistake in the grid costs one line and
no training. Cell names are stable (index, then the varied values), so a re-run finds its cells.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftcore._config import resolve as cfgmod
from sftcore._plugins.registry import suggest
from sftcore.errors import ConfigError, show

SWEEP_KEYS = ("name", "base", "grid", "seeds", "reference")
MAX_CELLS = 10_000  # a grid this large is a typo (a value list pasted twice), not an experiment
VALUE_CHARS = 40  # a varied value's share of a cell name; longer ones are cut and get a short hash


@dataclass
class Cell:
    """One grid point: an ordinary run directory ``cells/<name>`` with every seed of the sweep."""

    index: int
    name: str
    overrides: dict[str, Any]  # {grid key: value}, in grid order
    config: dict = field(repr=False, default_factory=dict)  # resolved

    def set_args(self) -> list[str]:
        """The overrides as `--set` would take them."""
        return [f"{key}={flow(value)}" for key, value in self.overrides.items()]


def flow(value: Any) -> str:
    """A value as YAML in one line that reads back as the same value (`--set` syntax)."""
    import yaml

    if isinstance(value, float) and "e" in repr(value) and "." not in repr(value).split("e")[0]:
        return repr(value).replace("e", ".0e")  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 as a float
    if isinstance(value, str) and value and value.strip() == value:
        try:
            if yaml.safe_load(value) == value and "#" not in value and ": " not in value:
                return value
        except yaml.YAMLError:
            pass
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return json.dumps(value)


@dataclass
class Sweep:
    name: str
    base: dict  # the base config as loaded (raw, not resolved)
    base_source: str | None  # the base file's absolute path, or None when inline
    grid: dict[str, list]
    seeds: Any = None
    reference: str | None = None
    source: Path | None = None

    def as_written(self) -> dict:
        """The sweep file with its base path made absolute (what sweep.yaml keeps)."""
        out: dict = {
            "name": self.name,
            "base": self.base_source or copy.deepcopy(self.base),
            "grid": copy.deepcopy(self.grid),
        }
        if self.seeds is not None:
            out["seeds"] = self.seeds
        if self.reference is not None:
            out["reference"] = self.reference
        return out

    def spec(self) -> dict:
        """What decides the cells: a sweep directory refuses a sweep whose spec differs."""
        return json.loads(json.dumps({"base": self.base, "grid": self.grid, "seeds": self.seeds}, default=str))


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"sweep {where}: {message}")


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"sweep file '{path}' not found; pass an existing YAML file")
    raw = cfgmod.load_yaml(path)
    unknown = [k for k in raw if k not in SWEEP_KEYS]
    if unknown:
        key = str(unknown[0])
        raise _fail(
            f"'{path}'", f"unknown key {show(key)}{suggest(key, SWEEP_KEYS)}; a sweep has {', '.join(SWEEP_KEYS)}"
        )
    return raw


def _base(raw: dict, path: Path) -> tuple[dict, str | None]:
    base = raw.get("base")
    if base is None:
        raise _fail(
            f"'{path}'",
            "base is missing; give base: a config mapping, or the path of a config file (relative to the sweep file)",
        )
    if isinstance(base, dict):
        return cfgmod.load(base), None
    if not isinstance(base, str):
        raise _fail(f"'{path}'", f"base must be a config mapping or a path, not {show(base)}")
    where = (path.parent / base).resolve()
    if not where.is_file():
        raise _fail(f"'{path}'", f"base '{base}' not found (looked for {where}); paths are relative to the sweep file")
    return cfgmod.load(where), str(where)


def _grid(raw: dict, path: Path) -> dict[str, list]:
    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise _fail(
            f"'{path}'",
            "grid must be a non-empty mapping of --set keys to lists of values, e.g. "
            "grid: {finetune.head: [reinit, lp_ft]}",
        )
    for key, values in grid.items():
        if not isinstance(key, str) or not key.strip() or "=" in key:
            raise _fail(f"'{path}'", f"grid key {show(key)} must be a --set key such as finetune.epochs")
        if not isinstance(values, list):
            raise _fail(
                f"'{path}'",
                f"grid key '{key}' must map to a list of values, not {show(values)}; "
                f"write {key}: [{json.dumps(values, default=str)}]",
            )
        if not values:
            raise _fail(f"'{path}'", f"grid key '{key}' has an empty list of values; give at least one value")
    cells = 1
    for values in grid.values():
        cells *= len(values)
    if cells > MAX_CELLS:
        raise _fail(f"'{path}'", f"the grid has {cells} cells, more than {MAX_CELLS}; make it smaller")
    stripped = [key.strip() for key in grid]
    twice = sorted({k for k in stripped if stripped.count(k) > 1})
    if twice:  # `finetune.epochs` and `finetune.epochs ` would be merged, one list of values lost
        raise _fail(f"'{path}'", f"grid key '{twice[0]}' is given twice (the copies differ only in spaces); keep one")
    if "seeds" in stripped and raw.get("seeds") is not None:
        raise _fail(
            f"'{path}'", "seeds is both a grid key and the sweep's own seeds:, which sets every cell's seeds; keep one"
        )
    return {key.strip(): list(values) for key, values in grid.items()}


def load_sweep(path, reference: str | None = None) -> Sweep:
    """The sweep file, checked (not yet expanded); ``reference`` replaces the file's own."""
    path = Path(path)
    raw = _read(path)
    base, base_source = _base(raw, path)
    grid = _grid(raw, path)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise _fail(
            f"'{path}'",
            f"name {show(name)} names the folder runs/sweeps/<name>-<time>: one folder name, "
            "no '/', '\\' or leading '.'",
        )
    ref = reference if reference is not None else raw.get("reference")
    if ref is not None and not isinstance(ref, str):
        raise _fail(f"'{path}'", f"reference must be a string such as 'finetune.head=reinit', not {show(ref)}")
    sweep = Sweep(name, base, base_source, grid, raw.get("seeds"), ref, path.resolve())
    _check_reference(sweep, "--reference" if reference is not None else f"sweep '{path}': reference")
    return sweep


def _check_reference(sweep: Sweep, where: str = "--reference") -> None:
    """Each `KEY=VALUE` of the reference must be about a grid key, and a grid key's value one of its values:
    anything else matches no cell, which would show only after every cell ran."""
    if sweep.reference is None:
        return
    try:
        from sftcore._analysis.aggregate import _matches, parse_reference
    except ImportError:  # the aggregation is not installed: nothing to compare with
        return
    for key, value in parse_reference(sweep.reference):
        related = [k for k in sweep.grid if key == k or key.startswith(k + ".") or k.startswith(key + ".")]
        if not related:
            raise ConfigError(
                f"{where} {show(sweep.reference)}: '{key}' is not a grid key"
                f"{suggest(key, list(sweep.grid))}; use one of {', '.join(sweep.grid)}"
            )
        if key in sweep.grid and not any(_matches(v, value) for v in sweep.grid[key]):
            raise ConfigError(
                f"{where} {show(sweep.reference)}: {flow(value)} is not among the grid's values "
                f"of {key}: {', '.join(flow(v) for v in sweep.grid[key])}"
            )


# --------------------------------------------------------------------------- cells
def short_keys(keys: list[str]) -> list[str]:
    """The shortest tails of the keys (list indices skipped) that still tell them apart: alpha, head."""
    parts = [[p for p in key.split(".") if not p.lstrip("-").isdigit()] or [key] for key in keys]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = [".".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return list(keys)


def value_text(value: Any) -> str:
    """A value as a short, filesystem-safe piece of a cell name."""
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, (int, float, str)):
        text = str(value)
    elif isinstance(value, list):
        text = "+".join(value_text(v) for v in value) or "none"
    elif isinstance(value, dict):
        rest = ",".join(f"{k}{value_text(v)}" for k, v in value.items() if k != "name")
        text = "_".join(t for t in (str(value.get("name", "")), rest) if t) or "none"
    else:
        text = str(value)
    text = re.sub(r"[^A-Za-z0-9._,+-]", "_", text).strip(".") or "_"
    if len(text) > VALUE_CHARS:
        digest = hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:6]
        text = f"{text[: VALUE_CHARS - 7]}~{digest}"
    return text


def cell_points(grid: dict[str, list]) -> list[tuple[str, dict]]:
    """(name, overrides) of every grid point: the product in file order, the last key varying fastest."""
    keys = list(grid)
    labels = short_keys(keys)
    points = list(itertools.product(*grid.values()))
    width = max(3, len(str(len(points) - 1)))
    out = []
    for index, values in enumerate(points):
        varied = "-".join(f"{label}={value_text(v)}" for label, v in zip(labels, values))
        out.append((f"{index:0{width}d}-{varied}", dict(zip(keys, copy.deepcopy(values)))))
    return out


def expand(sweep: Sweep, registry) -> list[Cell]:
    """Every cell with its resolved config; the first cell that does not resolve is one line."""
    cells = []
    for index, (name, overrides) in enumerate(cell_points(sweep.grid)):
        raw = copy.deepcopy(sweep.base)
        try:
            for key, value in overrides.items():
                path, _ = cfgmod.parse_override(f"{key}=null")
                cfgmod.apply_override(raw, path, copy.deepcopy(value))
            if sweep.seeds is not None:
                raw["seeds"] = copy.deepcopy(sweep.seeds)
            config = cfgmod.resolve(raw, registry)
        except ConfigError as exc:
            raise ConfigError(f"sweep cell {name}: {exc}") from None
        cells.append(Cell(index, name, overrides, config))
    return cells
