"""The authors' reference code for the transferability scores, transcribed to plain numpy for the tests.

Sources (both MIT licensed; their notices are below):

- LogME: thuml/LogME, ``LogME.py`` at commit 56551ca94a3295bcc37e6a01b1291911af985f07 (``LogME.fit`` for
  classification, which is ``_fit_fixed_point``, with ``truncated_svd``), "LogME: Practical Assessment of
  Pre-trained Models for Transfer Learning" (You et al., ICML 2021) and "Ranking and Tuning Pre-trained
  Models" (You et al., JMLR 2022). ``logme_icml`` is TLlib's ``tllib/ranking/logme.py`` (the ICML
  iteration, the one TLlib ships), kept to check that the two references agree.
- LEEP, NCE, H-score: thuml/Transfer-Learning-Library, ``tllib/ranking/leep.py``, ``nce.py`` and
  ``hscore.py`` at commit c4aa59eb565650a552b809411601d0589efbbfe4 (last changed in
  efe6e33caf5a6ea67f6e72135a2ac0ebf847742d).

The functions are the originals with the ``numba.njit`` decorators dropped (numba compiles the same numpy
calls; the tests need no numba), the LogME class reduced to its classification ``fit``, and names
prefixed by the score; ``logme``'s ``pr24`` switch is ours. The arithmetic, the iteration counts and the
stopping rules are untouched.

thuml/LogME's LICENSE.txt::

    MIT License

    Copyright (c) 2023 youkaichao

    Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
    associated documentation files (the "Software"), to deal in the Software without restriction,
    including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense,
    and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so,
    subject to the following conditions:

    The above copyright notice and this permission notice shall be included in all copies or substantial
    portions of the Software.

    THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
    LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN
    NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY,
    WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
    SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.

thuml/Transfer-Learning-Library's LICENSE: the same MIT text, "Copyright (c) 2018 The Python Packaging
Authority" (sic, as the repository has it).
"""

from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------- thuml/LogME, LogME.py
def truncated_svd(x):
    u, s, vh = np.linalg.svd(x.transpose() @ x)
    s = np.sqrt(s)
    u_times_sigma = x @ vh.transpose()
    k = np.sum((s > 1e-10) * 1)  # rank of f
    s = s.reshape(-1, 1)
    s = s[:k]
    vh = vh[:k]
    u = u_times_sigma[:, :k] / s.reshape(1, -1)
    return u, s, vh


def logme(f: np.ndarray, y: np.ndarray, pr24: bool = False) -> float:
    """``LogME(regression=False).fit(f, y)``: ``fit`` casts to float64 and calls ``_fit_fixed_point``.

    ``pr24``: with the fix of thuml/LogME pull request #24 (issue #23, not merged at the commit above):
    log|A| over all D eigenvalues, ``sigma`` padded with zeros to D entries in the evidence."""
    f = f.astype(np.float64)
    N, D = f.shape  # k = min(N, D)
    if N > D:  # direct SVD may be expensive
        u, s, vh = truncated_svd(f)
    else:
        u, s, vh = np.linalg.svd(f, full_matrices=False)
    # u.shape = N x k
    # s.shape = k
    # vh.shape = k x D
    s = s.reshape(-1, 1)
    sigma = s**2

    evidences = []
    num_dim = int(y.max() + 1)
    for i in range(num_dim):
        y_ = (y == i).astype(np.float64)
        y_ = y_.reshape(-1, 1)
        x = u.T @ y_  # x has shape [k, 1], but actually x should have shape [N, 1]
        x2 = x**2
        res_x2 = (y_**2).sum() - x2.sum()  # if k < N, we compute sum of xi for 0 singular values directly

        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (N - gamma) / (res2 + 1e-5)
            t_ = alpha / beta
            evidence = (
                D / 2.0 * np.log(alpha)
                + N / 2.0 * np.log(beta)
                - 0.5 * np.sum(np.log(alpha + beta * sigma))
                - beta / 2.0 * res2
                - alpha / 2.0 * m2
                - N / 2.0 * np.log(2 * np.pi)
            )
            evidence /= N
            if abs(t_ - t) / t <= 1e-3:  # abs(t_ - t) <= 1e-5 or abs(1 / t_ - 1 / t) <= 1e-5:
                break
        if pr24:
            sigma_full_size = np.pad(sigma, ((0, D - sigma.shape[0]), (0, 0)))
        else:
            sigma_full_size = sigma
        evidence = (
            D / 2.0 * np.log(alpha)
            + N / 2.0 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * sigma_full_size))
            - beta / 2.0 * res2
            - alpha / 2.0 * m2
            - N / 2.0 * np.log(2 * np.pi)
        )
        evidence /= N
        evidences.append(evidence)
    return float(np.mean(evidences))


