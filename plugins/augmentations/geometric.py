"""Crop, flip and random-resized crop, batched: one gather, or one grid_sample, per batch."""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=64)
def _grid_axes(h: int, w: int, size: tuple[int, int], device, dtype) -> tuple[torch.Tensor, ...]:
    """Pixel -> [-1, 1] (align_corners=False: ``2 * (x + 0.5) / w - 1``) as a scale and shift, and the
    output pixel coordinates, made once per shape."""
    scale = torch.tensor([[2.0 / w], [2.0 / h]], device=device, dtype=dtype)
    ys = torch.arange(size[0], device=device, dtype=dtype).view(1, -1, 1, 1)
    xs = torch.arange(size[1], device=device, dtype=dtype).view(1, 1, -1, 1)
    return scale, scale.view(1, 2) / 2 - 1, ys, xs


def sample(images: torch.Tensor, a: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Each image resampled through its own affine map ``a`` ``[B, 2, 3]``: output pixel (x, y) reads
    input pixel ``a @ (x, y, 1)`` (pixel centres at integers); outside the image reads 0. The map is turned
    into grid_sample's [-1, 1] coordinates first, so the grid itself is one broadcast add (affine_grid's
    batched matmul is many times slower on the CPU for small images)."""
    scale, shift, ys, xs = _grid_axes(*images.shape[2:], tuple(size), images.device, images.dtype)
    t = a.to(images.dtype) * scale
    along_y = torch.addcmul((t[:, :, 2] + shift).view(-1, 1, 1, 2), t[:, :, 1].view(-1, 1, 1, 2), ys)
    grid = torch.addcmul(along_y, t[:, :, 0].view(-1, 1, 1, 2), xs)  # [B, H, W, 2]
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


class RandomResizedCrop(Augmentation):
    """A crop of ``scale`` times the area and ``ratio`` aspect, resized to the model's input: torchvision's
    RandomResizedCrop drawn per image (10 tries, then the whole image with the ratio clamped)."""

    def __init__(self, scale: list[float] = [0.08, 1.0], ratio: list[float] = [3 / 4, 4 / 3]):  # noqa: B006 (copied)
        self.scale = pair(scale, "scale", 0.0, 1.0, True, "area fractions in (0, 1]")
        self.ratio = pair(ratio, "ratio", 0.0, None, True, "aspect ratios > 0")
        self._cache: dict = {}

    def boxes(self, batch: AugmentBatch, h: int, w: int) -> torch.Tensor:
        """``[B, 4]``: top, left, height, width of each image's crop, in pixels (floats), by torchvision's
        rule from one draw of 22 uniforms per image (10 areas, 10 log-ratios, then the corner). All tries
        are one ``[B, 2, 10]`` tensor: few tensor ops, whatever the batch size."""
        low, span, half, limit, fallback = self._constants(h, w, batch.images.device)
        u = batch.rand(22)
        tries = torch.addcmul(low, u[:, :20].view(-1, 2, 10), span)  # (area in pixels, log(width / height))
        tries[:, 0].log_()
        hw = torch.matmul(half, tries).exp_().round_()  # sqrt(area / ratio), sqrt(area * ratio): (h, w)
        fits = (hw.clamp(min=1.0).minimum(limit) == hw).all(1)  # [B, 10]
        first, found = fits.to(torch.uint8).argmax(1), fits.any(1, keepdim=True)
        hw = torch.where(found, hw.gather(2, first.view(-1, 1, 1).expand(-1, 2, 1)).squeeze(2), fallback)
        room = limit.view(1, 2) - hw
        corner = torch.where(found, (room + 1).mul_(u[:, 20:]), room * 0.5).floor_()
        return torch.cat([corner, hw], 1)

    def _constants(self, h: int, w: int, device) -> tuple[torch.Tensor, ...]:
        """The draws' scale and offset, the log-space map to (height, width), the image's (h, w), and
        torchvision's fallback box (the whole image, the ratio clamped into range)."""
        key = (h, w, device)
        if key not in self._cache:
            (s0, s1), (lo, hi) = self.scale, (math.log(self.ratio[0]), math.log(self.ratio[1]))
            fallback_w = min(w, round(h * self.ratio[1])) if w / h > self.ratio[1] else w
            fallback_h = min(h, round(w / self.ratio[0])) if w / h < self.ratio[0] else h
            values = (
                [[h * w * s0], [lo]],
                [[h * w * (s1 - s0)], [hi - lo]],
                [[0.5, -0.5], [0.5, 0.5]],
                [[h], [w]],
                [fallback_h, fallback_w],
            )
            self._cache[key] = tuple(torch.tensor(v, dtype=torch.float32, device=device) for v in values)
        return self._cache[key]

    def __call__(self, batch: AugmentBatch) -> None:
        batch.images = resize_boxes(batch.images, self.boxes(batch, *batch.images.shape[2:]), size=batch.out_size)


def _source(start: torch.Tensor, length: torch.Tensor, out: int, n: int) -> torch.Tensor:
    """``[B, k, out]`` for ``[B, k]`` spans: where each of the ``out`` resized pixels of an axis reads, in
    grid_sample's ``align_corners=True`` coordinates over the ``n`` input pixels: torch's interpolate
    (align_corners=False, no antialias) on each image's span ``[start, start + length)``, clamped into the
    span, so that the bilinear taps never reach past the crop."""
    u = torch.arange(out, device=start.device, dtype=start.dtype)
    length = length.unsqueeze(-1)
    pos = ((u + 0.5) * (length / out) - 0.5).clamp_min_(0).minimum(length - 1).add_(start.unsqueeze(-1))
    return pos.mul_(2.0 / max(n - 1, 1)).sub_(1.0)


def resize_boxes(images: torch.Tensor, *box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box, ``[B, 4]`` (top, left, height, width) or those four ``[B]`` tensors, resized to
    ``size`` (bilinear, as torchvision's resized_crop with antialias=False): one separable grid and one
    grid_sample for the batch (cheaper than per-image crops, or batched matmuls of weights, on small images)."""
    b, _, h, w = images.shape
    oh, ow = size
    boxes = (box[0] if len(box) == 1 else torch.stack(box, 1)).to(images.dtype)
    if (oh, h) == (ow, w):  # both axes at once
        gy, gx = _source(boxes[:, :2], boxes[:, 2:], oh, h).unbind(1)
    else:
        gy, gx = _source(boxes[:, :1], boxes[:, 2:3], oh, h)[:, 0], _source(boxes[:, 1:2], boxes[:, 3:], ow, w)[:, 0]
    grid = torch.stack([gx.view(b, 1, ow).expand(b, oh, ow), gy.view(b, oh, 1).expand(b, oh, ow)], -1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
