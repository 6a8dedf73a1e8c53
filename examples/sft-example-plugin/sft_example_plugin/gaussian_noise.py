"""``gaussian_noise``: the smallest complete Augmentation, on the float batch."""

from __future__ import annotations

from sftcore.api import Augmentation, AugmentBatch
from sftcore.errors import ConfigError


class GaussianNoise(Augmentation):
    """Add Gaussian pixel noise (std on the [0, 1] scale) to a random share p of the images"""

    moves_pixels_only = False  # it changes pixel values: it runs after the conversion to float in [0, 1]
    mixes_labels = False

    def __init__(self, std: float = 0.03, p: float = 0.5):
        for name, value, top in (("std", std, 1.0), ("p", p, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
                raise ConfigError(f"augmentation 'gaussian_noise': {name} must be a number in [0, {top:g}], "
                                  f"got {value!r}")
        self.std, self.p = float(std), float(p)

    def __call__(self, batch: AugmentBatch) -> None:
        x = batch.images  # float [B, C, H, W] in [0, 1]
        # batch.rand/randn draw from the stage's generator for the whole global batch: a resumed run and
        # every rank under torch.distributed get the same noise as one uninterrupted process
        chosen = (batch.rand(1) < self.p).view(-1, 1, 1, 1)
        noise = batch.randn(*x.shape[1:]).to(x.dtype) * self.std
        batch.images = (x + noise * chosen).clamp_(0.0, 1.0)
