"""The seed document's CNN, split into a feature extractor and a head so that any head transfers."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, cast

from torch import nn

from sftcore.api import Backbone, BackboneContext, check_option, read_checkpoint


def validate_options(where: str, in_chans: int = 3, img_size: int = 32, weights: str | None = None) -> None:
    """Type and range of every option, checked when the config is resolved and again when building:
    ``img_size: '16'`` or ``16.5`` would otherwise fail inside torch with a traceback."""
    from sftcore.errors import ConfigError, show

    check_option("in_chans", in_chans, int, low=1, high=64, where=where)
    if isinstance(img_size, int) and not isinstance(img_size, bool) and img_size < 16:
        raise ConfigError(f"{where}: lenet needs img_size >= 16, got {img_size}")
    check_option("img_size", img_size, int, low=16, high=512, where=where)
    if weights is not None and (not isinstance(weights, str) or not weights.strip()):
        raise ConfigError(f"{where}.weights must be the path of a weights file, got {show(weights)}")


def lenet(ctx: BackboneContext, in_chans: int = 3, img_size: int = 32, weights: str | None = None) -> Backbone:
    """conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84 (the head, fc -> classes, is separate)."""
    from sftcore.errors import ConfigError

    validate_options("config: backbone", in_chans, img_size, weights)
    side = ((img_size - 4) // 2 - 4) // 2
    features = nn.Sequential(
        OrderedDict(
            stage1=nn.Sequential(nn.Conv2d(in_chans, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
            stage2=nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
            flatten=nn.Flatten(),
            fc1=nn.Sequential(nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True)),
            fc2=nn.Sequential(nn.Linear(120, 84), nn.ReLU(inplace=True)),
        )
    )
    head, classes, mean, std = None, None, None, None
    if weights and not ctx.random_init:
        state = read_checkpoint(weights)
        try:
            features.load_state_dict(state.backbone)
        except RuntimeError as exc:
            raise ConfigError(
                f"config: backbone.weights '{weights}' does not fit lenet(in_chans={in_chans}, "
                f"img_size={img_size}): {str(exc).splitlines()[0]}"
            ) from None
        if state.head:
            if set(state.head) - {"weight", "bias"} or state.head["weight"].ndim != 2:
                raise ConfigError(
                    f"config: backbone.weights '{weights}': its head is not one linear layer, "
                    "which lenet's runner head needs; use a sftcore lenet checkpoint"
                )
            head = nn.Linear(84, state.head["weight"].shape[0])
            head.load_state_dict(state.head)
        classes, mean, std = state.classes, state.mean, state.std
    return Backbone(
        features=features,
        num_features=84,
        input_size=(in_chans, img_size, img_size),
        head=head,
        source_classes=classes,
        blocks=["stage1", "stage2", "fc1", "fc2"],
        feature_maps=["stage1", "stage2"],
        mean=mean,
        std=std,
    )


cast(Any, lenet).validate_options = validate_options  # a function attribute sftcore reads
