"""NCE (Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019), as TLlib's
``tllib.ranking.negative_conditional_entropy`` computes it, with the source labels taken as the argmax of the
source classifier's probabilities."""

from __future__ import annotations

import torch

from sftcore.api import Score

from ._inputs import prepare

EPSILON = 1e-20  # added to P(y | z) before the log, as in the reference


class NCE(Score):
    """Minus the conditional entropy H(Y | Z) of the target labels Y given the source classifier's hard labels
    Z (the argmax of ``source_probs``), from their empirical joint distribution. Needs ``source_probs``; the
    features are only checked. Higher (closer to 0) is better."""

    needs_source = True

    def __call__(self, features, labels, source_probs=None) -> float:
        x = prepare("nce", features, labels, source_probs, needs_source=True)
        assert x.source_probs is not None  # prepare raised ScoreUnavailable otherwise
        return nce(x.source_probs.argmax(1), x.labels, x.classes, x.source_probs.shape[1])


def nce(z: torch.Tensor, y: torch.Tensor, classes: int, source_classes: int) -> float:
    """NCE of source labels ``z`` in [0, source_classes) for target labels ``y`` in [0, classes)."""
    counts = torch.zeros(classes * source_classes, dtype=torch.float64)
    counts.index_add_(0, y * source_classes + z, torch.ones_like(y, dtype=torch.float64))
    joint = counts.view(classes, source_classes) / y.shape[0]  # P(y, z)
    p_z = joint.sum(0)
    seen = p_z != 0
    given = joint[:, seen] / p_z[seen] + EPSILON  # P(y | z) for the source classes that occur
    entropy = -(given * given.log()).sum(0)  # H(Y | Z = z)
    return float(-(entropy * p_z[seen]).sum())
