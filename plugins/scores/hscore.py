"""H-score (Bao et al., "An Information-theoretic Approach to Transferability in Task Transfer Learning",
ICIP 2019), as TLlib's ``tllib.ranking.h_score`` computes it: sample covariances and a pseudo-inverse with
the same cutoff, so that rank-deficient features give the reference's numbers. With fewer examples than
feature dimensions (N - 1 <= D) the reference gives classes - 1 whatever the features are: the score is then
unavailable (null in `sft rank`, with its reason) rather than a tie that looks like a ranking."""

from __future__ import annotations

import torch

from sftcore.api import Score
from sftcore.errors import ScoreUnavailable

from ._inputs import prepare

RCOND = 1e-15  # the reference's pinv cutoff, relative to the largest singular value


class HScore(Score):
    """tr(cov(f)^+ cov(E[f | y])): the between-class variance of the features over their total variance,
    summed over directions (at most classes - 1). Higher: classes separate more linearly."""

    def __call__(self, features, labels, source_probs=None) -> float:
        x = prepare("hscore", features, labels)
        n, d = x.features.shape
        if d >= n - 1:  # the centred examples span at most N - 1 directions, all of them in the features then
            raise ScoreUnavailable(
                f"score 'hscore' is classes - 1 for any features when they have at least N - 1 dimensions "
                f"({d} >= {n} - 1), so it cannot rank them; score at least {d + 2} examples, or use another score"
            )
        return hscore(x.features, x.labels, x.classes)


def hscore(f: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    """H-score of float64 features ``[N, D]`` for labels ``y`` in [0, classes)."""
    onehot = torch.nn.functional.one_hot(y, classes).to(f.dtype)
    means = (onehot.T @ f) / onehot.sum(0).unsqueeze(1)  # [C, D] class means
    d = f.shape[1]
    cov_f = torch.cov(f.T).reshape(d, d)  # N - 1 in the denominator, as np.cov; [D, D] even for D = 1
    cov_g = torch.cov(means[y].T).reshape(d, d)  # the covariance of each example's class mean
    return float(torch.trace(torch.linalg.pinv(cov_f, rtol=RCOND) @ cov_g))
