"""``discriminative``: fastai's discriminative learning rates over the backbone's declared blocks."""

from __future__ import annotations

from sftcore.api import ParamGroups, TrainContext, check_option


class Discriminative(ParamGroups):
    """Discriminative lrs (fastai): backbone blocks geometric from lr*mult/div up to lr*mult, the head at lr

    fastai's ``lr=slice(lr / div, lr)`` (Howard and Ruder, ULMFiT, ACL 2018): layers near the input
    change least. With B declared blocks (``TransferModel.blocks()``, from input to output; the
    whole backbone is one block if it declares none), block i (from 0) learns at
    ``lr * backbone_lr_mult * div ** (-(B - 1 - i) / (B - 1))``: geometrically spaced, the first at
    ``lr * backbone_lr_mult / div``, the last at ``lr * backbone_lr_mult`` (one block: the latter).
    The head learns at ``lr``. Unlike fastai, which counts the head as the last of the spaced
    groups, the last block here reaches the full backbone rate. Backbone parameters outside every
    block (a stem, a final norm) go with the first block; a parameter in two blocks with the first
    of them. One group per block, named after it; then ``head``.
    """

    WHERE = "config: param_groups discriminative"

    def __init__(self, div: float = 10.0):
        self.div = self.validate_options(self.WHERE, div)["div"]

    @staticmethod
    def validate_options(where: str, div: float = 10.0) -> dict:
        """div a number >= 1 (1: every block at lr * backbone_lr_mult)."""
        return {"div": check_option("div", div, float, low=1.0, where=where)}

    def rates(self, blocks: int, base: float) -> list[float]:
        """The lr of each of ``blocks`` blocks, from input to output, for backbone rate ``base``."""
        if blocks == 1:
            return [base]
        return [base * self.div ** (-(blocks - 1 - i) / (blocks - 1)) for i in range(blocks)]

    def groups(self, ctx: TrainContext, lr: float, backbone_lr_mult: float) -> list[dict]:
        model = ctx.model
        blocks = model.blocks()
        seen: set[int] = set()
        params: list[list] = []
        for _, module in blocks:
            mine = [p for p in module.parameters() if id(p) not in seen]
            seen.update(id(p) for p in mine)
            params.append(mine)
        outside = [p for p in model.backbone.parameters() if id(p) not in seen]
        seen.update(id(p) for p in outside)
        params[0] = outside + params[0]
        head = [p for p in model.parameters() if id(p) not in seen]  # the head, and anything else the model holds
        names = [f"block{i}_{name}" for i, (name, _) in enumerate(blocks)]
        rates = self.rates(len(blocks), lr * backbone_lr_mult)
        out = [{"name": n, "params": p, "lr": r} for n, p, r in zip(names, params, rates) if p]
        if head:
            out.append({"name": "head", "params": head, "lr": lr})
        return out
