"""Built-in parameter groupings: every parameter of ``ctx.model`` in exactly one group, frozen ones
included (the head strategy freezes per epoch; a frozen parameter is simply not stepped)."""

from __future__ import annotations

from sftcore.api import ParamGroups, TrainContext, check_option


class BackboneHead(ParamGroups):
    """Two groups: the backbone at lr * backbone_lr_mult, the head at lr

    What the head strategies give by default. ``backbone_lr_mult`` here overrides the stage's
    ``backbone_lr_mult`` key; ``null`` uses the stage's.
    """

    WHERE = "config: param_groups"

    def __init__(self, backbone_lr_mult: float | None = None):
        self.backbone_lr_mult = self.validate_options(self.WHERE, backbone_lr_mult)["backbone_lr_mult"]

    @staticmethod
    def validate_options(where: str, backbone_lr_mult: float | None = None) -> dict:
        """backbone_lr_mult a finite number >= 0, or null."""
        return {
            "backbone_lr_mult": check_option(
                "backbone_lr_mult", backbone_lr_mult, float, low=0.0, none=True, where=where
            )
        }

    def groups(self, ctx: TrainContext, lr: float, backbone_lr_mult: float) -> list[dict]:
        mult = self.backbone_lr_mult if self.backbone_lr_mult is not None else backbone_lr_mult
        assert ctx.model is not None  # groups are made once the model is built
        return [
            {"name": "backbone", "params": list(ctx.model.backbone.parameters()), "lr": lr * mult},
            {"name": "head", "params": list(ctx.model.head.parameters()), "lr": lr},
        ]


class LayerDecay(ParamGroups):
    """Layer-wise lr decay over the backbone's blocks: lr * decay ** depth from the top (BEiT, timm)

    timm's ``param_groups_layer_decay`` (after BEiT, Bao et al., ICLR 2022) over the blocks the
    backbone declares (``TransferModel.blocks()``; without declared blocks the whole backbone is one).
    With B blocks the layers are 0 = the stem, 1..B = the blocks from input to output, B + 1 = the head;
    layer i has scale ``max(min_scale, decay ** (B + 1 - i))``. A backbone layer's group learns at
    ``lr * backbone_lr_mult * scale`` (the stage's ``backbone_lr_mult`` multiplies on top), the head's
    at ``lr``. Backbone parameters outside every block (in ``named_parameters`` order): those before the
    first block's first parameter form the stem, those after the last block's last parameter join the
    head's layer (timm puts a final norm there), and those between two blocks join the preceding
    block. A block declared as a list of submodules is one layer. One group per non-empty layer,
    named ``layer_<i>``.
    """

    WHERE = "config: param_groups"

    def __init__(self, decay: float = 0.75, min_scale: float = 0.0):
        checked = self.validate_options(self.WHERE, decay, min_scale)
        self.decay, self.min_scale = checked["decay"], checked["min_scale"]

    @staticmethod
    def validate_options(where: str, decay: float = 0.75, min_scale: float = 0.0) -> dict:
        """decay in (0, 1], min_scale from 0 to 1."""
        return {
            "decay": check_option("decay", decay, float, low=0.0, low_open=True, high=1.0, where=where),
            "min_scale": check_option("min_scale", min_scale, float, low=0.0, high=1.0, where=where),
        }

    def layers(self, ctx: TrainContext) -> tuple[int, list[list]]:
        """``(B, params per layer)``: the parameters of layers 0..B+1 in ``named_parameters`` order."""
        model = ctx.model
        assert model is not None  # groups are made once the model is built
        blocks = model.blocks()
        count = len(blocks)
        block_of: dict[int, int] = {}
        for i, (_, module) in enumerate(blocks, start=1):
            for p in module.parameters():
                block_of.setdefault(id(p), i)
        named = [p for _, p in model.backbone.named_parameters()]
        inside = [k for k, p in enumerate(named) if id(p) in block_of]
        first, last = (inside[0], inside[-1]) if inside else (len(named), -1)
        layers: list[list] = [[] for _ in range(count + 2)]
        seen: set[int] = set()
        current = 0
        for k, p in enumerate(named):
            if id(p) in block_of:
                current = block_of[id(p)]
                layer = current
            elif k < first:
                layer = 0
            elif k > last:
                layer = count + 1
            else:  # between blocks: with the preceding one
                layer = current
            layers[layer].append(p)
            seen.add(id(p))
        for p in model.parameters():  # the head, and anything else the model holds
            if id(p) not in seen:
                layers[count + 1].append(p)
                seen.add(id(p))
        return count, layers

    def scale(self, layer: int, blocks: int) -> float:
        return max(self.min_scale, self.decay ** (blocks + 1 - layer))

    def groups(self, ctx: TrainContext, lr: float, backbone_lr_mult: float) -> list[dict]:
        count, layers = self.layers(ctx)
        out = []
        for i, params in enumerate(layers):
            if not params:
                continue
            group_lr = lr if i == count + 1 else lr * backbone_lr_mult * self.scale(i, count)
            out.append({"name": f"layer_{i}", "params": params, "lr": group_lr})
        return out
