"""Option checks shared by the built-in augmentations: one line naming the option; sftcore puts the
config path (``config: finetune.augment[0]: ``) in front."""

from __future__ import annotations

import math

from sftcore.errors import ConfigError, show


def number(
    value, name: str, low: float | None = None, high: float | None = None, low_open: bool = False, what: str = ""
) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (low is None or value > low or (value == low and not low_open)) and (high is None or value <= high)
    if not ok:
        raise ConfigError(f"{name} must be {what or 'a number'}, got {show(value)}")
    return float(value)


def probability(value, name: str = "p") -> float:
    return number(value, name, 0.0, 1.0, what="a probability from 0 to 1")


def pair(value, name: str, low: float, high: float | None, low_open: bool, what: str) -> tuple[float, float]:
    """A ``[min, max]`` pair of numbers in a range, min <= max."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{name} must be a [min, max] pair of {what}, got {show(value)}")
    a, b = (number(v, name, low, high, low_open, what=f"a [min, max] pair of {what}") for v in value)
    if a > b:
        raise ConfigError(f"{name} must be [min, max] with min <= max, got {show(list(value))}")
    return a, b


def integer(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {span}, got {show(value)}")
    return value
