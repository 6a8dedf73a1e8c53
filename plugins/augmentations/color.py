"""Colour operations with a strength per image, on float batches in [0, 1], and ColorJitter built from them."""

from __future__ import annotations

import torch

from sftcore.api import Augmentation, AugmentBatch

from ._checks import number

_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, with torchvision's rounding
# RGB <-> YIQ: a hue shift is a rotation of the IQ plane
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` luma of RGB images (single-channel images are their own)."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``other + factor * (x - other)``, clamped: factor 1 keeps ``x``, 0 gives ``other`` (PIL's ImageEnhance)."""
    return (other + per_image(factor) * (x - other)).clamp_(0.0, 1.0)


def brightness(x, factor):
    return (x * per_image(factor)).clamp_(0.0, 1.0)


def contrast(x, factor):
    return blend(x, grey(x).mean((1, 2, 3), keepdim=True), factor)


def saturation(x, factor):
    return blend(x, grey(x), factor) if x.shape[1] == 3 else x


def hue(x, shift):
    """Rotate hue by ``shift`` turns (-0.5..0.5) in YIQ space; single-channel images are unchanged."""
    if x.shape[1] != 3:
        return x
    yiq = torch.tensor(_YIQ, device=x.device, dtype=x.dtype)
    angle = 2 * torch.pi * shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(len(x), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 2, 2] = 1, cos, cos
    rot[:, 1, 2], rot[:, 2, 1] = -sin, sin
    m = torch.linalg.inv(yiq) @ rot @ yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", m, x).clamp_(0.0, 1.0)


def sharpness(x, factor):
    """Blend with PIL's smoothing filter (3x3, centre weight 5); the border pixels stay as they are."""
    smooth = x.clone()  # the kernel is 1/13 everywhere plus 4/13 at the centre: a 3x3 mean, far cheaper than a
    mean = torch.nn.functional.avg_pool2d(x, 3, stride=1)  # depthwise convolution on the CPU
    smooth[:, :, 1:-1, 1:-1] = mean.mul_(9.0 / 13.0).add_(x[:, :, 1:-1, 1:-1], alpha=4.0 / 13.0)
    return blend(x, smooth, factor)


class ColorJitter(Augmentation):
    """Brightness, contrast, saturation and hue factors drawn per image, applied in that order
    (torchvision shuffles the order per call; one order per batch would not be per image anyway)."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.0):
        self.brightness = number(brightness, "brightness", 0.0, what="a number >= 0")
        self.contrast = number(contrast, "contrast", 0.0, what="a number >= 0")
        self.saturation = number(saturation, "saturation", 0.0, what="a number >= 0")
        self.hue = number(hue, "hue", 0.0, 0.5, what="a number from 0 to 0.5")

    def __call__(self, batch: AugmentBatch) -> None:
        x = batch.images
        u = batch.rand(4)
        for k, (strength, op) in enumerate(((self.brightness, brightness), (self.contrast, contrast),
                                            (self.saturation, saturation))):
            if strength:
                low = max(0.0, 1.0 - strength)
                x = op(x, low + (1.0 + strength - low) * u[:, k])
        if self.hue:
            x = hue(x, (2 * u[:, 3] - 1) * self.hue)
        batch.images = x
