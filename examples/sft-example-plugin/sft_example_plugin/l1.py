"""``l1``: an L1 penalty on the weights, the smallest complete Regularizer."""

from __future__ import annotations

import torch

from sftcore.api import Regularizer, Step, TrainContext
from sftcore.errors import ConfigError


class L1(Regularizer):
    """alpha * sum(|w|) over conv/linear weights (sparsity-inducing)"""

    def __init__(self, alpha: float = 1e-4, include_head: bool = True):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
            raise ConfigError(f"regularizer 'l1': alpha must be a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.include_head = include_head

    def setup(self, ctx: TrainContext) -> None:
        # Weights are the parameters with two or more dimensions (conv kernels, linear matrices):
        # biases and norm scales are left alone, as for L2 weight decay.
        model = ctx.model
        modules = [model.backbone] + ([model.head] if self.include_head else [])
        self.params = [p for m in modules for p in m.parameters() if p.ndim > 1]

    def penalty(self, step: Step) -> torch.Tensor:
        live = [p for p in self.params if p.requires_grad]  # a frozen weight only adds a constant
        if not live:
            return step.logits.new_zeros(())
        return self.alpha * torch.stack([p.abs().sum() for p in live]).sum()
