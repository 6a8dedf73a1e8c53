"""TransferModel: a backbone's feature extractor with a separate head, the one shape the runner trains."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from fnmatch import fnmatch

import torch
from torch import nn

from sftcore._plugins.contracts import PINNED, Backbone, pinned
from sftcore._plugins.registry import suggest
from sftcore.errors import ConfigError

_capture = threading.local()  # the feature-map dict of the forward_all call in progress, if any


def _record(name: str):
    def hook(_module, _inputs, output):
        maps = getattr(_capture, "maps", None)
        if maps is not None:
            maps[name] = output

    return hook


class _Holding(nn.Module):
    """One parameter as a module, so that a block may name it (the parameter stays the backbone's)."""

    def __init__(self, parameter: nn.Parameter):
        super().__init__()
        self.parameter = parameter


class TransferModel(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone.features
        self.head = head
        self.spec = backbone  # metadata (blocks, feature-map names, input size), not a submodule
        self._extra_maps: list[str] = []  # record_feature_maps: recorded beside spec.feature_maps
        self._hooked: set[str] = set()  # names with a recording hook; copied with the hooks by deepcopy

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
        self._install_hooks()
        maps: dict[str, torch.Tensor] = {}
        _capture.maps = maps
        try:
            features = self.backbone(x)
        finally:
            _capture.maps = None
        return self.head(features), features, maps

    def record_feature_maps(self, names: Iterable[str]) -> None:
        """Also record these submodules of ``backbone`` (dotted names, as ``get_submodule`` takes) in
        ``forward_all(x, feature_maps=True)``, beside ``spec.feature_maps``.

        For a regularizer whose maps the backbone does not declare (DELTA on a bottleneck's conv3),
        called from its ``setup``. A name already recorded is skipped, so no hook is installed twice.
        A copy made later (``ctx.start_model()``) records them too; one made before must be asked itself.
        """
        modules = dict(self.backbone.named_modules())
        for name in [names] if isinstance(names, str) else names:
            if not isinstance(name, str) or not name or name not in modules:
                raise ConfigError(
                    f"config: feature map {name!r} is not a submodule of the backbone"
                    f"{suggest(str(name), [n for n in modules if n])}; name one by its dotted "
                    "name, as nn.Module.get_submodule takes"
                )
            if name not in self._extra_maps and name not in self.spec.feature_maps:
                self._extra_maps.append(name)

    def _install_hooks(self) -> None:
        """One recording hook per map name, installed on first use (hooks survive deepcopy, so a copy records too)."""
        for name in (*self.spec.feature_maps, *self._extra_maps):
            if name not in self._hooked:
                self.backbone.get_submodule(name).register_forward_hook(_record(name))
                self._hooked.add(name)

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Backbone blocks from input to output (the whole backbone as one block if undeclared).

        A block declared as a list of names becomes one ModuleList over them; a name may also be a
        parameter sitting directly on a module (a ViT's ``cls_token``), held by a module of its own.
        """
        if not self.spec.blocks:
            return [("backbone", self.backbone)]
        out = []
        for block in self.spec.blocks:
            if isinstance(block, str):
                out.append((block, self._member(block)))
            else:
                out.append(("+".join(block), nn.ModuleList(self._member(n) for n in block)))
        return out

    def _member(self, name: str) -> nn.Module:
        try:
            return self.backbone.get_submodule(name)
        except AttributeError:
            holding = _Holding(self.backbone.get_parameter(name))
            owner, _, leaf = name.rpartition(".")
            if leaf in getattr(self.backbone.get_submodule(owner), PINNED, ()):  # an adapter pinned it
                setattr(holding, PINNED, frozenset({"parameter"}))
            return holding

    def parameter_counts(self) -> dict[str, int]:
        """``trainable_params``: what the stage can train (every parameter but those an adapter pinned; a head
        strategy's per-epoch freezing aside), and ``total_params``, for the summary."""
        keep, params = pinned(self), list(self.parameters())
        return {
            "trainable_params": sum(p.numel() for p in params if id(p) not in keep),
            "total_params": sum(p.numel() for p in params),
        }

    def no_weight_decay(self) -> set[int]:
        """ids of the backbone parameters its spec exempts from weight decay: names or fnmatch patterns, as
        timm matches its ``no_weight_decay()``."""
        patterns = list(self.spec.no_weight_decay)
        return {id(p) for n, p in self.backbone.named_parameters() if any(fnmatch(n, pat) for pat in patterns)}
