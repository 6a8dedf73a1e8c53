"""TrivialAugmentWide (Mueller & Hutter, ICCV 2021), batched: each image gets its own op and strength.

torchvision's TrivialAugmentWide draws one op for a whole batch tensor; here the op, its strength bin
(31 bins) and its sign are drawn per image. Geometric ops share one grid_sample; colour ops run on the
images that drew them; autocontrast and equalize compute what torchvision's batched v2 kernels do, in
fewer tensor ops."""

from __future__ import annotations

import functools
import itertools
import math
from typing import cast

import torch

from sftcore.api import Augmentation, AugmentBatch

from . import color
from ._checks import integer
from .geometric import sample

OPS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
)
GEOMETRIC = OPS[1:6]
_ENHANCE = {
    "brightness": color.brightness,
    "color": color.saturation,
    "contrast": color.contrast,
    "sharpness": color.sharpness,
}


def _magnitudes(bins: int) -> torch.Tensor:
    """``[ops, bins]``: torchvision's TrivialAugmentWide strength of each op per bin (0: no strength)."""
    table = torch.zeros(len(OPS), bins)
    lin = lambda top: torch.linspace(0.0, top, bins)  # noqa: E731
    for name, row in {
        "shear_x": lin(0.99),
        "shear_y": lin(0.99),
        "translate_x": lin(32.0).trunc(),  # torchvision shifts by int(magnitude) of its float32 bins
        "translate_y": lin(32.0).trunc(),
        "rotate": lin(135.0),
        "solarize": torch.linspace(1.0, 0.0, bins),
        "posterize": 8 - (torch.arange(bins) / ((bins - 1) / 6)).round(),
        **{name: lin(0.99) for name in _ENHANCE},
    }.items():
        table[OPS.index(name)] = row
    return table


SIGNED = torch.tensor([name not in ("posterize", "solarize") for name in OPS])
FIRST_GEOMETRIC, LAST_GEOMETRIC = OPS.index(GEOMETRIC[0]), OPS.index(GEOMETRIC[-1])


@functools.cache
def _map_table(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[ops, 4, 6]``: each op's map (output pixel -> input pixel, as ``[B, 2, 3]`` flattened) as a linear
    function of ``(1, m, cos m, sin m)`` (m in degrees for the cosine and sine): shear about the image's
    top-left corner (torchvision's ``center=[0, 0]``: pixel (0, 0)'s corner, half a pixel before its centre),
    translation in pixels, rotation about the centre, identity for the other ops."""
    t = torch.zeros(len(OPS), 4, 6, dtype=torch.float64)
    t[:, 0] = torch.tensor([1.0, 0, 0, 0, 1, 0])
    for name, k in (("translate_x", 2), ("translate_y", 5)):
        t[OPS.index(name), 1, k] = -1.0
    for name, slope, offset in (("shear_x", 1, 2), ("shear_y", 3, 5)):  # x_in = x + m * (y + 0.5), as F.affine
        t[OPS.index(name), 1, slope], t[OPS.index(name), 1, offset] = 1.0, 0.5
    cx, cy = (w - 1) / 2, (h - 1) / 2
    t[OPS.index("rotate")] = torch.tensor(
        [[0, 0, cx, 0, 0, cy], [0.0] * 6, [1, 0, -cx, 0, 1, -cy], [0, -1, cy, 1, 0, -cx]]
    )
    return t.to(device, dtype)


def _inverse_maps(op: torch.Tensor, m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B, 2, 3]``: output pixel -> input pixel for each image's geometric op (identity for the others)."""
    angle = m * (math.pi / 180)
    features = torch.stack([torch.ones_like(m), m, torch.cos(angle), torch.sin(angle)], 1).unsqueeze(1)
    return torch.bmm(features, _map_table(h, w, m.device, m.dtype)[op]).view(-1, 2, 3)


class TrivialAugment(Augmentation):
    """One op of 14 per image (identity, shear, translate, rotate, brightness, colour, contrast, sharpness,
    posterize, solarize, autocontrast, equalize) at a strength drawn from ``bins`` bins, with a random
    sign for the signed ones: torchvision's TrivialAugmentWide space (translate in pixels, up to 32).

    The batch is sorted by op, so each op runs once on a contiguous slice (a handful of tensor ops per op
    and batch, whatever the batch size), and the images are put back in their places at the end."""

    def __init__(self, bins: int = 31):
        self.bins = integer(bins, "bins", 2, 1000)
        self.table = _magnitudes(self.bins)
        self._strength: dict = {}  # device -> [ops * bins * 2] signed strengths there

    def strengths(self, batch: AugmentBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's op and signed strength, from one draw of (op, bin, sign) out of ``ops * bins * 2``."""
        device = batch.images.device
        if device not in self._strength:
            flipped = torch.where(SIGNED.view(-1, 1), -self.table, self.table)
            self._strength[device] = torch.stack([self.table, flipped], -1).flatten().to(device)
        pick = batch.randint(0, len(OPS) * self.bins * 2, 1).view(-1)
        return pick.div(self.bins * 2, rounding_mode="floor"), self._strength[device][pick]

    def __call__(self, batch: AugmentBatch) -> None:
        x = batch.images
        op, m = self.strengths(batch)
        op, order = torch.sort(op, stable=True)
        ends = list(itertools.accumulate(torch.bincount(op, minlength=len(OPS)).tolist()))
        spans = dict(zip(OPS, zip([0, *ends[:-1]], ends)))
        xs, m = x.index_select(0, order), m[order]  # a new tensor: safe to change slice by slice
        lo, hi = spans[GEOMETRIC[0]][0], spans[GEOMETRIC[-1]][1]
        if hi > lo:
            maps = _inverse_maps(op[lo:hi], m[lo:hi], *x.shape[2:])
            xs[lo:hi] = sample(xs[lo:hi], maps, cast("tuple[int, int]", tuple(x.shape[2:])), mode="nearest")
        self._enhance(xs, m, spans)
        for name in OPS[OPS.index("posterize") :]:
            lo, hi = spans[name]
            if hi > lo:
                part = xs[lo:hi]
                out = self._colour(name, part, m[lo:hi])
                if out is not part:
                    part.copy_(out)
        batch.images = xs.index_select(0, order.argsort())  # (index_copy_ is several times slower)

    @staticmethod
    def _enhance(xs: torch.Tensor, m: torch.Tensor, spans: dict) -> None:
        """Brightness, colour, contrast and sharpness (PIL's ImageEnhance ops, adjacent in OPS) each blend
        with a degenerate image (black, grey, mean grey, smoothed): one blend serves all four."""
        lo, hi = spans["brightness"][0], spans["sharpness"][1]
        if hi == lo:
            return
        part = xs[lo:hi]
        other = torch.zeros_like(part)
        for name, make in color.DEGENERATE.items():
            a, b = (i - lo for i in spans[name])
            if b > a:
                other[a:b] = make(part[a:b])
        color.blend_(part, other, 1.0 + m[lo:hi])

    @staticmethod
    def _colour(name: str, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """One colour op on the images that drew it; it may write into ``x``."""
        if name in _ENHANCE:
            return _ENHANCE[name](x, 1.0 + m)
        if name == "posterize":  # keep the top ``bits`` bits of each 8-bit value
            step = torch.pow(2.0, 8 - m).view(-1, 1, 1, 1)
            return x.mul_(255).round_().div_(step).floor_().mul_(step).mul_(1.0 / 255)
        if name == "solarize":
            return torch.where(x >= m.view(-1, 1, 1, 1), 1.0 - x, x)
        return color.autocontrast_(x) if name == "autocontrast" else color.equalize(x)
