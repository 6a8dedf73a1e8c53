"""Heads computed from the frozen backbone's features instead of trained by SGD: ``ncm`` (the nearest class mean,
cosine) and ``logistic`` (a multinomial logistic regression fitted by L-BFGS, its L2 strength chosen on the
validation split as CLIP's linear-probe protocol does). Both keep the backbone frozen, like ``linear_probe``:
with ``epochs: 0`` the stage evaluates the computed head as it is; with epochs it trains on from there (on
features computed once). ``lp_ft`` can use either for its probe (``probe_head``)."""

from __future__ import annotations

import torch
from torch import nn

from sftcore.api import HeadStrategy, TrainContext, check_option, fit_logistic, freeze, unfreeze

# CLIP's sweep spans 1e-6..1e6 in C; in l2 = 1 / (C * N) terms, on standardised features, these cover it
L2_GRID = tuple(10.0**k for k in range(-6, 3))
DEFAULT_L2 = 1e-3  # no validation split to choose on


class FrozenBackbone(HeadStrategy):
    """The backbone frozen for the whole stage (its norm layers keep their statistics); the head trains."""

    usable_untrained = True

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        freeze(ctx.model.backbone)
        unfreeze(ctx.model.head)


class NCM(FrozenBackbone):
    """Each class's row is the normalised mean of its examples' normalised features, scaled so that logits are
    about ``scale`` times a cosine similarity: untrained, it predicts the nearest class mean by cosine."""

    def __init__(self, scale: float = 10.0):
        self.scale = check_option("scale", scale, float, low=0.0, low_open=True, where="config: head ncm")

    def build_head(self, ctx: TrainContext) -> nn.Module:
        return ncm_head(ctx, self.scale)


class Logistic(FrozenBackbone):
    """A multinomial logistic regression on the training features (standardised, then folded back into one
    linear layer), its L2 strength the one of ``L2_GRID`` with the best validation accuracy (ties: the
    stronger), or ``l2`` when given; without a validation split ``l2`` defaults to 1e-3."""

    def __init__(self, l2: float | None = None, max_iter: int = 200):
        where = "config: head logistic"
        self.l2 = None if l2 is None else check_option("l2", l2, float, low=0.0, where=where)
        self.max_iter = check_option("max_iter", max_iter, int, low=1, high=100_000, where=where)
        self.chosen_l2: float | None = None

    def build_head(self, ctx: TrainContext) -> nn.Module:
        head, self.chosen_l2 = logistic_head(ctx, self.l2, self.max_iter)
        return head


def ncm_head(ctx: TrainContext, scale: float) -> nn.Linear:
    features, labels = ctx.extract_features()
    features, labels = features.cpu().double(), labels.cpu().long()
    unit = nn.functional.normalize(features, dim=1)
    sums = nn.functional.one_hot(labels, ctx.num_classes).to(unit.dtype).T @ unit  # [C, D]
    rows = nn.functional.normalize(sums, dim=1) * scale / features.norm(dim=1).mean().clamp_min(1e-6)
    head = nn.Linear(ctx.backbone.num_features, ctx.num_classes)
    with torch.no_grad():
        head.weight.copy_(rows)
        head.bias.zero_()
    return head


def logistic_head(ctx: TrainContext, l2: float | None, max_iter: int) -> tuple[nn.Linear, float]:
    """The fitted head and its L2 strength."""
    f, y = ctx.extract_features()
    f, y = f.cpu().double(), y.cpu().long()
    mean, std = f.mean(0), f.std(0, correction=0).clamp_min(1e-12)
    val = ctx.extract_val_features()
    if l2 is None and val is not None:
        fv, yv = val[0].cpu().double(), val[1].cpu().long()
        hits = {}
        for k in L2_GRID:
            w, b = fit_logistic((f - mean) / std, y, ctx.num_classes, k, max_iter)
            hits[k] = int((((fv - mean) / std @ w.T + b).argmax(1) == yv).sum())
        l2 = max(L2_GRID, key=lambda k: (hits[k], k))
    chosen = DEFAULT_L2 if l2 is None else l2
    w, b = fit_logistic((f - mean) / std, y, ctx.num_classes, chosen, max_iter)
    head = nn.Linear(ctx.backbone.num_features, ctx.num_classes)
    with torch.no_grad():  # the standardisation folded into the layer: W (x - m) / s + b
        head.weight.copy_(w / std)
        head.bias.copy_(b - (w / std) @ mean)
    return head, chosen
