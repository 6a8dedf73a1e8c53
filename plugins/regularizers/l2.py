"""L2 as a loss term. With SGD it equals weight_decay=alpha; with Adam-type optimizers it does not
(AdamW decays decoupled from the gradient), so both stay available."""

from __future__ import annotations

import torch

from sftcore.api import Regularizer, Step, TrainContext

from .selection import check, selected, strength


class L2(Regularizer):
    """alpha/2 * ||w||^2 over the model's trainable parameters (conv/linear weights by default)."""

    def __init__(self, alpha: float = 0.01, params: str = "weights", match: str | None = None):
        check(params, "l2", match)
        self.alpha, self.params, self.match = strength(alpha, "alpha", "l2"), params, match

    def setup(self, ctx: TrainContext) -> None:
        assert ctx.model is not None  # setup runs once the model is built
        self.weights = [p for _, p in selected(ctx.model.named_parameters(), self.params, self.match)]

    def penalty(self, step: Step) -> torch.Tensor:
        live = [p for p in self.weights if p.requires_grad]  # frozen weights add a constant: skip them
        if not live:
            return step.logits.new_zeros(())
        return 0.5 * self.alpha * sum(p.pow(2).sum() for p in live)
