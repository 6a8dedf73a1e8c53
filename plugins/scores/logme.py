"""LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021;
"Ranking and Tuning Pre-trained Models", JMLR 2022), as thuml/LogME's ``LogME.fit`` computes it for
classification: the fixed-point iteration, its stopping rule and its 1e-5 guards, so that the numbers match
the authors' (tests/rank checks them), vectorised over classes instead of a loop.

One deliberate difference: log|A| counts all D eigenvalues of A = alpha I + beta F^T F, the D - k beyond the
rank of F being alpha, as thuml/LogME issue #23 (fix in its pull request #24, not merged at the reference
commit) points out. The reference drops them, which inflates the score when D > N (few examples, wide
features) by (D - k) / 2N * log(alpha); with it LogME agrees with TLlib's implementation of the ICML iteration.
For features of full column rank (N > D, the usual case) the two are the same number."""

from __future__ import annotations

import math

import torch

from sftcore.api import Score

from ._inputs import prepare

ITERATIONS = 11  # the reference's cap; it typically stops after two or three
TOLERANCE = 1e-3  # stop when alpha/beta moves by at most this fraction
GUARD = 1e-5  # added to the denominators, as in the reference
RANK_CUTOFF = 1e-10  # singular values at or below this are dropped (the reference's truncated SVD, N > D)


class LogME(Score):
    """Mean over classes of the log maximum evidence, per example, of a Bayesian linear regression from the
    features to the class's one-hot column (prior precision alpha, noise precision beta, both maximised).
    Higher: the labels are a simpler linear function of the features."""

    def __call__(self, features, labels, source_probs=None) -> float:
        x = prepare("logme", features, labels)
        return logme(x.features, x.labels, x.classes)


def _spectrum(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, singular values) of f, as the reference gets them: for N > D from the eigenproblem of f^T f
    (cheaper), dropping the zero singular values; otherwise a thin SVD of f, all kept."""
    n, d = f.shape
    if n <= d:
        u, s, _ = torch.linalg.svd(f, full_matrices=False)
        return u, s
    _, s2, vh = torch.linalg.svd(f.T @ f)
    s = s2.sqrt()
    k = int((s > RANK_CUTOFF).sum())
    return (f @ vh[:k].T) / s[:k], s[:k]


def logme(f: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    """LogME of float64 features ``[N, D]`` for labels ``y`` in [0, classes)."""
    n, d = f.shape
    u, s = _spectrum(f)
    sigma = (s * s).unsqueeze(1)  # [k, 1]
    onehot = torch.nn.functional.one_hot(y, classes).to(f.dtype)  # [N, C]
    x2 = (u.T @ onehot) ** 2  # [k, C]: the targets' energy along each singular direction
    res_x2 = onehot.sum(0) - x2.sum(0)  # energy outside U (when k < N)
    alpha, beta = torch.ones(classes, dtype=f.dtype), torch.ones(classes, dtype=f.dtype)
    m2, res2 = torch.zeros_like(alpha), torch.zeros_like(alpha)
    active = torch.ones(classes, dtype=torch.bool)
    for _ in range(ITERATIONS):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum(0)
        new_m2 = (sigma * x2 / (t + sigma) ** 2).sum(0)
        new_res2 = (x2 / (1 + sigma / t) ** 2).sum(0) + res_x2
        new_alpha, new_beta = gamma / (new_m2 + GUARD), (n - gamma) / (new_res2 + GUARD)
        alpha, beta = torch.where(active, new_alpha, alpha), torch.where(active, new_beta, beta)
        m2, res2 = torch.where(active, new_m2, m2), torch.where(active, new_res2, res2)
        active &= (new_alpha / new_beta - t).abs() / t > TOLERANCE  # a class stops once converged
        if not bool(active.any()):
            break
    evidence = (
        d / 2.0 * alpha.log()
        + n / 2.0 * beta.log()
        - 0.5 * ((alpha + beta * sigma).log().sum(0) + (d - sigma.shape[0]) * alpha.log())  # log|A|, D terms
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * math.log(2 * math.pi)
    )
    return float((evidence / n).mean())