# --------------------------------------------------------------------------- TLlib, tllib/ranking/logme.py
def logme_icml(features: np.ndarray, targets: np.ndarray) -> float:
    """``log_maximum_evidence(features, targets)`` (classification, no weights returned)."""
    f = features.astype(np.float64)
    y = targets

    fh = f
    f = f.transpose()
    D, N = f.shape
    v, s, vh = np.linalg.svd(f @ fh, full_matrices=True)

    evidences = []
    C = int(y.max() + 1)
    for i in range(C):
        y_ = (y == i).astype(np.float64)
        evidence, _ = _each_evidence(y_, f, fh, v, s, vh, N, D)
        evidences.append(evidence)
    return float(np.mean(evidences))


def _each_evidence(y_, f, fh, v, s, vh, N, D):
    """
    compute the maximum evidence for each class
    """
    alpha = 1.0
    beta = 1.0
    lam = alpha / beta
    tmp = vh @ (f @ y_)

    for _ in range(11):
        # should converge after at most 10 steps
        # typically converge after two or three steps
        gamma = (s / (s + lam)).sum()
        m = v @ (tmp * beta / (alpha + beta * s))
        alpha_de = (m * m).sum()
        alpha = gamma / alpha_de
        beta_de = ((y_ - fh @ m) ** 2).sum()
        beta = (N - gamma) / beta_de
        new_lam = alpha / beta
        if np.abs(new_lam - lam) / lam < 0.01:
            break
        lam = new_lam

    evidence = (
        D / 2.0 * np.log(alpha)
        + N / 2.0 * np.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * s))
        - beta / 2.0 * beta_de
        - alpha / 2.0 * alpha_de
        - N / 2.0 * np.log(2 * np.pi)
    )

    return evidence / N, m


# --------------------------------------------------------------------------- TLlib, tllib/ranking/leep.py
def leep(predictions: np.ndarray, labels: np.ndarray) -> float:
    """``log_expected_empirical_prediction(predictions, labels)``."""
    N, C_s = predictions.shape
    labels = labels.reshape(-1)
    C_t = int(np.max(labels) + 1)

    normalized_prob = predictions / float(N)
    joint = np.zeros((C_t, C_s), dtype=float)  # placeholder for joint distribution over (y, z)

    for i in range(C_t):
        this_class = normalized_prob[labels == i]
        row = np.sum(this_class, axis=0)
        joint[i] = row

    p_target_given_source = (joint / joint.sum(axis=0, keepdims=True)).T  # P(y | z)
    empirical_prediction = predictions @ p_target_given_source
    empirical_prob = np.array([predict[label] for predict, label in zip(empirical_prediction, labels)])
    score = np.mean(np.log(empirical_prob))

    return float(score)


# --------------------------------------------------------------------------- TLlib, tllib/ranking/nce.py
def nce(source_labels: np.ndarray, target_labels: np.ndarray) -> float:
    """``negative_conditional_entropy(source_labels, target_labels)``."""
    C_t = int(np.max(target_labels) + 1)
    C_s = int(np.max(source_labels) + 1)
    N = len(source_labels)

    joint = np.zeros((C_t, C_s), dtype=float)  # placeholder for the joint distribution, shape [C_t, C_s]
    for s, t in zip(source_labels, target_labels):
        s = int(s)
        t = int(t)
        joint[t, s] += 1.0 / N
    p_z = joint.sum(axis=0, keepdims=True)

    p_target_given_source = (joint / p_z).T  # P(y | z), shape [C_s, C_t]
    mask = p_z.reshape(-1) != 0  # valid Z, shape [C_s]
    p_target_given_source = p_target_given_source[mask] + 1e-20  # remove NaN where p(z) = 0, add 1e-20 to avoid log (0)
    entropy_y_given_z = np.sum(-p_target_given_source * np.log(p_target_given_source), axis=1, keepdims=True)
    conditional_entropy = np.sum(entropy_y_given_z * p_z.reshape((-1, 1))[mask])

    return float(-conditional_entropy)


# --------------------------------------------------------------------------- TLlib, tllib/ranking/hscore.py
def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """``h_score(features, labels)``."""
    f = features
    y = labels

    covf = np.cov(f, rowvar=False)
    C = int(y.max() + 1)
    g = np.zeros_like(f)

    for i in range(C):
        Ef_i = np.mean(f[y == i, :], axis=0)
        g[y == i] = Ef_i

    covg = np.cov(g, rowvar=False)
    score = np.trace(np.dot(np.linalg.pinv(covf, rcond=1e-15), covg))

    return float(score)
