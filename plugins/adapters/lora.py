"""LoRA (Hu et al., ICLR 2022) through peft's own layers: each target layer computes W x + (alpha/r) B A x with
W frozen and only A [r, in] and B [out, r] trained (B starts at zero, so the stage starts from the backbone's
function). peft is an optional extra; the target layers are chosen here, by a regular expression over the
backbone's module names, so that a target matching nothing is one line naming the candidates."""

from __future__ import annotations

import copy
import importlib.util
import re

import torch
from torch import nn

from sftcore.api import Adapter, Backbone, check_option
from sftcore.errors import ConfigError, OptionError, show

# the layer types peft's LoRA wraps, of those a vision backbone has
_WRAPPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MAX_RANK = 4096


def _target(value) -> re.Pattern | None:
    """``target``: a regular expression (or a list of them), or null for every Linear layer."""
    if value is None:
        return None
    parts = value if isinstance(value, list) else [value]
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise OptionError(
            "target",
            "must be a regular expression over layer names, e.g. 'qkv|fc1|fc2', a list of them, or null "
            f"(every Linear layer); got {show(value)}",
        )
    try:
        return re.compile("|".join(f"(?:{p})" for p in parts))
    except re.error as exc:
        raise OptionError("target", f"must be a regular expression, got {show(value)} ({exc})") from None


def targets(features: nn.Module, pattern: re.Pattern | None) -> list[str]:
    """Dotted names of the layers LoRA wraps: those whose full name or last component the pattern matches
    in full (``qkv`` matches ``blocks.0.attn.qkv``); without a pattern, every Linear layer."""
    out = []
    for name, m in features.named_modules():
        if not name or not isinstance(m, _WRAPPABLE):
            continue
        if pattern is None:
            hit = isinstance(m, nn.Linear)
        else:
            hit = bool(pattern.fullmatch(name) or pattern.fullmatch(name.rpartition(".")[2]))
        if hit:
            out.append(name)
    return out


def _candidates(features: nn.Module) -> str:
    """Some of the layers LoRA could wrap, by full name: each is a valid ``target``."""
    names = [n for n, m in features.named_modules() if n and isinstance(m, _WRAPPABLE)]
    return ", ".join(names[:8]) + (f" (of {len(names)})" if len(names) > 8 else "") if names else "none"


class LoRA(Adapter):
    """W + (alpha/r) B A on the target layers; everything else in the backbone is frozen (and pinned).

    ``r`` is the rank, ``alpha`` the scale's numerator, ``dropout`` LoRA's dropout on the layer's input to
    A, ``target`` a regular expression matched in full against each Linear/Conv layer's dotted name or its
    last component (``"qkv|fc1|fc2"``; a list of expressions: any of them), null: every Linear layer.
    """

    def __init__(self, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, target: str | list | None = None):
        self.r = check_option("r", r, int, low=1, high=_MAX_RANK)
        self.alpha = check_option("alpha", alpha, float, low=0.0, low_open=True)
        self.dropout = check_option("dropout", dropout, float, low=0.0, high=0.99)
        self.pattern = _target(target)
        self.target = target
        if importlib.util.find_spec("peft") is None:
            raise ConfigError("lora needs peft, an optional extra: pip install 'sftcore[peft]'")

    def apply(self, backbone: Backbone) -> None:
        import peft

        features = backbone.features
        names = targets(features, self.pattern)
        if not names:
            what = "no Linear layer" if self.pattern is None else f"no Linear or Conv layer named {show(self.target)}"
            raise ConfigError(f"lora: the backbone has {what}; its Linear and Conv layers: {_candidates(features)}")
        grouped = [n for n in names if getattr(features.get_submodule(n), "groups", 1) > 1]
        if grouped:  # peft trains them but cannot fold them into the weights: sftcore.load and export would fail
            raise ConfigError(
                f"lora: peft cannot merge LoRA into grouped convolutions ({', '.join(grouped[:3])}); leave them out "
                "of target"
            )
        config = peft.LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=names)
        try:
            peft.inject_adapter_in_model(config, features)
        except (ValueError, TypeError, NotImplementedError) as exc:  # a layer type or option peft refuses
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            layers = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ConfigError(f"lora: peft cannot wrap this backbone's layers ({layers}): {reason}") from None
        for n, p in features.named_parameters():  # peft leaves the LoRA factors trainable and freezes the rest
            p.requires_grad_(".lora_" in f".{n}")

    def merge(self, features: nn.Module) -> nn.Module:
        """A copy with every LoRA layer folded into its base layer (peft's merge) and replaced by it."""
        from peft.tuners.lora import LoraLayer

        merged = copy.deepcopy(features)
        with torch.no_grad():
            for name, m in list(merged.named_modules()):
                if isinstance(m, LoraLayer):
                    m.merge()
                    parent, _, leaf = name.rpartition(".")
                    setattr(merged.get_submodule(parent), leaf, m.get_base_layer())
        return merged
