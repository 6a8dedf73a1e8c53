"""Which parameters a weight penalty covers: conv/linear kernels by default, as in the L2-SP authors' code."""

from __future__ import annotations

import fnmatch

from sftcore.errors import ConfigError

CHOICES = ("weights", "all")


def strength(value, key: str, name: str) -> float:
    """alpha, beta: a non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"config: regularizer {name}: {key} must be a number >= 0, got {value!r}")
    return float(value)


def check(params: str, name: str) -> None:
    if params not in CHOICES:
        raise ConfigError(f"config: regularizer {name}: params must be 'weights' (conv/linear kernels, "
                          f"no norm layers or biases) or 'all', got {params!r}")


def selected(named_parameters, params: str, match: str | None):
    """``(name, parameter)`` pairs: kernels (ndim > 1) unless ``params == 'all'``, filtered by a glob."""
    for name, p in named_parameters:
        if params == "weights" and p.ndim <= 1:
            continue
        if match is not None and not fnmatch.fnmatchcase(name, match):
            continue
        yield name, p
