"""LEEP (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations",
ICML 2020), as TLlib's ``tllib.ranking.log_expected_empirical_prediction`` computes it."""

from __future__ import annotations

import torch

from sftcore.api import Score

from ._inputs import prepare


class LEEP(Score):
    """The mean log-likelihood of the target labels under the "expected empirical predictor": the source
    classifier's probabilities over source classes z, mapped to target classes y by the empirical P(y | z).
    Needs ``source_probs``; the features are only checked. Higher (closer to 0) is better."""

    needs_source = True

    def __call__(self, features, labels, source_probs=None) -> float:
        x = prepare("leep", features, labels, source_probs, needs_source=True)
        assert x.source_probs is not None  # prepare raised ScoreUnavailable otherwise
        return leep(x.source_probs, x.labels, x.classes)


def leep(probs: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    """LEEP of source probabilities ``[N, Cs]`` (float64) for labels ``y`` in [0, classes)."""
    n = probs.shape[0]
    joint = torch.zeros(classes, probs.shape[1], dtype=probs.dtype).index_add_(0, y, probs / n)  # P(y, z)
    p_z = joint.sum(0, keepdim=True)
    # a source class no example has any probability of contributes 0 either way (the reference gives NaN)
    given = torch.where(p_z > 0, joint / p_z.clamp_min(torch.finfo(probs.dtype).tiny), 0.0)  # P(y | z)
    expected = (probs @ given.T).gather(1, y.unsqueeze(1)).squeeze(1)  # sum_z P(y_i | z) theta(x_i)_z
    return float(expected.log().mean())
