"""The built-in learning-rate schedules. Each factory returns ``factor(step)``: the multiple of every
group's lr at optimizer step ``step``, counted from 0 over the whole stage (``ctx.total_steps`` steps).

A warmup of ``warmup_epochs`` epochs (W steps) ramps linearly: ``factor(step) = (step + 1) / W`` for
``step < W``, so the first step already moves and the last warmup step reaches the full lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

from sftcore.api import ScheduleContext, check_option

from ._checks import number as _number

WHERE = "config: schedule"
MAX_STEP_SIZE = 1_000_000  # epochs between step-schedule drops, as the config's other bounds


def _warmup_epochs(where, warmup_epochs) -> int:
    return check_option("warmup_epochs", warmup_epochs, int, low=0, where=where)


def validate_warmup(where: str, warmup_epochs: int = 0) -> dict:
    """warmup_epochs an integer >= 0 (cosine and none)."""
    return {"warmup_epochs": _warmup_epochs(where, warmup_epochs)}


def validate_step(where: str, step_size: int = 10, gamma: float = 0.1, warmup_epochs: int = 0) -> dict:
    """step_size an integer from 1 to 1000000, gamma from 0 to 1, warmup_epochs an integer >= 0."""
    return {
        "step_size": check_option("step_size", step_size, int, low=1, high=MAX_STEP_SIZE, where=where),
        "gamma": _number(where, "gamma", gamma, low=0.0, high=1.0),
        "warmup_epochs": _warmup_epochs(where, warmup_epochs),
    }


def validate_one_cycle(
    where: str, pct_start: float = 0.25, div_factor: float = 25.0, final_div_factor: float = 1e4
) -> dict:
    """pct_start in (0, 1), div_factor and final_div_factor finite numbers > 0."""
    return {
        "pct_start": _number(where, "pct_start", pct_start, low=0.0, low_open=True, high=1.0, high_open=True),
        "div_factor": _number(where, "div_factor", div_factor, low=0.0, low_open=True),
        "final_div_factor": _number(where, "final_div_factor", final_div_factor, low=0.0, low_open=True),
    }


def validate_warmup_cosine(where: str, warmup_epochs: int = 1, min_factor: float = 0.0) -> dict:
    """warmup_epochs an integer >= 0, min_factor in [0, 1)."""
    return {
        "warmup_epochs": _warmup_epochs(where, warmup_epochs),
        "min_factor": _number(where, "min_factor", min_factor, low=0.0, high=1.0, high_open=True),
    }


def _warmed(ctx: ScheduleContext, warmup_epochs: int, after: Callable[[int], float]) -> Callable[[int], float]:
    """``(step + 1) / W`` for the first W = warmup_epochs * steps_per_epoch steps, then ``after(step)``."""
    warmup = warmup_epochs * ctx.steps_per_epoch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return after(step)

    return factor


def cosine(ctx: ScheduleContext, warmup_epochs: int = 0) -> Callable[[int], float]:
    """Half a cosine from 1 to 0 over the stage, after the linear warmup.

    ``factor = 0.5 * (1 + cos(pi * t))`` with ``t = (step - W) / max(1, total - W)``, capped at 1:
    the lr reaches 0 at step ``total``, one past the stage's last step (Loshchilov & Hutter, SGDR,
    ICLR 2017, without restarts).
    """
    o = validate_warmup(WHERE, warmup_epochs)
    total, warmup = ctx.total_steps, o["warmup_epochs"] * ctx.steps_per_epoch

    def after(step: int) -> float:
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return _warmed(ctx, o["warmup_epochs"], after)


def step(
    ctx: ScheduleContext, step_size: int = 10, gamma: float = 0.1, warmup_epochs: int = 0
) -> Callable[[int], float]:
    """The lr times ``gamma`` every ``step_size`` epochs: ``gamma ** (epoch // step_size)``, after the
    linear warmup (the epoch counts from the stage's start, warmup included)."""
    o = validate_step(WHERE, step_size, gamma, warmup_epochs)
    steps_per_epoch, gamma, step_size = ctx.steps_per_epoch, o["gamma"], o["step_size"]

    def after(step: int) -> float:
        return gamma ** ((step // steps_per_epoch) // step_size)

    return _warmed(ctx, o["warmup_epochs"], after)


def none(ctx: ScheduleContext, warmup_epochs: int = 0) -> Callable[[int], float]:
    """A constant lr (factor 1), after the linear warmup."""
    o = validate_warmup(WHERE, warmup_epochs)
    return _warmed(ctx, o["warmup_epochs"], lambda step: 1.0)


def one_cycle(
    ctx: ScheduleContext, pct_start: float = 0.25, div_factor: float = 25.0, final_div_factor: float = 1e4
) -> Callable[[int], float]:
    """The 1cycle policy (Smith & Topin 2018) as fastai's fit_one_cycle and torch's OneCycleLR with
    ``anneal_strategy="cos"``, ``three_phase=False`` (no momentum cycling): the optimizer's lr is the peak.

    The factor rises from ``1 / div_factor`` to 1 along a half cosine until step
    ``pct_start * total - 1``, then falls along a half cosine to ``1 / (div_factor * final_div_factor)``
    at the last step (``total - 1``), and stays there after it. ``factor * lr`` is OneCycleLR's lr with
    ``max_lr = lr`` at every step (where OneCycleLR would divide by zero, for a first phase shorter than
    one step, the factor is the phase's end value).
    """
    o = validate_one_cycle(WHERE, pct_start, div_factor, final_div_factor)
    total = ctx.total_steps
    initial = 1.0 / o["div_factor"]
    final = initial / o["final_div_factor"]
    # (end step, start factor, end factor) of each phase, as OneCycleLR computes them
    phases = ((float(o["pct_start"] * total) - 1, initial, 1.0), (total - 1, 1.0, final))

    def factor(step: int) -> float:
        start_step: float = 0
        for i, (end_step, start, end) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                span = end_step - start_step
                pct = min(1.0, (step - start_step) / span) if span > 0 else 1.0
                return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
            start_step = end_step
        raise AssertionError("unreachable")

    return factor


def warmup_cosine(ctx: ScheduleContext, warmup_epochs: int = 1, min_factor: float = 0.0) -> Callable[[int], float]:
    """Linear warmup over ``warmup_epochs``, then a cosine from 1 down to ``min_factor``.

    With W warmup steps and ``total`` steps in the stage: ``(step + 1) / W`` during the warmup (from 1/W
    at step 0 to 1 at step W - 1), then ``min_factor + 0.5 * (1 - min_factor) * (1 + cos(pi * t))`` with
    ``t = (step - W) / max(1, total - W)`` capped at 1, reaching ``min_factor`` at step ``total``. From
    step W on this is timm's ``CosineLRScheduler(t_initial=total - W, lr_min=min_factor * lr,
    warmup_t=W, warmup_prefix=True)`` stepped per optimizer step (``t_in_epochs=False``); timm's own
    warmup ramp starts at ``warmup_lr_init`` instead of 1/W.
    """
    o = validate_warmup_cosine(WHERE, warmup_epochs, min_factor)
    total, warmup, low = ctx.total_steps, o["warmup_epochs"] * ctx.steps_per_epoch, o["min_factor"]

    def after(step: int) -> float:
        t = (step - warmup) / max(1, total - warmup)
        return low + 0.5 * (1.0 - low) * (1.0 + math.cos(math.pi * min(1.0, t)))

    return _warmed(ctx, o["warmup_epochs"], after)


# validate_options: a function attribute that sftcore reads (Any: mypy has no attributes on functions)
cast(Any, cosine).validate_options = cast(Any, none).validate_options = validate_warmup
cast(Any, step).validate_options = validate_step
cast(Any, one_cycle).validate_options = validate_one_cycle
cast(Any, warmup_cosine).validate_options = validate_warmup_cosine
