"""Option checks shared by the built-in optimizers and schedules (no torch)."""

from __future__ import annotations

from typing import Any

from sftcore.api import check_option
from sftcore.errors import ConfigError, show


def number(
    where: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite float in range (``check_option``); ``high_open`` makes the upper bound exclusive."""
    if not high_open or high is None:
        return check_option(name, value, float, low=low, high=high, low_open=low_open, where=where)
    try:
        checked = check_option(name, value, float, low=low, low_open=low_open, where=where)
    except ConfigError:
        checked = None
    if checked is None or checked >= high:
        low_text = f"{'>' if low_open else '>='} {low} and " if low is not None else ""
        raise ConfigError(f"{where}.{name} must be a finite number {low_text}< {high}, got {show(value)}")
    return checked


def betas(where: str, value: Any) -> list[float]:
    """Adam's (beta1, beta2): two finite numbers, each in [0, 1)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{where}.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {show(value)}")
    return [number(where, f"betas[{i}]", b, low=0.0, high=1.0, high_open=True) for i, b in enumerate(value)]
