"""A stage's optimizer and learning-rate schedule, built from the configured components: parameter
groups (the param_groups component, else the head strategy's), weight decay off biases and norm
weights, the optimizer's factory, and the schedule's factor times the lr scale epochs: auto lowers."""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch

from sftcore._plugins import components
from sftcore._plugins.contracts import HeadStrategy, ParamGroups, ScheduleContext, TrainContext
from sftcore.errors import PluginError


def parameter_groups(
    ctx: TrainContext, lr: float, mult: float, strategy: HeadStrategy, param_groups: ParamGroups | None, name: str
) -> list[dict]:
    """The groups at learning rate ``lr`` (the backbone's times ``mult``), each parameter of the model in exactly
    one (a plugin's mistake is one line)."""
    source = "param_groups" if param_groups is not None else "head strategy"
    groups = param_groups.groups(ctx, lr, mult) if param_groups is not None else strategy.param_groups(ctx, lr, mult)
    seen: set[int] = set()
    for g in groups:
        for p in g["params"]:
            if id(p) in seen:
                raise PluginError(f"{source} of {name} put a parameter into two optimizer groups ({g.get('name')})")
            seen.add(id(p))
    missing = [n for n, p in ctx.model.named_parameters() if id(p) not in seen]
    if missing:
        raise PluginError(f"{source} of {name} left parameters out of the optimizer: {missing[:3]}")
    return groups


def split_decay(groups: list[dict], exempt: Collection[int] = ()) -> list[dict]:
    """Each group in two: weights, and biases with norm weights (1-D) at weight decay 0 (fastai, timm), with
    the parameters whose ids are in ``exempt`` (what the backbone lists as ``no_weight_decay``)."""
    split = []
    for group in groups:
        decay = [p for p in group["params"] if p.ndim > 1 and id(p) not in exempt]
        no_decay = [p for p in group["params"] if p.ndim <= 1 or id(p) in exempt]
        base = {k: v for k, v in group.items() if k != "params"}
        if decay:
            split.append({**base, "params": decay})
        if no_decay:
            split.append({**base, "params": no_decay, "weight_decay": 0.0})
    return split


def make_optimizer(
    groups: list[dict], cfg: dict, registry=None, path: str = "optimizer", exempt: Collection[int] = ()
) -> torch.optim.Optimizer:
    """The configured optimizer over ``groups`` (``cfg``: the resolved ``optimizer:`` entry); ``exempt``: ids of
    parameters never weight-decayed besides the 1-D ones."""
    registry = registry if registry is not None else _registry()
    optimizer = components.build(registry, "optimizers", cfg, path, split_decay(groups, exempt))
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise PluginError(f"optimizer '{cfg['name']}' returned {type(optimizer).__name__}, not a torch.optim.Optimizer")
    return optimizer


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: dict,
    epochs: int,
    steps_per_epoch: int,
    scale: Callable[[], float],
    registry=None,
    path: str = "schedule",
):
    """LambdaLR of the schedule's factor times ``scale()`` (epochs: auto's lr drops), stepped per batch."""
    registry = registry if registry is not None else _registry()
    factor = components.build(registry, "schedules", cfg, path, ScheduleContext(epochs, steps_per_epoch))
    if not callable(factor):
        raise PluginError(f"schedule '{cfg['name']}' returned {type(factor).__name__}, not a function of the step")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step) * scale())


def _registry():
    from sftcore._plugins.manager import get_registry

    return get_registry()
