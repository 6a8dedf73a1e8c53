"""Which parameters a weight penalty covers: conv/linear kernels by default, as in the L2-SP authors' code."""

from __future__ import annotations

import fnmatch
import math

from sftcore.errors import ConfigError, show

CHOICES = ("weights", "all")


def strength(value, key: str, name: str) -> float:
    """alpha, beta: a non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:  # nan fails too
        raise ConfigError(f"config: regularizer {name}: {key} must be a number >= 0 (finite), got {show(value)}")
    return float(value)


def check(params: str, name: str, match: str | None = None) -> None:
    """``params`` and ``match``, checked when the config is resolved (the regularizer is built then)."""
    if params not in CHOICES:
        raise ConfigError(
            f"config: regularizer {name}: params must be 'weights' (conv/linear kernels, "
            f"no norm layers or biases) or 'all', got {show(params)}"
        )
    if match is not None and not isinstance(match, str):
        raise ConfigError(
            f"config: regularizer {name}: match must be a glob of parameter names such as "
            f"'backbone.*', got {show(match)}"
        )


def selected(named_parameters, params: str, match: str | None):
    """``(name, parameter)`` pairs: kernels (ndim > 1) unless ``params == 'all'``, filtered by a glob."""
    for name, p in named_parameters:
        if params == "weights" and p.ndim <= 1:
            continue
        if match is not None and not fnmatch.fnmatchcase(name, match):
            continue
        yield name, p
