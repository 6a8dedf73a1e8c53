"""TransferModel: a backbone's feature extractor with a separate head, the one shape the runner trains."""

from __future__ import annotations

import threading

import torch
from torch import nn

from .api import Backbone

_capture = threading.local()  # the feature-map dict of the forward_all call in progress, if any


def _record(name: str):
    def hook(_module, _inputs, output):
        maps = getattr(_capture, "maps", None)
        if maps is not None:
            maps[name] = output

    return hook


class TransferModel(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone.features
        self.head = head
        self.spec = backbone  # metadata (blocks, feature-map names, input size), not a submodule
        self._hooks_installed = False

    def forward(self, x: torch.Tensor, all_outputs: bool = False, feature_maps: bool = False):
        """Logits; with ``all_outputs``, what ``forward_all`` returns (the training loop calls the model
        this way so that a DistributedDataParallel wrapper sees the forward pass)."""
        if all_outputs:
            return self.forward_all(x, feature_maps=feature_maps)
        return self.head(self.backbone(x))

    def forward_all(self, x: torch.Tensor, feature_maps: bool = False):
        """``(logits, features, feature_maps)``; maps are recorded only when asked for."""
        if not feature_maps:
            features = self.backbone(x)
            return self.head(features), features, {}
        if not self._hooks_installed:  # hooks survive deepcopy, so a copy records too
            for name in self.spec.feature_maps:
                self.backbone.get_submodule(name).register_forward_hook(_record(name))
            self._hooks_installed = True
        _capture.maps = maps = {}
        try:
            features = self.backbone(x)
        finally:
            _capture.maps = None
        return self.head(features), features, maps

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Backbone blocks from input to output (the whole backbone as one block if undeclared).

        A block declared as a list of submodule names becomes one ModuleList over them.
        """
        if not self.spec.blocks:
            return [("backbone", self.backbone)]
        out = []
        for block in self.spec.blocks:
            if isinstance(block, str):
                out.append((block, self.backbone.get_submodule(block)))
            else:
                out.append(("+".join(block), nn.ModuleList(self.backbone.get_submodule(n) for n in block)))
        return out
