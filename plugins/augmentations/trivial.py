"""TrivialAugmentWide (Mueller & Hutter, ICCV 2021), batched: each image gets its own op and strength.

torchvision's TrivialAugmentWide draws one op for a whole batch tensor; here the op, its strength bin
(31 bins) and its sign are drawn per image. Geometric ops share one grid_sample; colour ops run on the
images that drew them; equalize and autocontrast are torchvision's batched v2 kernels."""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF

from sftcore.api import Augmentation, AugmentBatch

from . import color
from ._checks import integer
from .geometric import sample

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
       "sharpness", "posterize", "solarize", "autocontrast", "equalize")
GEOMETRIC = OPS[1:6]
_ENHANCE = {"brightness": color.brightness, "color": color.saturation, "contrast": color.contrast,
            "sharpness": color.sharpness}


def _magnitudes(bins: int) -> torch.Tensor:
    """``[ops, bins]``: torchvision's TrivialAugmentWide strength of each op per bin (0: no strength)."""
    table = torch.zeros(len(OPS), bins)
    lin = lambda top: torch.linspace(0.0, top, bins)  # noqa: E731
    for name, row in {"shear_x": lin(0.99), "shear_y": lin(0.99), "translate_x": lin(32.0),
                      "translate_y": lin(32.0), "rotate": lin(135.0), "solarize": torch.linspace(1.0, 0.0, bins),
                      "posterize": 8 - (torch.arange(bins) / ((bins - 1) / 6)).round(),
                      **{name: lin(0.99) for name in _ENHANCE}}.items():
        table[OPS.index(name)] = row
    return table


SIGNED = torch.tensor([name not in ("posterize", "solarize") for name in OPS])


def _inverse_maps(op: torch.Tensor, m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B, 2, 3]``: output pixel -> input pixel for each image's geometric op (shear about the top-left
    corner, translation in pixels, rotation about the centre; identity for the other ops)."""
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    pick = lambda name: torch.where(op == OPS.index(name), m, zero)  # noqa: E731
    angle = pick("rotate") * (math.pi / 180)
    cos, sin, cx, cy = torch.cos(angle), torch.sin(angle), (w - 1) / 2, (h - 1) / 2
    rot = op == OPS.index("rotate")
    a = torch.stack([one, -pick("shear_x"), -pick("translate_x"), -pick("shear_y"), one, -pick("translate_y")], 1)
    r = torch.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy], 1)
    return torch.where(rot.view(-1, 1), r, a).view(-1, 2, 3)


class TrivialAugment(Augmentation):
    """One op of 14 per image (identity, shear, translate, rotate, brightness, colour, contrast, sharpness,
    posterize, solarize, autocontrast, equalize) at a strength drawn from ``bins`` bins, with a random
    sign for the signed ones: torchvision's TrivialAugmentWide space (translate in pixels, up to 32)."""

    def __init__(self, bins: int = 31):
        self.bins = integer(bins, "bins", 2, 1000)
        self.table = _magnitudes(self.bins)

    def __call__(self, batch: AugmentBatch) -> None:
        x = batch.images
        h, w = x.shape[2:]
        op, bin_ = batch.randint(0, len(OPS), 1).view(-1), batch.randint(0, self.bins, 1).view(-1)
        sign = torch.where(batch.rand(1).view(-1) < 0.5, -1.0, 1.0)
        table, signed = self.table.to(x.device), SIGNED.to(x.device)
        m = table[op, bin_] * torch.where(signed[op], sign, 1.0)
        geo = (op >= OPS.index(GEOMETRIC[0])) & (op <= OPS.index(GEOMETRIC[-1]))
        if geo.any():
            x = x.clone()
            x[geo] = sample(x[geo], _inverse_maps(op[geo], m[geo], h, w), (h, w), mode="nearest")
        for name in OPS[6:]:
            chosen = op == OPS.index(name)
            if chosen.any():
                x[chosen] = self._colour(name, x[chosen], m[chosen])
        batch.images = x

    @staticmethod
    def _colour(name: str, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if name in _ENHANCE:
            return _ENHANCE[name](x, 1.0 + m)
        if name == "posterize":  # keep the top ``bits`` bits of each 8-bit value
            step = (2.0 ** (8 - m)).view(-1, 1, 1, 1)
            return (torch.floor((x * 255).round() / step) * step) / 255
        if name == "solarize":
            return torch.where(x >= m.view(-1, 1, 1, 1), 1.0 - x, x)
        return TF.autocontrast(x) if name == "autocontrast" else TF.equalize(x)
