"""``zero_init``: a head strategy that starts the new classifier at exactly zero."""

from __future__ import annotations

from torch import nn

from sftcore.api import HeadStrategy, TrainContext


class ZeroInit(HeadStrategy):
    """A new linear head with zero weights and bias; train everything

    Every class starts with logit 0 (uniform predictions, loss log(C)). The backbone gets no
    gradient until the head has moved off zero, so the first steps only shape the head.
    """

    def __init__(self, bias: bool = True):
        self.bias = bias

    def build_head(self, ctx: TrainContext) -> nn.Module:
        head = nn.Linear(ctx.backbone.num_features, ctx.num_classes, bias=self.bias)
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
        return head
