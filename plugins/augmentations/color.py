"""Colour operations with a strength per image, on float batches in [0, 1], and ColorJitter built from them."""

from __future__ import annotations

import functools

import torch

from sftcore.api import Augmentation, AugmentBatch

from ._checks import number

_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, with torchvision's rounding
# RGB <-> YIQ: a hue shift is a rotation of the IQ plane
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)


@functools.cache
def _luma(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(_LUMA, device=device, dtype=dtype)


def grey(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` luma of RGB images (single-channel images are their own)."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    return (x * _luma(x.device, x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``other + factor * (x - other)``, clamped: factor 1 keeps ``x``, 0 gives ``other`` (PIL's ImageEnhance)."""
    return (other + per_image(factor) * (x - other)).clamp_(0.0, 1.0)


def blend_(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``blend`` written into ``x``."""
    return x.sub_(other).mul_(per_image(factor)).add_(other).clamp_(0.0, 1.0)


def brightness(x, factor):
    return (x * per_image(factor)).clamp_(0.0, 1.0)


def mean_grey(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, 1, 1]``: each image's mean luma (luma is linear, so the channel means are weighed)."""
    if x.shape[1] != 3:
        return x.mean((1, 2, 3), keepdim=True)
    return per_image(x.mean((2, 3)) @ _luma(x.device, x.dtype))


def contrast(x, factor):
    return blend(x, mean_grey(x), factor)


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


def smoothed(x: torch.Tensor) -> torch.Tensor:
    """PIL's smoothing filter (3x3, centre weight 5); the border pixels stay as they are."""
    smooth = x.clone()  # the kernel is 1/13 everywhere plus 4/13 at the centre: a 3x3 sum, taken as two
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]  # separable sums of shifted slices (cheaper on the CPU
    box = rows[:, :, :, :-2] + rows[:, :, :, 1:-1] + rows[:, :, :, 2:]  # than avg_pool2d or a convolution)
    smooth[:, :, 1:-1, 1:-1] = box.mul_(1.0 / 13.0).add_(x[:, :, 1:-1, 1:-1], alpha=4.0 / 13.0)
    return smooth


def sharpness(x, factor):
    return blend(x, smoothed(x), factor)


def autocontrast_(x: torch.Tensor) -> torch.Tensor:
    """Each channel stretched to [0, 1] (a flat channel is left alone), in place: torchvision's autocontrast."""
    low, high = torch.aminmax(x.flatten(2), dim=2, keepdim=True)
    span = high - low
    flat = span == 0
    low, span = low.masked_fill_(flat, 0.0), span.masked_fill_(flat, 1.0)
    return x.sub_(low.unsqueeze(-1)).div_(span.unsqueeze(-1)).clamp_(0.0, 1.0)


#: the image each ImageEnhance op blends with, but black (brightness)
DEGENERATE = {"color": lambda x: grey(x) if x.shape[1] == 3 else x, "contrast": mean_grey, "sharpness": smoothed}


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize of each image and channel, as torchvision's kernel computes it (from
    ``x * 255.999`` truncated to 8 bits, result in k/255), with one bincount for the whole batch."""
    n, c, h, w = x.shape
    v = x.mul(255.999).clamp_(0, 255).long().view(n * c, h * w)  # (an earlier augmentation may leave [0, 1])
    offsets = torch.arange(0, n * c * 256, 256, device=x.device).view(-1, 1)
    hist = torch.bincount((v + offsets).view(-1), minlength=n * c * 256).view(n * c, 256)
    step = (h * w - hist.gather(1, v.amax(1, keepdim=True))) // 255  # PIL: pixels below the top value / 255
    lut = (hist.cumsum(1) - hist + step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device))  # lut[k]: from the count below k
    return lut.to(x.dtype).mul_(1.0 / 255).gather(1, v).view(n, c, h, w)  # step 0: unchanged (8 bits)


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
        for k, (strength, op) in enumerate(
            ((self.brightness, brightness), (self.contrast, contrast), (self.saturation, saturation))
        ):
            if strength:
                low = max(0.0, 1.0 - strength)
                x = op(x, low + (1.0 + strength - low) * u[:, k])
        if self.hue:
            x = hue(x, (2 * u[:, 3] - 1) * self.hue)
        batch.images = x
