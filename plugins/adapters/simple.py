"""Adapters that add nothing and only choose what trains: BitFit (biases) and norm-only (norm layers' affine
parameters). Everything else in the backbone is frozen, then pinned by sftcore."""

from __future__ import annotations

from torch import nn

from sftcore.api import Adapter, Backbone, freeze
from sftcore.errors import ConfigError

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def is_norm(module: nn.Module) -> bool:
    """torch's norm layers and their subclasses (timm's LayerNorm2d, BatchNormAct2d), or any class named *Norm*."""
    return isinstance(module, _NORMS) or "Norm" in type(module).__name__


class BitFit(Adapter):
    """Only the biases of the backbone train (every parameter named ``bias``, norm layers' included)."""

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone.features)
        biases = [p for n, p in backbone.features.named_parameters() if n.rpartition(".")[2] == "bias"]
        if not biases:
            raise ConfigError("bitfit: the backbone has no bias parameters to train")
        for p in biases:
            p.requires_grad_(True)


class NormOnly(Adapter):
    """Only the normalisation layers' affine parameters (scale and shift) train."""

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone.features)
        params = [p for m in backbone.features.modules() if is_norm(m) for p in m.parameters(recurse=False)]
        if not params:
            raise ConfigError(
                "norm_only: the backbone has no normalisation layer with affine parameters; try bitfit or lora"
            )
        for p in params:
            p.requires_grad_(True)
