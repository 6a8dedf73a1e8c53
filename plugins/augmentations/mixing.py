"""Mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019): each image is mixed with the image
at the mirrored place in the batch (timm's ``x.flip(0)`` pairing; the batch may be several training
batches augmented as one, ``augment_chunk``), with its own mixing weight (timm's
``mode='elem'``), and the targets become class probabilities. Under torch.distributed each rank mixes
within its share of the batch, as timm does."""

from __future__ import annotations

import torch

from sftcore.api import Augmentation, AugmentBatch

from ._checks import number, probability
from .erasing import box_mask

# Beta(1000, 1000) draws 0.5 +- 0.011: a larger alpha changes nothing, and torch's sampler fails far beyond it
MAX_ALPHA = 1000.0


def beta(batch: AugmentBatch, alpha: float) -> torch.Tensor:
    """Beta(alpha, alpha) per image, on the device, from the batch's generator: the first share of a
    two-way Dirichlet (torch's own gamma sampler, as torch.distributions.Beta uses; one op for the batch),
    drawn for the whole global batch like ``batch.rand``."""
    lo, hi, size = batch.part
    concentration = torch.full((size, 2), float(alpha), device=batch.images.device)
    return torch._sample_dirichlet(concentration, generator=batch.generator)[lo:hi, 0]


class _Mixing(Augmentation):
    mixes_labels = True

    def __init__(self, alpha: float, p: float = 1.0):
        self.alpha = number(
            alpha,
            "alpha",
            0.0,
            MAX_ALPHA,
            low_open=True,
            what=f"a number > 0 and <= {MAX_ALPHA:g} (Beta(alpha, alpha))",
        )
        self.p = probability(p)

    def weights(self, batch: AugmentBatch) -> torch.Tensor:
        """Each image's own share (1: untouched, with probability 1 - p)."""
        lam = beta(batch, self.alpha)
        return lam if self.p == 1.0 else torch.where(batch.rand(1).view(-1) < self.p, lam, torch.ones_like(lam))

    @staticmethod
    def mix_targets(batch: AugmentBatch, lam: torch.Tensor) -> None:
        t = batch.soft_targets()
        batch.targets = torch.lerp(t.flip(0), t, lam.view(-1, 1).to(t.dtype))  # lam * t + (1 - lam) * partner


class Mixup(_Mixing):
    """``lam * x + (1 - lam) * partner``, lam ~ Beta(alpha, alpha) per image, with probability ``p``."""

    def __init__(self, alpha: float = 0.2, p: float = 1.0):
        super().__init__(alpha, p)

    def __call__(self, batch: AugmentBatch) -> None:
        lam = self.weights(batch)
        x = batch.images
        # lam * x + (1 - lam) * partner, written into x (a batch's images may be changed in place)
        batch.images = x.lerp_(x.flip(0), (1 - lam).view(-1, 1, 1, 1).to(x.dtype))
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
