"""Random erasing (Zhong et al., AAAI 2020) as timm applies it: per-pixel noise in a random box."""

from __future__ import annotations

import math

import torch

from sftcore.api import Augmentation, AugmentBatch

from ._checks import pair, probability


def box_mask(top, left, height, width, h: int, w: int) -> torch.Tensor:
    """``[B, 1, H, W]`` True inside each image's box."""
    rows = torch.arange(h, device=top.device).view(1, h, 1)
    cols = torch.arange(w, device=top.device).view(1, 1, w)
    inside = (
        (rows >= top.view(-1, 1, 1))
        & (rows < (top + height).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + width).view(-1, 1, 1))
    )
    return inside.unsqueeze(1)


class RandomErasing(Augmentation):
    """With probability ``p``, a box of ``scale`` times the area and ``ratio`` aspect is filled with noise
    that is standard normal after normalisation (timm's ``mode='pixel'``); 10 tries to fit, else nothing."""

    def __init__(self, p: float = 0.25, scale: list[float] = [0.02, 1 / 3], ratio: list[float] = [0.3, 3.3]):  # noqa: B006
        self.p = probability(p)
        self.scale = pair(scale, "scale", 0.0, 1.0, True, "area fractions in (0, 1]")
        self.ratio = pair(ratio, "ratio", 0.0, None, True, "aspect ratios > 0")

    def __call__(self, batch: AugmentBatch) -> None:
        x = batch.images
        b, c, h, w = x.shape
        apply = batch.rand(1).view(-1) < self.p
        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * batch.rand(10))
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        ratio = torch.exp(lo + (hi - lo) * batch.rand(10))
        bh, bw = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
        fits = (bh >= 1) & (bh < h) & (bw >= 1) & (bw < w)
        first = fits.float().argmax(1, keepdim=True)
        bh, bw = bh.gather(1, first).view(-1), bw.gather(1, first).view(-1)
        u = batch.rand(2)
        top, left = ((h - bh + 1) * u[:, 0]).floor(), ((w - bw + 1) * u[:, 1]).floor()
        mask = box_mask(top, left, bh, bw, h, w) & (apply & fits.any(1)).view(-1, 1, 1, 1)
        mean = torch.tensor(batch.mean, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
        std = torch.tensor(batch.std, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
        noise = mean + std * batch.randn(c, h, w)
        batch.images = torch.where(mask, noise, x)
