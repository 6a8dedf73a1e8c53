"""Mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019): each image is mixed with the image
at the mirrored place in the batch (timm's ``x.flip(0)`` pairing), with its own mixing weight (timm's
``mode='elem'``), and the targets become class probabilities. Under torch.distributed each rank mixes
within its share of the batch, as timm does."""

from __future__ import annotations

import math

import torch

from sftcore.api import Augmentation, AugmentBatch

from ._checks import number, probability
from .erasing import box_mask

_TRIES = 16  # Marsaglia-Tsang accepts > 95 % of draws at shape >= 1: 16 tries all fail with p < 1e-20


def _gamma(batch: AugmentBatch, shape: float) -> torch.Tensor:
    """Gamma(shape) per image from the batch's generator (Marsaglia & Tsang 2000; shape < 1 boosted)."""
    a = shape + 1.0 if shape < 1 else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z, u = batch.randn(_TRIES), batch.rand(_TRIES)
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (torch.log(u.clamp_min(1e-30)) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    g = (d * v).gather(1, ok.float().argmax(1, keepdim=True)).view(-1)
    if shape < 1:
        g = g * batch.rand(1).view(-1).clamp_min(1e-30) ** (1.0 / shape)
    return g


def beta(batch: AugmentBatch, alpha: float) -> torch.Tensor:
    """Beta(alpha, alpha) per image, on the device, from the batch's generator."""
    x, y = _gamma(batch, alpha), _gamma(batch, alpha)
    return x / (x + y).clamp_min(1e-30)


class _Mixing(Augmentation):
    mixes_labels = True

    def __init__(self, alpha: float, p: float = 1.0):
        self.alpha = number(alpha, "alpha", 0.0, low_open=True, what="a number > 0 (the Beta distribution's)")
        self.p = probability(p)

    def weights(self, batch: AugmentBatch) -> torch.Tensor:
        """Each image's own share (1: untouched, with probability 1 - p)."""
        lam = beta(batch, self.alpha)
        return torch.where(batch.rand(1).view(-1) < self.p, lam, torch.ones_like(lam))

    @staticmethod
    def mix_targets(batch: AugmentBatch, lam: torch.Tensor) -> None:
        t = batch.soft_targets()
        batch.targets = lam.view(-1, 1) * t + (1 - lam.view(-1, 1)) * t.flip(0)


class Mixup(_Mixing):
    """``lam * x + (1 - lam) * partner``, lam ~ Beta(alpha, alpha) per image, with probability ``p``."""

    def __init__(self, alpha: float = 0.2, p: float = 1.0):
        super().__init__(alpha, p)

    def __call__(self, batch: AugmentBatch) -> None:
        lam = self.weights(batch)
        x = batch.images
        batch.images = torch.lerp(x.flip(0), x, lam.view(-1, 1, 1, 1).to(x.dtype))  # lam * x + (1 - lam) * partner
        self.mix_targets(batch, lam)


class CutMix(_Mixing):
    """A box of about ``1 - lam`` of the area comes from the partner; the targets mix by the box's
    actual (clipped) area."""

    def __init__(self, alpha: float = 1.0, p: float = 1.0):
        super().__init__(alpha, p)

    def __call__(self, batch: AugmentBatch) -> None:
        lam = self.weights(batch)
        x = batch.images
        h, w = x.shape[2:]
        side = torch.sqrt(1.0 - lam)
        cy, cx = (batch.rand(2) * torch.tensor([h, w], device=x.device)).unbind(1)
        top, bottom = (cy - side * h / 2).round().clamp(0, h), (cy + side * h / 2).round().clamp(0, h)
        left, right = (cx - side * w / 2).round().clamp(0, w), (cx + side * w / 2).round().clamp(0, w)
        mask = box_mask(top, left, bottom - top, right - left, h, w)
        batch.images = torch.where(mask, x.flip(0), x)
        self.mix_targets(batch, 1.0 - (bottom - top) * (right - left) / (h * w))
