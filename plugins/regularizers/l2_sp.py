"""L2-SP (Li, Grandvalet, Davoine, ICML 2018): pull transferred weights towards their starting point."""

from __future__ import annotations

import torch

from sftcore.api import Regularizer, Step, TrainContext

from .selection import check, selected, strength


class L2SP(Regularizer):
    """alpha/2 * ||w_S - w0_S||^2 over the backbone + beta/2 * ||w_new||^2 over the new head.

    w0 is the backbone at the start of the stage. ``params``/``match`` choose S; the default,
    conv/linear kernels only, follows the authors' code (TLlib penalises every parameter).
    """

    def __init__(self, alpha: float = 0.1, beta: float = 0.01, params: str = "weights", match: str | None = None):
        check(params, "l2_sp", match)
        self.alpha, self.beta = strength(alpha, "alpha", "l2_sp"), strength(beta, "beta", "l2_sp")
        self.params, self.match = params, match

    def setup(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        model = ctx.model
        assert model is not None  # setup runs once the model is built
        named = [(f"backbone.{n}", p) for n, p in model.backbone.named_parameters()]
        self.transferred = list(selected(named, self.params, self.match))
        self.new = [p for _, p in selected(model.head.named_parameters(), self.params, None)]

    def penalty(self, step: Step) -> torch.Tensor:
        start = self.ctx.start_state()
        total = step.logits.new_zeros((), dtype=torch.float32)
        sp = [(p, start[n]) for n, p in self.transferred if p.requires_grad]
        if sp and self.alpha:
            total = total + 0.5 * self.alpha * sum((p - p0).pow(2).sum() for p, p0 in sp)
        new = [p for p in self.new if p.requires_grad]
        if new and self.beta:
            total = total + 0.5 * self.beta * sum(p.pow(2).sum() for p in new)
        return total
