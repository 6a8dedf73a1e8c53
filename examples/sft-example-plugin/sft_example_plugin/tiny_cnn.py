"""``tiny_cnn``: a small CNN that declares its blocks and feature maps, as every backbone should."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sftcore.api import Backbone, BackboneContext
from sftcore.errors import ConfigError


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


def tiny_cnn(ctx: BackboneContext, width: int = 16, in_chans: int = 3, size: int = 16,
             weights: str | None = None) -> Backbone:
    """A two-stage CNN (conv-bn-relu-pool x2, global pool) that trains in seconds on a CPU"""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"backbone 'tiny_cnn': width must be a positive integer, got {width!r}")
    features = nn.Sequential()
    features.add_module("stage1", _stage(in_chans, width))
    features.add_module("stage2", _stage(width, 2 * width))
    features.add_module("pool", nn.AdaptiveAvgPool2d(1))
    features.add_module("flatten", nn.Flatten())
    if weights is not None and not ctx.random_init:  # the scratch baseline keeps the random init
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"backbone 'tiny_cnn': weights file '{path}' not found")
        features.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return Backbone(
        features=features,
        num_features=2 * width,
        input_size=(in_chans, size, size),
        blocks=["stage1", "stage2"],
        feature_maps=["stage1", "stage2"],
        fixed_input_size=False,  # global pooling takes any spatial size
    )
