"""Head-transfer strategies. The freeze state of every epoch follows from the epoch number alone,
so a resumed run freezes what the interrupted one had frozen (Lightning #21901, #6551)."""

from __future__ import annotations

import math
import re
from typing import cast

import torch
from torch import nn

from sftcore.api import HeadStrategy, TrainContext, freeze, unfreeze
from sftcore.errors import ConfigError, show


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Reinit(HeadStrategy):
    """A new, randomly initialised head; everything trains from the first epoch (the loop's default)."""


class LinearProbe(HeadStrategy):
    """Backbone frozen (its norm layers keep their statistics); only the head trains."""

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        assert ctx.model is not None  # on_epoch_start runs once the model is built
        freeze(ctx.model.backbone)
        unfreeze(ctx.model.head)


PROBE_HEADS = ("linear", "ncm", "logistic")  # lp_ft's probe: trained from scratch, or computed (heads/fast.py)

# under epochs: auto the stage's length is unknown (ctx.epochs is its cap): probe for a fixed number of epochs
AUTO_PROBE_EPOCHS = 10


class LPFT(HeadStrategy):
    """Linear probe for ``probe_epochs`` (default: half the stage; 10 under ``epochs: auto``), then finetune
    everything."""

    def __init__(self, probe_epochs: int | None = None, probe_head: str = "linear"):
        if probe_epochs is not None and (not _is_int(probe_epochs) or probe_epochs < 0):
            raise ConfigError(
                f"config: head lp_ft: probe_epochs must be a non-negative integer, got {show(probe_epochs)}"
            )
        if probe_head not in PROBE_HEADS:
            raise ConfigError(
                f"config: head lp_ft: probe_head must be one of {', '.join(PROBE_HEADS)}, got {show(probe_head)}"
            )
        self.probe_epochs, self.probe_head = probe_epochs, probe_head

    @property
    def usable_untrained(self) -> bool:  # type: ignore[override]
        """A computed probe head is usable as it is (``epochs: 0``)."""
        return self.probe_head != "linear"

    def build_head(self, ctx: TrainContext) -> nn.Module:
        """The probe's head: a new linear layer, or one computed from the features (``ncm``, ``logistic``)."""
        from .fast import logistic_head, ncm_head

        if self.probe_head == "ncm":
            return ncm_head(ctx, 10.0)
        if self.probe_head == "logistic":
            return logistic_head(ctx, None, 200)[0]
        return super().build_head(ctx)

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        default = AUTO_PROBE_EPOCHS if getattr(ctx, "epochs_auto", False) else ctx.epochs // 2
        probe = self.probe_epochs if self.probe_epochs is not None else default
        if epoch < probe:
            assert ctx.model is not None  # on_epoch_start runs once the model is built
            freeze(ctx.model.backbone)
            unfreeze(ctx.model.head)
        # after the probe the loop's default applies: everything trains


class GradualUnfreeze(HeadStrategy):
    """Head only at first; every ``every`` epochs one more backbone block unfreezes, from the top."""

    def __init__(self, every: int = 1, blocks_per_step: int = 1):
        for key, value in (("every", every), ("blocks_per_step", blocks_per_step)):
            if not _is_int(value) or value < 1:
                raise ConfigError(f"config: head gradual_unfreeze: {key} must be an integer >= 1, got {show(value)}")
        self.every, self.blocks_per_step = every, blocks_per_step

    def unfrozen_blocks(self, epoch: int) -> int:
        return (epoch // self.every) * self.blocks_per_step

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        model = ctx.model
        assert model is not None  # on_epoch_start runs once the model is built
        freeze(model.backbone)
        unfreeze(model.head)
        blocks = model.blocks()
        k = min(len(blocks), self.unfrozen_blocks(epoch))
        for _, block in blocks[len(blocks) - k :]:
            unfreeze(block)
        if k == len(blocks):  # parameters outside any declared block go with the last step
            unfreeze(model.backbone)


def _norm_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


class MatchClasses(HeadStrategy):
    """Copy the source head's row for every target class whose name matches a source class.

    ``aliases`` maps a target class to a differently named source class.
    """

    usable_untrained = True

    def __init__(self, aliases: dict | None = None):
        if aliases is not None and (
            not isinstance(aliases, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())
        ):
            raise ConfigError(
                "config: head match_classes: aliases must map target class names to source class "
                f"names, e.g. {{kitty: cat}}; got {show(aliases)}"
            )
        self.aliases = {_norm_name(k): _norm_name(v) for k, v in (aliases or {}).items()}
        self.matched: dict[str, str] = {}

    def build_head(self, ctx: TrainContext) -> nn.Module:
        head = cast(nn.Linear, super().build_head(ctx))  # HeadStrategy's default head
        src = ctx.source_head
        if not isinstance(src, nn.Linear) or not ctx.source_classes:
            raise ConfigError(
                "config: head match_classes needs a source head with class names: add a pretrain "
                "stage, or backbone weights that come with classes; or use head: reinit"
            )
        if src.in_features != head.in_features:
            raise ConfigError(
                f"config: head match_classes: the source head takes {src.in_features} features, "
                f"the backbone gives {head.in_features}"
            )
        source: dict[str, int] = {}
        for i, c in enumerate(ctx.source_classes):  # "tench, Tinca tinca": every synonym names the row
            for synonym in [c, *str(c).split(",")]:
                source.setdefault(_norm_name(synonym), i)
        self.matched = {}
        with torch.no_grad():
            for t, name in enumerate(ctx.classes):
                keys = [_norm_name(name), *(_norm_name(part) for part in str(name).split(","))]
                s = next((source[k] for k in (self.aliases.get(k, k) for k in keys) if k in source), None)
                if s is None:
                    continue
                head.weight[t].copy_(src.weight[s])
                if head.bias is not None and src.bias is not None:
                    head.bias[t].copy_(src.bias[s])
                self.matched[name] = ctx.source_classes[s]
        return head

    def state_dict(self) -> dict:
        return {"matched": self.matched}

    def load_state_dict(self, state: dict) -> None:
        self.matched = dict(state.get("matched", {}))


class Imprint(HeadStrategy):
    """Each class's row = the normalised mean of its examples' normalised features (Qi et al., 2018).

    Rows are scaled so that logits are about ``scale`` times a cosine similarity; bias starts at 0.
    """

    usable_untrained = True

    def __init__(self, scale: float = 10.0):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
            raise ConfigError(f"config: head imprint: scale must be a positive number, got {show(scale)}")
        self.scale = float(scale)

    def build_head(self, ctx: TrainContext) -> nn.Module:
        head = cast(nn.Linear, super().build_head(ctx))  # HeadStrategy's default head
        features, labels = ctx.extract_features()
        features = features.float().cpu()
        labels = labels.cpu()
        mean_norm = features.norm(dim=1).mean().clamp_min(1e-6)
        unit = nn.functional.normalize(features, dim=1)
        with torch.no_grad():
            for c in range(ctx.num_classes):
                rows = unit[labels == c]
                if len(rows):
                    head.weight[c].copy_(nn.functional.normalize(rows.mean(0), dim=0) * self.scale / mean_norm)
            head.bias.zero_()
        return head
