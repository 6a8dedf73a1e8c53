"""The built-in optimizers. Each factory takes the parameter groups first, as sftcore hands them over
(biases and norm weights already in groups of their own with ``weight_decay: 0.0``), and passes
them to torch as given: a group's own ``lr`` and ``weight_decay`` win over the factory's."""

from __future__ import annotations

from typing import Any, cast

import torch

from sftcore.api import check_option

from ._checks import betas as _betas
from ._checks import number as _number

WHERE = "config: optimizer"


def _lr(where, lr) -> float:
    return _number(where, "lr", lr, low=0.0, low_open=True)


def _weight_decay(where, weight_decay) -> float:
    return _number(where, "weight_decay", weight_decay, low=0.0)


def validate_sgd(
    where: str, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False
) -> dict:
    """lr > 0, momentum from 0 to 1, weight_decay >= 0, nesterov true or false; returns them checked."""
    return {
        "lr": _lr(where, lr),
        "momentum": _number(where, "momentum", momentum, low=0.0, high=1.0),
        "weight_decay": _weight_decay(where, weight_decay),
        "nesterov": check_option("nesterov", nesterov, bool, where=where),
    }


def validate_adam(where: str, lr: float = 0.001, weight_decay: float = 0.0, betas: list[float] = [0.9, 0.999]) -> dict:  # noqa: B006 - never mutated
    """lr > 0, weight_decay >= 0, betas two numbers in [0, 1); returns them checked (adam and adamw)."""
    return {"lr": _lr(where, lr), "weight_decay": _weight_decay(where, weight_decay), "betas": _betas(where, betas)}


def sgd(
    param_groups, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False
) -> torch.optim.Optimizer:
    """SGD with momentum; ``weight_decay`` adds ``wd * w`` to the gradient (coupled L2).

    ``nesterov`` applies only with momentum > 0 (torch refuses it otherwise).
    """
    o = validate_sgd(WHERE, lr, momentum, weight_decay, nesterov)
    return torch.optim.SGD(
        param_groups,
        lr=o["lr"],
        momentum=o["momentum"],
        weight_decay=o["weight_decay"],
        nesterov=o["nesterov"] and o["momentum"] > 0,
    )


def adamw(
    param_groups,
    lr: float = 0.001,
    weight_decay: float = 0.01,
    betas: list[float] = [0.9, 0.999],  # noqa: B006 - never mutated
) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, ICLR 2019): every step shrinks the weights by ``lr * weight_decay * w``,
    outside Adam's moment estimates (decoupled weight decay)."""
    o = validate_adam(WHERE, lr, weight_decay, betas)
    return torch.optim.AdamW(param_groups, lr=o["lr"], weight_decay=o["weight_decay"], betas=tuple(o["betas"]))


def adam(
    param_groups,
    lr: float = 0.001,
    weight_decay: float = 0.0,
    betas: list[float] = [0.9, 0.999],  # noqa: B006 - never mutated
) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba, ICLR 2015), as torch.optim.Adam: ``weight_decay`` adds ``wd * w`` to the
    gradient before the moment estimates (coupled L2, rescaled per parameter; use adamw for decoupled
    weight decay)."""
    o = validate_adam(WHERE, lr, weight_decay, betas)
    return torch.optim.Adam(param_groups, lr=o["lr"], weight_decay=o["weight_decay"], betas=tuple(o["betas"]))


# validate_options: a function attribute that sftcore reads (Any: mypy has no attributes on functions)
cast(Any, sgd).validate_options = validate_sgd
cast(Any, adamw).validate_options = cast(Any, adam).validate_options = validate_adam
