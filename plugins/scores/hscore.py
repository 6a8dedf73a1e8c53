"""H-score (Bao et al., "An Information-theoretic Approach to Transferability in Task Transfer Learning",
ICIP 2019), as TLlib's ``tllib.ranking.h_score`` computes it: sample covariances and a pseudo-inverse with
the same cutoff, so that rank-deficient features give the reference's numbers."""

from __future__ import annotations

import torch

from sftcore.api import Score

from ._inputs import prepare

RCOND = 1e-15  # the reference's pinv cutoff, relative to the largest singular value


class HScore(Score):
    """tr(cov(f)^+ cov(E[f | y])): the between-class variance of the features over their total variance,
    summed over directions (at most classes - 1). Higher: classes separate more linearly."""

    def __call__(self, features, labels, source_probs=None) -> float:
        x = prepare("hscore", features, labels)
        return hscore(x.features, x.labels, x.classes)


def hscore(f: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    """H-score of float64 features ``[N, D]`` for labels ``y`` in [0, classes)."""
    onehot = torch.nn.functional.one_hot(y, classes).to(f.dtype)
    means = (onehot.T @ f) / onehot.sum(0).unsqueeze(1)  # [C, D] class means
    d = f.shape[1]
    cov_f = torch.cov(f.T).reshape(d, d)  # N - 1 in the denominator, as np.cov; [D, D] even for D = 1
    cov_g = torch.cov(means[y].T).reshape(d, d)  # the covariance of each example's class mean
    return float(torch.trace(torch.linalg.pinv(cov_f, rtol=RCOND) @ cov_g))
