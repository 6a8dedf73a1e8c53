"""``bss``: Batch Spectral Shrinkage (Chen et al., NeurIPS 2019).

Fine-tuning on few labels keeps spectral components of the features that the target task does
not need and that carry negative transfer; BSS shrinks the smallest ones, batch by batch.
"""

from __future__ import annotations

import torch

from sftcore.api import Regularizer, Step
from sftcore.errors import ConfigError


class BSS(Regularizer):
    """BSS: eta * sum of the k smallest squared singular values of the batch features (Chen et al., NeurIPS 2019)

    ``eta=0.001, k=1`` are the published defaults (the paper and TLlib's ``bss.py``). The SVD runs
    in float32 with autocast off: half-precision SVD is unsupported or inaccurate. A batch with at
    most ``k`` examples (a short last batch) has no small directions to shrink, only the ones
    that carry the signal, so it adds 0; TLlib avoids such batches with ``drop_last``.
    """

    def __init__(self, eta: float = 0.001, k: int = 1):
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0:
            raise ConfigError(f"config: regularizer bss: eta must be a number >= 0, got {eta!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"config: regularizer bss: k must be an integer >= 1, got {k!r}")
        self.eta, self.k = float(eta), k

    def penalty(self, step: Step) -> torch.Tensor:
        features = step.features
        if min(features.shape) <= self.k:
            return features.new_zeros((), dtype=torch.float32)
        with torch.autocast(features.device.type, enabled=False):
            singular = torch.linalg.svdvals(features.float())  # descending
            return self.eta * singular[-self.k:].pow(2).sum()
