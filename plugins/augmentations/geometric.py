"""Crop, flip and random-resized crop, batched: one gather, or two small matmuls, per batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sftcore.api import Augmentation, AugmentBatch

from ._checks import integer, pair, probability


class Crop(Augmentation):
    """A random crop of the original size after zero padding by ``padding`` pixels on every side."""

    moves_pixels_only = True

    def __init__(self, padding: int = 4):
        self.padding = integer(padding, "padding", 0, 1024)

    def __call__(self, batch: AugmentBatch) -> None:
        x, p = batch.images, self.padding
        if not p:
            return
        b, c, h, w = x.shape
        rows = torch.arange(h, device=x.device).expand(b, h) + batch.randint(0, 2 * p + 1, 1)
        cols = torch.arange(w, device=x.device).expand(b, w) + batch.randint(0, 2 * p + 1, 1)
        index = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        batch.images = F.pad(x, (p, p, p, p)).reshape(b, c, -1).gather(2, index).view(b, c, h, w)


class Flip(Augmentation):
    """A horizontal flip of each image with probability ``p``."""

    moves_pixels_only = True

    def __init__(self, p: float = 0.5):
        self.p = probability(p)

    def __call__(self, batch: AugmentBatch) -> None:
        flip = batch.rand(1) < self.p
        x = batch.images
        b, c, h, w = x.shape
        cols = torch.arange(w, device=x.device).expand(b, w)
        cols = torch.where(flip, cols.flip(1), cols)  # one gather over columns: cheaper than where over pixels
        batch.images = x.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def sample(images: torch.Tensor, a: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Each image resampled through its own affine map ``a`` ``[B, 2, 3]``: output pixel (x, y) reads
    input pixel ``a @ (x, y, 1)`` (pixel centres at integers); outside the image reads 0. The grid is built
    elementwise (no batched matmul): on small images the op count, not the arithmetic, is the cost."""
    h, w = images.shape[2:]
    ys = torch.arange(size[0], device=images.device, dtype=images.dtype).view(1, -1, 1)
    xs = torch.arange(size[1], device=images.device, dtype=images.dtype).view(1, 1, -1)
    c = a.to(images.dtype).view(-1, 6, 1, 1).unbind(1)
    gx = (c[0] * xs + c[1] * ys + c[2]) * (2.0 / w) + (1.0 / w - 1.0)  # pixel -> [-1, 1], align_corners=False
    gy = (c[3] * xs + c[4] * ys + c[5]) * (2.0 / h) + (1.0 / h - 1.0)
    grid = torch.stack([gx, gy], -1)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


class RandomResizedCrop(Augmentation):
    """A crop of ``scale`` times the area and ``ratio`` aspect, resized to the model's input: torchvision's
    RandomResizedCrop drawn per image (10 tries, then the whole image with the ratio clamped)."""

    def __init__(self, scale: list[float] = [0.08, 1.0], ratio: list[float] = [3 / 4, 4 / 3]):  # noqa: B006 (copied)
        self.scale = pair(scale, "scale", 0.0, 1.0, True, "area fractions in (0, 1]")
        self.ratio = pair(ratio, "ratio", 0.0, None, True, "aspect ratios > 0")

    def boxes(self, batch: AugmentBatch, h: int, w: int) -> torch.Tensor:
        """``[B, 4]``: top, left, height, width of each image's crop, in pixels (floats)."""
        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * batch.rand(10))
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        ratio = torch.exp(lo + (hi - lo) * batch.rand(10))
        cw, ch = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
        fits = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
        first = fits.float().argmax(1, keepdim=True)
        found = fits.any(1)
        fallback_w = min(w, round(h * self.ratio[1])) if w / h > self.ratio[1] else w
        fallback_h = min(h, round(w / self.ratio[0])) if w / h < self.ratio[0] else h
        cw = torch.where(found, cw.gather(1, first).squeeze(1), float(fallback_w))
        ch = torch.where(found, ch.gather(1, first).squeeze(1), float(fallback_h))
        u = batch.rand(2)
        top = torch.where(found, ((h - ch + 1) * u[:, 0]).floor(), ((h - ch) / 2).floor())
        left = torch.where(found, ((w - cw + 1) * u[:, 1]).floor(), ((w - cw) / 2).floor())
        return torch.stack([top, left, ch, cw], 1)

    def __call__(self, batch: AugmentBatch) -> None:
        x = batch.images
        top, left, ch, cw = self.boxes(batch, *x.shape[2:]).unbind(1)
        batch.images = resize_boxes(x, top, left, ch, cw, batch.out_size)


def _tent(start: torch.Tensor, length: torch.Tensor, n: int, out: int, dtype) -> torch.Tensor:
    """``[B, out, n]``: bilinear weights of the ``out`` resized pixels over the ``n`` input pixels of one
    axis, for each image's span ``[start, start + length)``: torch's interpolate (align_corners=False, no
    antialias) on the cropped span, source positions clamped to it."""
    u = torch.arange(out, device=start.device, dtype=dtype).view(1, -1)
    start, length = start.to(dtype).view(-1, 1), length.to(dtype).view(-1, 1)
    src = start + ((u + 0.5) * (length / out) - 0.5).clamp_min(0).minimum(length - 1)
    j = torch.arange(n, device=start.device, dtype=dtype).view(1, 1, -1)
    return (1 - (src.unsqueeze(-1) - j).abs()).clamp_min_(0)


def resize_boxes(images: torch.Tensor, top, left, height, width, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box resized to ``size``: one row map and one column map per image, applied as two
    small batched matmuls (far fewer ops than a per-pixel grid on small images)."""
    b, c, h, w = images.shape
    (oh, ow), dtype = size, images.dtype
    rows, cols = _tent(top, height, h, oh, dtype), _tent(left, width, w, ow, dtype).transpose(1, 2)
    wide = torch.bmm(images.reshape(b, c * h, w), cols).view(b, c, h, ow)  # columns first: [B, C*h, ow]
    out = torch.bmm(rows, wide.transpose(1, 2).reshape(b, h, c * ow))  # then rows: [B, oh, C*ow]
    return out.view(b, oh, c, ow).transpose(1, 2).contiguous()
