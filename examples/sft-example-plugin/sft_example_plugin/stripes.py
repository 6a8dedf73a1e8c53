"""``stripes``: tiny procedural images, classified by the orientation of their stripes."""

from __future__ import annotations

import math

import torch

from sftcore.api import Augment, DataSplits, DatasetContext, ImageSet
from sftcore.errors import ConfigError

CLASSES = ["horizontal", "vertical", "diagonal", "antidiagonal"]
_ANGLES = [0.0, 90.0, 45.0, 135.0]  # stripe orientation of each class, in degrees


def _make(per_class: int, size: int, noise: float, generator: torch.Generator) -> ImageSet:
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    n = len(labels)
    angle = torch.tensor(_ANGLES)[labels] * (math.pi / 180.0)
    angle = angle + (torch.rand(n, generator=generator) - 0.5) * (math.pi / 18)  # +-5 degrees jitter
    period = 3.0 + torch.rand(n, generator=generator) * (size / 4)  # pixels per stripe pair
    phase = torch.rand(n, generator=generator) * 2 * math.pi
    coords = torch.arange(size, dtype=torch.float32)
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    # the stripes run along `angle`: intensity varies across it
    t = -x * torch.sin(angle).view(n, 1, 1) + y * torch.cos(angle).view(n, 1, 1)
    on = (torch.sin(2 * math.pi * t / period.view(n, 1, 1) + phase.view(n, 1, 1)) > 0).float()
    fg = torch.rand(n, 3, 1, 1, generator=generator)  # a random colour pair per image
    bg = torch.rand(n, 3, 1, 1, generator=generator)
    img = on.unsqueeze(1) * fg + (1 - on.unsqueeze(1)) * bg
    img = img + noise * torch.randn(img.shape, generator=generator)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    order = torch.randperm(n, generator=generator)
    return ImageSet(images[order].contiguous(), labels[order].to(torch.int64))


def stripes(ctx: DatasetContext, train_per_class: int = 32, test_per_class: int = 16, size: int = 16,
            noise: float = 0.1) -> DataSplits:
    """Procedural striped images (4 classes by stripe orientation), generated from the seed"""
    for key, value, low in (("train_per_class", train_per_class, 1), ("test_per_class", test_per_class, 0),
                            ("size", size, 4)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"dataset 'stripes': {key} must be an integer >= {low}, got {value!r}")
    if not isinstance(noise, (int, float)) or noise < 0:
        raise ConfigError(f"dataset 'stripes': noise must be a number >= 0, got {noise!r}")
    # Train and test come from separate streams of the seed, so test_per_class never changes train.
    train = _make(train_per_class, size, float(noise), torch.Generator().manual_seed(ctx.seed * 2 + 1))
    test = _make(test_per_class, size, float(noise), torch.Generator().manual_seed(ctx.seed * 2 + 2))
    # Flips and crops would change a stripe's orientation class (a flip swaps the diagonals).
    return DataSplits(classes=list(CLASSES), train=train, test=test if test_per_class else None,
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), augment=Augment())
